"""DETR with its post-processing in the graph, so that a served model needs no Python.

``DETRDetections(detr)`` takes what DETR takes (``images`` and ``pixel_mask``) and returns, per
image and query, the best class's probability (``scores``), that class (``labels``) and the box
as (x0, y0, x1, y1) in pixels of the unpadded input image (``boxes``): exactly what
``kzoo.models.detr.model.postprocess.outputs_to_detections`` computes from DETR's outputs,
before its threshold and sort (a fixed-shape output; a client keeps the queries whose score it
wants). Public as ``kzoo.models.DETRDetections`` (its old name ``kzoo.export.DETRDetections`` is a
deprecated alias).
"""

import keras
from keras import ops

from kzoo.export.mixin import ExportMixin
from kzoo.export.signatures import image_signature
from kzoo.ops.shapes import arange


def unpadded_sizes(pixel_mask, dtype):
    """(B, 2) (height, width) of each image's real pixels: rows and columns holding any."""
    valid = ops.cast(pixel_mask > 0, dtype)
    rows = ops.sum(ops.max(valid, axis=2), axis=1)
    cols = ops.sum(ops.max(valid, axis=1), axis=1)
    return rows, cols


@keras.saving.register_keras_serializable(package="kzoo")
class DETRDetections(ExportMixin, keras.Model):
    """A DETR followed by its post-processing (softmax, no-object dropped, boxes in pixels).

    Args:
        detr: A built ``kzoo.models.DETR``.

    Call: ``{"images": (B, H, W, 3), "pixel_mask": (B, H, W)}``. Returns a dict:

    - ``"scores"``: (B, Q) the best class's probability (the no-object class excluded);
    - ``"labels"``: (B, Q) int32, that class;
    - ``"boxes"``: (B, Q, 4) float (x0, y0, x1, y1) in pixels of each image's unpadded region.

    Example:

    ```python
    detr = kzoo.models.DETR(num_classes=3, num_queries=10, d_model=32, num_heads=4,
                            num_encoder_layers=1, num_decoder_layers=2, ffn_dim=64,
                            backbone="small")
    detr.build()
    served = DETRDetections(detr)
    out = served({"images": np.zeros((1, 64, 64, 3), "float32"),
                  "pixel_mask": np.ones((1, 64, 64), "float32")})
    out["boxes"].shape  # (1, 10, 4)
    ```
    """

    def __init__(self, detr, **kwargs):
        from kzoo.models.detr.model.detr import DETR

        kwargs.setdefault("name", f"{detr.name}_detections")
        super().__init__(**kwargs)
        if not isinstance(detr, DETR):
            raise ValueError(f"`detr` must be a kzoo.models.DETR; got {type(detr).__name__}.")
        if not detr.built:
            raise ValueError(
                "`detr` has never been built or called: call `detr.build()` (or run it once) first."
            )
        self.detr = detr
        self.built = True

    def call(self, inputs):
        if not isinstance(inputs, dict) or set(inputs) != {"images", "pixel_mask"}:
            raise ValueError(
                "DETRDetections takes a dict with keys 'images' and 'pixel_mask'; got "
                f"{sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__}."
            )
        outputs = self.detr(inputs, training=False)
        logits, boxes = outputs["logits"], outputs["boxes"]
        probs = ops.softmax(logits, axis=-1)[..., :-1]
        scores = ops.max(probs, axis=-1)
        # argmax as the lowest index holding the maximum: keras's float argmax tests the sign
        # bit (a bitcast, which neither ONNX nor TF Lite has) and JAX's top_k lowers to a
        # StableHLO op newer than TensorFlow 2.21 can load from a JAX SavedModel.
        classes = ops.shape(probs)[-1]
        index = ops.cast(arange(classes), "int32")
        is_best = ops.equal(probs, ops.expand_dims(scores, -1))
        labels = ops.min(ops.where(is_best, index, classes), axis=-1)
        cx, cy, w, h = (boxes[..., i] for i in range(4))
        rows, cols = unpadded_sizes(inputs["pixel_mask"], boxes.dtype)
        width, height = cols[:, None], rows[:, None]
        xyxy = ops.stack(
            [
                (cx - 0.5 * w) * width,
                (cy - 0.5 * h) * height,
                (cx + 0.5 * w) * width,
                (cy + 0.5 * h) * height,
            ],
            axis=-1,
        )
        return {"scores": scores, "labels": labels, "boxes": xyxy}

    def export_signature(self):
        """DETR's inputs: ``images`` and ``pixel_mask`` sharing height and width."""
        return image_signature()

    def get_config(self):
        config = super().get_config()
        config["detr"] = keras.saving.serialize_keras_object(self.detr)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        detr = keras.saving.deserialize_keras_object(config.pop("detr"))
        if not detr.built:
            detr.build()
        return cls(detr, **config)
