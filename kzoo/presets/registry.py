"""The registry of named presets: where each lives, its sha256, what it is.

Model packages register their own presets when they are imported (``kzoo/models/<model>/
presets.py``, keras-hub's convention), and ``import kzoo`` imports every model package, so the
table is complete whichever kzoo module a program imports first. This module imports no model:
models depend on presets (``PresetMixin``), never the other way round.
"""

import dataclasses
import difflib


@dataclasses.dataclass(frozen=True)
class PresetInfo:
    """A named preset.

    Args:
        name: The name users pass to ``from_preset``.
        model_class: The kzoo class it builds (``"ColorFramePredictor"``), for ``kzoo list``.
        location: ``builtin:<dir>`` (shipped in the package), a local path, or an
            http(s)/file URL of an archive holding a preset directory.
        sha256: sha256 of the archive or checkpoint at ``location`` (not needed for builtins).
        description: One line.
        license: The license of the weights.
        converter: Optional ``"module:function"`` turning a downloaded checkpoint into a preset
            directory, ``f(source_file, target_dir)``; when set, ``location`` is a checkpoint
            rather than a preset archive, and the converted preset is cached.
    """

    name: str
    model_class: str
    location: str
    sha256: str | None = None
    description: str = ""
    license: str = ""
    converter: str | None = None


_PRESETS: dict[str, PresetInfo] = {}


def register_preset(info):
    if not isinstance(info, PresetInfo):
        raise ValueError(f"register_preset expects a PresetInfo, got {type(info).__name__}.")
    _PRESETS[info.name] = info
    return info


def list_presets(model_class=None):
    presets = sorted(_PRESETS.values(), key=lambda p: p.name)
    if model_class is not None:
        presets = [p for p in presets if p.model_class == model_class]
    return presets


def get_preset(name):
    if name in _PRESETS:
        return _PRESETS[name]
    close = difflib.get_close_matches(name, list(_PRESETS), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    known = ", ".join(sorted(_PRESETS)) or "none"
    raise ValueError(f"Unknown preset {name!r}.{hint} Known presets: {known}.")
