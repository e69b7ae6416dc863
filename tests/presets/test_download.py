"""Presets fetched by URL, through a real HTTP server on 127.0.0.1."""

import os

import keras
import numpy as np
import pytest

from kzoo import presets
from kzoo.presets import preset_io
from kzoo.utils.files import sha256_file
from tests.presets.tiny_model import TinyPresetModel, build

X = np.linspace(-1, 1, 9, dtype="float32").reshape(3, 3)


@pytest.fixture
def archive(tmp_path, http_server):
    root, base = http_server
    model = build(units=3, seed=3)
    model.save_to_preset(tmp_path / "tiny")
    sha = presets.make_archive(tmp_path / "tiny", root / "tiny.tar.gz")
    expected = keras.ops.convert_to_numpy(model(X))
    return root, f"{base}/tiny.tar.gz", sha, expected


def _cache_files(keras_home):
    return sorted(
        os.path.relpath(os.path.join(d, f), keras_home)
        for d, _, files in os.walk(keras_home)
        for f in files
    )


def test_url_download_verified_and_cached(archive, keras_home, capsys):
    root, url, sha, expected = archive
    model = TinyPresetModel.from_preset(url, sha256=sha)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(X)), expected)
    assert "Downloading data from" in capsys.readouterr().out
    cached = _cache_files(keras_home)
    assert any(f.endswith("config.json") for f in cached)
    # The archive itself is not kept once extracted; the preset is cached.
    assert not any(f.endswith(".tar.gz") for f in cached)
    # A second load is served from the cache: the server's file can go away.
    os.remove(root / "tiny.tar.gz")
    again = TinyPresetModel.from_preset(url + f"#sha256={sha}")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(X)), expected)


def test_registered_name_downloads(archive, keras_home, monkeypatch):
    _, url, sha, expected = archive
    monkeypatch.setitem(
        presets.registry._PRESETS,
        "tiny_remote",
        presets.PresetInfo("tiny_remote", "TinyPresetModel", url, sha256=sha),
    )
    model = TinyPresetModel.from_preset("tiny_remote")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(X)), expected)


def test_tampered_archive_is_refused_and_leaves_no_cache_entry(archive, keras_home):
    root, url, sha, _ = archive
    data = bytearray((root / "tiny.tar.gz").read_bytes())
    data[-10] ^= 0xFF
    (root / "tiny.tar.gz").write_bytes(bytes(data))
    assert sha256_file(root / "tiny.tar.gz") != sha
    with pytest.raises(ValueError, match="does not match sha256"):
        TinyPresetModel.from_preset(url, sha256=sha)
    assert _cache_files(keras_home) == []


def test_url_without_sha256_is_refused(archive, keras_home):
    _, url, _, _ = archive
    with pytest.raises(ValueError, match="without a sha256"):
        TinyPresetModel.from_preset(url)
    assert _cache_files(keras_home) == []


def test_unreachable_url(keras_home):
    with pytest.raises(ValueError, match="Could not download"):
        TinyPresetModel.from_preset("http://127.0.0.1:9/none.tar.gz", sha256="0" * 64)
    assert _cache_files(keras_home) == []


def test_missing_file_on_server(http_server, keras_home):
    _, base = http_server
    with pytest.raises(ValueError, match="Could not download"):
        TinyPresetModel.from_preset(f"{base}/absent.tar.gz", sha256="0" * 64)
    assert _cache_files(keras_home) == []


def test_file_url(tmp_path, keras_home):
    build(units=3, seed=3).save_to_preset(tmp_path / "tiny")
    sha = presets.make_archive(tmp_path / "tiny", tmp_path / "tiny.zip.tar.gz")
    model = TinyPresetModel.from_preset(f"file://{tmp_path}/tiny.zip.tar.gz", sha256=sha)
    assert model.units == 3


def test_archive_without_preset(tmp_path, http_server, keras_home):
    import tarfile

    root, base = http_server
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("nothing")
    with tarfile.open(root / "junk.tar.gz", "w:gz") as t:
        t.add(tmp_path / "junk", arcname="junk")
    sha = sha256_file(root / "junk.tar.gz")
    with pytest.raises(ValueError, match="holds no kzoo preset"):
        TinyPresetModel.from_preset(f"{base}/junk.tar.gz", sha256=sha)
    assert _cache_files(keras_home) == []
    assert preset_io  # the module under test
