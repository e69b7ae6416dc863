"""``hf://`` handles against a real local Hub (``hub_server.py``): kzoo-format repos.

huggingface_hub itself does every request (nothing in it is replaced); the server answers the
routes it calls. The DETR repos written by transformers are tested in
``tests/models/detr/test_hub_detr.py``.
"""

import os

import keras
import numpy as np
import pytest

from kzoo.cli.main import main as kzoo_main
from kzoo.presets import hub, load_preset
from tests.presets.tiny_model import TinyPresetModel, build

X = np.linspace(-1, 1, 6, dtype="float32").reshape(2, 3)


def _outputs(model):
    return keras.ops.convert_to_numpy(model(X))


def _preset_files(tmp_path, seed, name):
    model = build(seed=seed)
    path = tmp_path / name
    model.save_to_preset(path)
    files = {n: path / n for n in ("config.json", "model.weights.h5", "metadata.json")}
    return files, _outputs(model)


def _entries(repo_id):
    root = hub.repo_cache(repo_id)
    if not os.path.isdir(root):
        return []
    return sorted(e for e in os.listdir(root) if e != hub.REFS_DIR)


def test_kzoo_repo_loads_and_the_second_load_needs_no_network(hub_server, tmp_path, monkeypatch):
    files, expected = _preset_files(tmp_path, 0, "p")
    commit = hub_server.add_commit("kzoo/tiny", {**files, "README.md": b"# tiny"})
    model = TinyPresetModel.from_preset("hf://kzoo/tiny")
    np.testing.assert_allclose(_outputs(model), expected, rtol=0, atol=0)
    assert _entries("kzoo/tiny") == [commit]
    assert hub_server.fetched("model.weights.h5") == 1
    # Second load while online: the cache is used, nothing is downloaded again.
    TinyPresetModel.from_preset("hf://kzoo/tiny")
    assert hub_server.fetched("model.weights.h5") == 1
    # With the server gone, and with huggingface_hub's offline switch, the cached commit loads.
    hub_server.stop()
    np.testing.assert_allclose(_outputs(load_preset("hf://kzoo/tiny")), expected, atol=0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    np.testing.assert_allclose(_outputs(load_preset("hf://kzoo/tiny@main")), expected, atol=0)


def test_revisions_pin_what_is_loaded_and_new_commits_are_picked_up(hub_server, tmp_path):
    files_a, out_a = _preset_files(tmp_path, 1, "a")
    files_b, out_b = _preset_files(tmp_path, 2, "b")
    files_c, out_c = _preset_files(tmp_path, 3, "c")
    assert not np.allclose(out_a, out_b)
    sha_a = hub_server.add_commit("kzoo/tiny", files_a, refs=("main", "v1"))
    sha_b = hub_server.add_commit("kzoo/tiny", files_b, refs=("main",))
    np.testing.assert_allclose(_outputs(load_preset("hf://kzoo/tiny")), out_b, atol=0)
    np.testing.assert_allclose(_outputs(load_preset("hf://kzoo/tiny@v1")), out_a, atol=0)
    np.testing.assert_allclose(_outputs(load_preset(f"hf://kzoo/tiny@{sha_a}")), out_a, atol=0)
    assert _entries("kzoo/tiny") == sorted([sha_a, sha_b])
    # main moves on: the next online load takes the new commit, and it is what stays cached.
    sha_c = hub_server.add_commit("kzoo/tiny", files_c, refs=("main",))
    np.testing.assert_allclose(_outputs(load_preset("hf://kzoo/tiny")), out_c, atol=0)
    hub_server.stop()
    np.testing.assert_allclose(_outputs(load_preset("hf://kzoo/tiny")), out_c, atol=0)
    np.testing.assert_allclose(_outputs(load_preset("hf://kzoo/tiny@v1")), out_a, atol=0)
    assert sha_c in _entries("kzoo/tiny")


def test_missing_repos_revisions_and_foreign_models_are_one_clear_error(hub_server, tmp_path):
    files, _ = _preset_files(tmp_path, 0, "p")
    hub_server.add_commit("kzoo/tiny", files)
    with pytest.raises(ValueError, match=r"hf://nobody/nothing: no such repository"):
        load_preset("hf://nobody/nothing")
    with pytest.raises(ValueError, match=r"has no revision 'v9'"):
        load_preset("hf://kzoo/tiny@v9")
    bert = b'{"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8}'
    hub_server.add_commit("other/bert", {"config.json": bert, "model.safetensors": b"x" * 64})
    with pytest.raises(ValueError, match=r"hf://other/bert: config.json has model_type 'bert'"):
        load_preset("hf://other/bert")
    hub_server.add_commit("other/empty", {"README.md": b"nothing"})
    with pytest.raises(ValueError, match=r"hf://other/empty has no config.json"):
        load_preset("hf://other/empty")
    half = {"config.json": files["config.json"], "metadata.json": files["metadata.json"]}
    hub_server.add_commit("other/half", half)
    with pytest.raises(ValueError, match=r"not model.weights.h5"):
        load_preset("hf://other/half")
    # The config decided each refusal: no weights were downloaded.
    assert hub_server.fetched(".safetensors") == 0
    assert hub_server.fetched(".h5") == 0
    assert not os.path.isdir(hub.repo_cache("other/bert"))


def test_an_interrupted_download_leaves_no_cache_entry(hub_server, tmp_path, monkeypatch):
    files, expected = _preset_files(tmp_path, 0, "p")
    commit = hub_server.add_commit("kzoo/tiny", files)
    size = os.path.getsize(files["model.weights.h5"])
    hub_server.cut("kzoo/tiny", "model.weights.h5", size // 2)
    with pytest.raises(ValueError, match=r"Downloading model.weights.h5 of hf://kzoo/tiny"):
        load_preset("hf://kzoo/tiny")
    root = hub.repo_cache("kzoo/tiny")
    assert not os.path.exists(os.path.join(root, commit))
    leftovers = os.listdir(root) if os.path.isdir(root) else []
    assert [e for e in leftovers if e != hub.REFS_DIR] == []
    # Offline now, nothing half-written is taken for a cached copy.
    hub_server.heal()
    hub_server.stop()
    with pytest.raises(ValueError, match=r"cannot be reached .* holds no copy"):
        load_preset("hf://kzoo/tiny")
    server = type(hub_server)()
    server.repos = hub_server.repos
    monkeypatch.setenv("HF_ENDPOINT", server.start())
    try:
        np.testing.assert_allclose(_outputs(load_preset("hf://kzoo/tiny")), expected, atol=0)
    finally:
        server.stop()
    assert _entries("kzoo/tiny") == [commit]


def test_offline_without_a_cached_copy_and_bad_handles(hub_server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"HF_HUB_OFFLINE is set, and kzoo's cache .* no copy"):
        load_preset("hf://kzoo/tiny")
    assert hub_server.requests == []
    for bad in ("hf://kzoo", "hf://a/b/c", "hf://a/b@", "hf://a--x/b", "hf://a/b@x y", "hf://"):
        with pytest.raises(ValueError, match=r"hf://<owner>/<repo>"):
            load_preset(bad)
    with pytest.raises(ValueError, match="sha256 applies to archive URLs"):
        load_preset("hf://a/b", sha256="0" * 64)


def test_a_damaged_cache_entry_is_rebuilt(hub_server, tmp_path):
    files, expected = _preset_files(tmp_path, 0, "p")
    commit = hub_server.add_commit("kzoo/tiny", files)
    load_preset("hf://kzoo/tiny")
    weights = os.path.join(hub.repo_cache("kzoo/tiny"), commit, "model.weights.h5")
    # A hard link to huggingface_hub's blob: replace the file, do not write through the link.
    os.remove(weights)
    with open(weights, "wb") as f:
        f.write(b"damaged")
    np.testing.assert_allclose(_outputs(load_preset("hf://kzoo/tiny")), expected, atol=0)
    assert hub_server.fetched("model.weights.h5") == 1  # re-linked from huggingface_hub's cache


def test_kzoo_list_cached(hub_server, tmp_path, capsys):
    files, _ = _preset_files(tmp_path, 0, "p")
    commit = hub_server.add_commit("kzoo/tiny", files, refs=("main", "v1"))
    assert kzoo_main(["list", "--cached"]) == 0
    assert "(nothing cached" in capsys.readouterr().out
    load_preset("hf://kzoo/tiny@v1")
    assert kzoo_main(["list", "--cached"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "hf://" in line]
    assert len(lines) == 1
    assert "hf://kzoo/tiny" in lines[0] and commit[:12] in lines[0] and "v1" in lines[0]
    assert os.path.join(hub.repo_cache("kzoo/tiny"), commit) in lines[0]
    assert kzoo_main(["list", "--cached", "--model", "DETR"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kzoo: error: --cached")
