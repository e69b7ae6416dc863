"""The Moving MNIST loader, from a file and from a URL served on 127.0.0.1 by http.server."""

import functools
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

from kzoo.data import load_moving_mnist


@pytest.fixture
def mnist_file(tmp_path):
    # The standard layout: (time=20, sequences, 64, 64) uint8, here with 3 sequences.
    data = np.random.default_rng(0).integers(0, 256, size=(20, 3, 64, 64), dtype=np.uint8)
    path = tmp_path / "served" / "mnist_test_seq.npy"
    path.parent.mkdir()
    np.save(path, data)
    return path, data


@pytest.fixture
def server(mnist_file):
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(mnist_file[0].parent)
    )
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_load_from_path(mnist_file):
    path, data = mnist_file
    videos = load_moving_mnist(str(path))
    assert videos.shape == (3, 20, 64, 64, 1) and videos.dtype == np.float32
    np.testing.assert_allclose(videos[1, 5, ..., 0], data[5, 1] / 255.0)
    raw = load_moving_mnist(str(path), normalize=False, sha256=_sha(path))
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw[2, 19, ..., 0], data[19, 2])
    with pytest.raises(ValueError, match="sha256"):
        load_moving_mnist(str(path), sha256="0" * 64)


def test_load_from_url_with_sha256(mnist_file, server, keras_home):
    path, data = mnist_file
    url = f"{server}/mnist_test_seq.npy"
    videos = load_moving_mnist(url, sha256=_sha(path))
    np.testing.assert_allclose(videos[0, 0, ..., 0], data[0, 0] / 255.0)
    cached = [f for _, _, files in os.walk(keras_home) for f in files if f.endswith(".npy")]
    assert len(cached) == 1
    # Served from the cache the second time, even with the server's file gone.
    os.remove(path)
    np.testing.assert_array_equal(load_moving_mnist(url, sha256=_sha_of(keras_home)), videos)


def _sha_of(keras_home):
    for root, _, files in os.walk(keras_home):
        for f in files:
            if f.endswith(".npy"):
                return _sha(os.path.join(root, f))


def test_url_needs_and_checks_sha256(mnist_file, server, keras_home):
    url = f"{server}/mnist_test_seq.npy"
    with pytest.raises(ValueError, match="sha256"):
        load_moving_mnist(url)
    with pytest.raises(ValueError, match="does not match sha256"):
        load_moving_mnist(url, sha256="1" * 64)
    # The bad download was deleted.
    assert not [f for _, _, files in os.walk(keras_home) for f in files if f.endswith(".npy")]
    with pytest.raises(ValueError, match="Could not download"):
        load_moving_mnist(f"{server}/missing.npy", sha256="2" * 64)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_moving_mnist(str(tmp_path / "nope.npy"))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((20, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        load_moving_mnist(str(bad))
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not a numpy"):
        load_moving_mnist(str(junk))
