"""Checking what DETR is called with: the ``pixel_mask`` layout and a non-empty batch.

DETR reads each image's unpadded extent off ``pixel_mask`` as the number of rows and columns
holding a real pixel, and assumes those are the top-left ones (padding at the bottom and right,
as DETR, HuggingFace and ``kzoo.data.images`` pad). Any other mask - padding on the left or
top, holes, values other than 0 and 1, an image with no real pixel - would be read as a
different image and give wrong outputs without any sign, so it is refused instead.

Where it is checked:

- ``fit``, ``evaluate``, ``predict`` and the ``*_on_batch`` methods check masks held in memory
  (numpy arrays, tensors) before any compiled step runs, and each batch a ``PyDataset`` or a
  generator yields before keras gets it (:class:`DETRInputChecks`). A bad mask is then refused
  before any backend code runs, and the model is left as it was.
- ``DETR.call`` summarises every image's mask on the device (four integers per image) and
  raises on the host through :func:`kzoo.ops.host_call.host_check`: directly in eager calls,
  and through the backend's host callback inside compiled steps fed by other pipelines (a
  ``tf.data.Dataset``). The error raised there is the same ``ValueError``
  (:class:`kzoo.ops.host_call.HostErrorsMixin`), but keras on JAX has by then handed the
  model's variables to the failed step, so the model must be rebuilt or reloaded. Under XLA on
  TensorFlow (``jit_compile=True``) the device cannot call the host and this check is skipped.
"""

import inspect

import keras
import numpy as np
from keras import ops

from kzoo.ops.host_call import HostErrorsMixin, host_check

# Per image: [height, width, mismatches, non-binary values].
_HEIGHT, _WIDTH, _MISMATCH, _NONBINARY = range(4)


def mask_summary(pixel_mask):
    """(B, 4) int32: real rows, real columns, pixels off the top-left rectangle, non-0/1 values."""
    mask = ops.convert_to_tensor(pixel_mask)
    if mask.dtype == "bool":
        mask = ops.cast(mask, "int32")
    binary = ops.logical_or(ops.equal(mask, 0), ops.equal(mask, 1))
    nonbinary = ops.sum(ops.cast(ops.logical_not(binary), "int32"), axis=(1, 2))
    real = ops.cast(mask > 0, "int32")
    height = ops.sum(ops.max(real, axis=2), axis=1)
    width = ops.sum(ops.max(real, axis=1), axis=1)
    shape = ops.shape(mask)
    rows = ops.arange(shape[1], dtype="int32")[None, :, None] < height[:, None, None]
    cols = ops.arange(shape[2], dtype="int32")[None, None, :] < width[:, None, None]
    expected = ops.cast(ops.logical_and(rows, cols), "int32")
    mismatch = ops.sum(ops.cast(ops.not_equal(real, expected), "int32"), axis=(1, 2))
    return ops.stack([height, width, mismatch, nonbinary], axis=1)


def mask_summary_numpy(pixel_mask):
    """:func:`mask_summary` on the host, in numpy."""
    mask = np.asarray(pixel_mask)
    if mask.dtype == bool:
        mask = mask.astype(np.int32)
    nonbinary = np.sum(~((mask == 0) | (mask == 1)), axis=(1, 2))
    real = mask > 0
    height = real.any(axis=2).sum(axis=1)
    width = real.any(axis=1).sum(axis=1)
    rows = np.arange(mask.shape[1])[None, :, None] < height[:, None, None]
    cols = np.arange(mask.shape[2])[None, None, :] < width[:, None, None]
    mismatch = np.sum(real != (rows & cols), axis=(1, 2))
    return np.stack([height, width, mismatch, nonbinary], axis=1).astype(np.int32)


def raise_for_summary(summary):
    """Raise the ``ValueError`` a bad summary row calls for (the first bad image's)."""
    summary = np.asarray(summary)
    for i, (height, width, mismatch, nonbinary) in enumerate(summary.tolist()):
        if nonbinary:
            raise ValueError(
                f"pixel_mask of image {i} holds {nonbinary} value(s) other than 0 and 1; it must "
                "be 1 on real pixels and 0 on padding."
            )
        if height == 0 or width == 0:
            raise ValueError(
                f"pixel_mask of image {i} has no real pixel (it is all zeros); every image needs "
                "at least one pixel marked 1."
            )
        if mismatch:
            raise ValueError(
                f"pixel_mask of image {i} is not one rectangle of ones at the top left "
                f"({mismatch} pixel(s) differ from the {height}x{width} rectangle its rows and "
                "columns span). DETR pads at the bottom and right; pad the images that way "
                "(kzoo.data.images.preprocess_images does)."
            )


def check_pixel_mask(pixel_mask):
    """Validate ``pixel_mask`` (B, H, W); return it, tied to the check so compilers keep it."""
    token = host_check(raise_for_summary, lambda: [ops.stop_gradient(mask_summary(pixel_mask))])
    mask = ops.convert_to_tensor(pixel_mask)
    if mask.dtype == "bool":
        return ops.logical_and(mask, token > 0)
    return mask * ops.cast(token, mask.dtype)


def check_batch(images, name="images"):
    """A batch whose size is known to be 0 is refused before any layer sees it."""
    batch = images.shape[0]
    if batch is not None and batch == 0:
        raise ValueError(
            f"`{name}` is an empty batch (shape {tuple(images.shape)}); DETR needs at least one "
            "image."
        )


def _host_array(value):
    """``value`` as a numpy array if it is an in-memory array or tensor, else None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value
    if ops.is_tensor(value):
        return np.asarray(ops.convert_to_numpy(value))
    return None


def check_host_inputs(x):
    """Check DETR inputs held in memory (a dict, an array, a tensor); ignore anything else."""
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], dict):
        x = x[0]  # an (x, y) batch
    if isinstance(x, dict):
        images, mask = _host_array(x.get("images")), _host_array(x.get("pixel_mask"))
    else:
        images, mask = _host_array(x), None
    if images is not None and images.ndim == 4:
        check_batch(images)
    if mask is not None and mask.ndim == 3 and mask.shape[0] > 0:
        raise_for_summary(mask_summary_numpy(mask))


def _checked_generator(generator):
    for batch in generator:
        check_host_inputs(batch)
        yield batch


def _checked(data):
    """``data`` with every batch checked on the host before keras sees it, where possible."""
    if isinstance(data, keras.utils.PyDataset):
        return _CheckedPyDataset(data)
    if inspect.isgenerator(data):
        return _checked_generator(data)
    check_host_inputs(data)
    return data


class _CheckedPyDataset(keras.utils.PyDataset):
    """A PyDataset whose batches are checked as they are read, on the reading thread."""

    def __init__(self, inner):
        super().__init__(
            workers=inner.workers,
            use_multiprocessing=inner.use_multiprocessing,
            max_queue_size=inner.max_queue_size,
        )
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    @property
    def num_batches(self):
        return self.inner.num_batches

    def __getitem__(self, index):
        batch = self.inner[index]
        check_host_inputs(batch)
        return batch

    def on_epoch_begin(self):
        self.inner.on_epoch_begin()

    def on_epoch_end(self):
        self.inner.on_epoch_end()


class DETRInputChecks(HostErrorsMixin):
    """Model mixin: check DETR inputs on the host before keras's compiled steps see them.

    Example:

    ```python
    class MyDETR(DETRInputChecks, keras.Model):
        ...
    ```
    """

    def fit(self, x=None, *args, validation_data=None, **kwargs):
        if validation_data is not None:
            if isinstance(validation_data, tuple):
                check_host_inputs(validation_data[0])
            else:
                validation_data = _checked(validation_data)
        return super().fit(_checked(x), *args, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        return super().evaluate(_checked(x), *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        return super().predict(_checked(x), *args, **kwargs)

    def train_on_batch(self, x, *args, **kwargs):
        check_host_inputs(x)
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        check_host_inputs(x)
        return super().test_on_batch(x, *args, **kwargs)

    def predict_on_batch(self, x, *args, **kwargs):
        check_host_inputs(x)
        return super().predict_on_batch(x, *args, **kwargs)
