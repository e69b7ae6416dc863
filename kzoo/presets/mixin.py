"""``from_preset`` / ``save_to_preset`` for every kzoo model."""

from kzoo.presets import preset_io


class PresetMixin:
    """Gives a keras model ``from_preset`` and ``save_to_preset``.

    Example:

    ```python
    model = kzoo.models.ColorFramePredictor.from_preset("convlstm_color_shapes")
    model.save_to_preset("/tmp/my_preset")
    same = kzoo.models.ColorFramePredictor.from_preset("/tmp/my_preset")
    ```
    """

    # What preset_io checks a class by (it does not import this module).
    _kzoo_preset_model = True

    @classmethod
    def from_preset(cls, preset, load_weights=True, sha256=None, **kwargs):
        """Build a model from a registered preset name, a preset directory, an archive URL or a
        Hugging Face Hub handle.

        Args:
            preset: A name from ``kzoo list``, a local preset directory, an http(s)/file URL of
                a ``.tar.gz``/``.zip`` holding one, or ``hf://owner/repo[@revision]``: a Hub
                repo holding a kzoo preset or a model kzoo converts (DETR), downloaded through
                huggingface_hub and cached by commit (``kzoo.presets.hub``).
            load_weights: ``False`` builds the architecture with fresh weights.
            sha256: Expected sha256 of a URL's archive (registered presets carry their own).
            **kwargs: Config entries to override.
        """
        return preset_io.load_preset(
            preset, expected_class=cls, sha256=sha256, load_weights=load_weights, **kwargs
        )

    def save_to_preset(self, preset_dir, overwrite=True, force=False):
        """Write this model as a preset directory, atomically.

        Args:
            preset_dir: The directory to write. It may be new, empty, or an existing kzoo
                preset; a directory holding anything else is refused (kzoo never deletes
                files it did not write) unless ``force=True``.
            overwrite: Whether an existing kzoo preset at ``preset_dir`` may be replaced.
            force: Replace ``preset_dir`` even though it holds files that are not part of a
                kzoo preset; they are deleted.

        A crash at any moment leaves ``preset_dir`` holding the old preset or the new one.
        Returns the absolute path written.
        """
        return preset_io.save_preset(self, preset_dir, overwrite=overwrite, force=force)
