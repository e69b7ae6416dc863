"""Test setup shared by every backend's run.

JAX gets 8 virtual CPU devices for the distribution tests, and Triton runs kernels in its
interpreter; both read their settings when first imported, so they are set before keras loads.

XLA compiles the tests' programs without LLVM's optimisation passes: at the tests' tiny shapes
compiling costs far more than running (the DETR model tests took 102 s with the passes and 70 s
without on this 2-core machine, 2026-12-07). The passes do not reorder floating-point
arithmetic (XLA leaves fast-math off), so what the tests compare is computed the same way.
``KZOO_TEST_XLA_OPTIMIZE=1`` keeps them.

For the same reason TensorFlow runs its graphs without grappler's rewrites (the TensorFlow DETR
model and training tests took 61 s with them and 55 s without, 2026-12-07);
``KZOO_TEST_GRAPPLER=1`` keeps them.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
if os.environ.get("KZOO_TEST_XLA_OPTIMIZE") != "1":
    for flag in ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"):
        if flag.split("=")[0] not in os.environ["XLA_FLAGS"]:
            os.environ["XLA_FLAGS"] += " " + flag
if os.environ.get("KZOO_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
    if keras.backend.backend() == "tensorflow" and os.environ.get("KZOO_TEST_GRAPPLER") != "1":
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    config.addinivalue_line("markers", "backends(*names): run only under these keras backends")


def pytest_collection_modifyitems(config, items):
    backend = keras.backend.backend()
    skip = pytest.mark.skip(reason=f"not for the {backend} backend")
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker is not None and backend not in marker.args:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty keras cache directory for this test."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving the directory it yields; stopped after the test.

    Yields ``(root_dir, base_url)``.
    """
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    """A local Hugging Face Hub (``tests/presets/hub_server.py``) that huggingface_hub talks to.

    ``HF_ENDPOINT`` points at it, ``HF_HOME`` (huggingface_hub's cache) and ``KERAS_HOME``
    (kzoo's) are empty directories of this test; no token, not offline. Yields the server
    (``add_commit``, ``cut``, ``stop``, ``requests``).
    """
    from tests.presets.hub_server import HubServer

    server = HubServer()
    url = server.start()
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    try:
        yield server
    finally:
        server.stop()


def _quiet_handler():
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    return Handler


_QuietHandler = _quiet_handler()
