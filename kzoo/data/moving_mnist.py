"""Loader of the standard Moving MNIST file ``mnist_test_seq.npy`` (20, N, 64, 64), uint8."""

import os
import urllib.parse

import numpy as np

from kzoo.utils.download import download_verified
from kzoo.utils.files import sha256_file

MOVING_MNIST_URL = "http://www.cs.toronto.edu/~nitish/unsupervised_video/mnist_test_seq.npy"
CACHE_SUBDIR = os.path.join("kzoo", "datasets")


def _fetch(url, sha256):
    return download_verified(url, sha256, CACHE_SUBDIR)


def load_moving_mnist(source, sha256=None, normalize=True):
    """Load Moving MNIST as ``(N, 20, 64, 64, 1)`` videos.

    Args:
        source: A local path of ``mnist_test_seq.npy``, or an http(s)/file URL of it
            (downloaded once into the keras cache, ``$KERAS_HOME/kzoo/datasets``, by default
            ``~/.keras/kzoo/datasets``), for example
            ``kzoo.data.MOVING_MNIST_URL``.
        sha256: The file's sha256. Required for URLs; checked for local files when given.
        normalize: ``True`` gives float32 in [0, 1]; ``False`` the file's uint8 values.

    Returns:
        Array ``(N, T, H, W, 1)`` (the file is time-major ``(T, N, H, W)``).

    Example:

    ```python
    videos = kzoo.data.load_moving_mnist("mnist_test_seq.npy")
    x, y = kzoo.data.next_frame_targets(videos[:, :11], target="sequence")
    ```
    """
    source = os.fspath(source)
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https", "file"):
        path = _fetch(source, sha256)
    else:
        if not os.path.isfile(source):
            raise FileNotFoundError(f"Moving MNIST file {source!r} does not exist.")
        path = source
        if sha256 and sha256_file(path) != sha256:
            raise ValueError(f"{path} does not match sha256 {sha256}.")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path} is not a numpy array file: {e}") from None
    if not isinstance(data, np.ndarray) or data.ndim != 4 or min(data.shape) == 0:
        raise ValueError(
            f"{path} should hold a (time, sequences, height, width) array like "
            f"mnist_test_seq.npy's (20, 10000, 64, 64); got shape {getattr(data, 'shape', None)}."
        )
    videos = np.transpose(data, (1, 0, 2, 3))[..., None]
    if normalize:
        scale = 255.0 if data.dtype == np.uint8 else 1.0
        videos = videos.astype("float32") / scale
    return videos
