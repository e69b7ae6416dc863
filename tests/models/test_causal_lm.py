"""CausalLM: causality, packed documents, serialisation, and training on packed documents under
ContextParallel (JAX, ring and all-to-all) giving the same losses as one device - on 2 x 4
virtual devices in one process, and (slow) as 2 processes x 4 CPU devices started with
keras.distribution.initialize on a loopback coordinator; on torch (slow) as 2 and 4
torch.distributed processes (torchrun, gloo) - the same losses as one process, the same
weights on every rank, checkpoints written once - and the same losses as JAX."""

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from kzoo.distribution import pack_documents
from kzoo.models import CausalLM
from tests.xla import flags_with_devices

VOCAB, SEQ, STEPS = 32, 32, 5
# Two packed rows: three documents and padding, and one document filling the row.
DOCUMENTS = [[9, 14, 6], [32]]
STRATEGIES = ("ring", "all_to_all")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _model(seed=7, num_layers=2):
    keras.utils.set_random_seed(seed)
    model = CausalLM(
        vocabulary_size=VOCAB,
        num_layers=num_layers,
        hidden_dim=16,
        num_heads=4,
        num_key_value_heads=2,
        max_sequence_length=SEQ,
    )
    model.build((None, SEQ))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _data(batch=2):
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(batch, SEQ + 1)).astype("int32")
    return tokens[:, :-1], tokens[:, 1:]


def _fit(model, x, y, batch_size, sample_weight=None):
    history = model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=STEPS,
        shuffle=False,
        verbose=0,
        sample_weight=sample_weight,
    )
    return np.array(history.history["loss"])


def _packed(distribution=None):
    """Packed inputs, targets and loss weights; each document's targets are its own next
    tokens. In ``distribution``'s layout order."""
    rng = np.random.default_rng(1)
    x = np.zeros((len(DOCUMENTS), SEQ), "int32")
    y = np.zeros_like(x)
    for row, lengths in enumerate(DOCUMENTS):
        start = 0
        for n in lengths:
            tokens = rng.integers(1, VOCAB, size=n + 1)
            x[row, start : start + n], y[row, start : start + n] = tokens[:-1], tokens[1:]
            start += n
    segment_ids, positions = pack_documents(DOCUMENTS, SEQ, distribution)
    if distribution is not None:
        x, y = distribution.to_layout_order(x), distribution.to_layout_order(y)
    inputs = {"token_ids": x, "segment_ids": segment_ids, "positions": positions}
    return inputs, y, (segment_ids > 0).astype("float32")


def test_logits_are_causal_and_preset_round_trips(tmp_path):
    model = _model()
    x, _ = _data()
    changed = x.copy()
    changed[:, 20] = (changed[:, 20] + 1) % VOCAB
    both = np.concatenate([x, changed])
    logits = keras.ops.convert_to_numpy(model(both))
    assert logits.shape == (4, SEQ, VOCAB)
    np.testing.assert_allclose(logits[2:, :20], logits[:2, :20], atol=1e-5)
    assert np.max(np.abs(logits[2:, 20:] - logits[:2, 20:])) > 1e-4
    model.save_to_preset(tmp_path / "lm")
    clone = CausalLM.from_preset(str(tmp_path / "lm"))
    assert clone.get_config() == model.get_config()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(both)), logits, atol=1e-5)


def test_block_fuses_the_residual_add_with_the_mlp_norm():
    # The block computes norm(x + attn) and x + attn in one op; it must equal the unfused block.
    from kzoo.models.causal_lm import CausalLMBlock

    keras.utils.set_random_seed(3)
    block = CausalLMBlock(hidden_dim=16, num_heads=4, num_key_value_heads=2)
    x = keras.ops.convert_to_tensor(np.random.default_rng(1).normal(size=(2, 8, 16)), "float32")
    block.build(x.shape)
    for norm in (block.attention_norm, block.mlp_norm):
        norm.set_weights([np.random.default_rng(2).normal(1, 0.3, w.shape) for w in norm.weights])
    h = block.attention_norm(x)
    x1 = x + block.attention(h, h)
    want = x1 + block.mlp_out(block.mlp_in(block.mlp_norm(x1)))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(block(x)), keras.ops.convert_to_numpy(want), atol=1e-5
    )


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_layers"):
        CausalLM(vocabulary_size=8, num_layers=0, hidden_dim=8, num_heads=2)
    with pytest.raises(ValueError, match="num_heads"):
        CausalLM(vocabulary_size=8, num_layers=1, hidden_dim=8, num_heads=3)
    with pytest.raises(ValueError, match="max_sequence_length"):
        CausalLM(
            vocabulary_size=8, num_layers=1, hidden_dim=8, num_heads=2, max_sequence_length=4
        ).build((1, 8))


def test_packed_documents_get_the_logits_each_document_gets_alone():
    model = _model()
    inputs, _, _ = _packed()
    logits = keras.ops.convert_to_numpy(model(inputs))
    # The reference: each document alone at the start of a row of the plain (unpacked) model;
    # whatever follows it cannot change its logits, since the model is causal.
    alone, where = [], []
    for row, lengths in enumerate(DOCUMENTS):
        start = 0
        for n in lengths:
            tokens = np.zeros(SEQ, "int32")
            tokens[:n] = inputs["token_ids"][row, start : start + n]
            alone.append(tokens)
            where.append((row, start, n))
            start += n
    reference = keras.ops.convert_to_numpy(model(np.stack(alone)))
    for i, (row, start, n) in enumerate(where):
        np.testing.assert_allclose(logits[row, start : start + n], reference[i, :n], atol=1e-5)
    # The same tokens unpacked (one sequence, positions running on) give other logits.
    plain = keras.ops.convert_to_numpy(model(inputs["token_ids"]))
    assert np.max(np.abs(plain[0, 9:29] - logits[0, 9:29])) > 1e-3


def test_packed_inputs_are_checked():
    model = _model()
    inputs, y, _ = _packed()
    with pytest.raises(ValueError, match="need 'positions'"):
        model({"token_ids": inputs["token_ids"], "segment_ids": inputs["segment_ids"]})
    with pytest.raises(ValueError, match="segment_ids must have shape"):
        model({**inputs, "segment_ids": inputs["segment_ids"][:, :16]})
    with pytest.raises(ValueError, match="'tokens'"):
        model({"tokens": inputs["token_ids"]})
    broken = {**inputs, "positions": np.zeros_like(inputs["positions"])}
    with pytest.raises(ValueError, match="positions must count up by one along each document"):
        model.fit(broken, y, epochs=1, verbose=0)


@functools.lru_cache
def _one_device_packed_losses():
    inputs, y, weights = _packed()
    return _fit(_model(num_layers=1), inputs, y, batch_size=2, sample_weight=weights)


@pytest.mark.backends("jax")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_packed_fit_under_context_parallel_matches_one_device(strategy):
    from kzoo.distribution import ContextParallel

    expected = _one_device_packed_losses()
    cp = ContextParallel(
        keras.distribution.DeviceMesh((2, 4), ["batch", "context"]), strategy=strategy
    )
    inputs, y, weights = _packed(cp)
    with cp.scope():
        # The same seed gives the same initial weights under the distribution.
        model = _model(num_layers=1)
        natural, _, _ = _packed()
        with pytest.raises(ValueError, match="not in the layout order"):
            model.fit(natural, y, batch_size=2, verbose=0)
        losses = _fit(model, inputs, y, batch_size=2, sample_weight=weights)
        # The step really ran sharded over the sequence.
        assert model.trainable_variables[0].value.sharding.mesh.shape["context"] == 4
    assert expected[-1] < expected[0]
    np.testing.assert_array_less(np.abs(losses - expected) / expected, 1e-4)


# ---------------------------------------------------------------------------------------------
# Two processes x four CPU devices, JAX's distributed runtime on a loopback coordinator.


def _worker(port, process_id, preset_dir, out_path):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize(
        job_addresses=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
    )
    from kzoo.distribution import ContextParallel

    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    assert len(devices) == 8 and jax.local_device_count() == 4
    mesh = keras.distribution.DeviceMesh(
        (2, 4), ["batch", "context"], devices=np.array(devices).reshape(2, 4)
    )
    losses = {}
    for strategy in STRATEGIES:
        # Each process feeds its own rows (numpy arrays are not auto-sharded across processes).
        cp = ContextParallel(mesh, auto_shard_dataset=False, strategy=strategy)
        keras.distribution.set_distribution(cp)
        # The reference model's preset: same weights in every process, no random initialisation.
        model = CausalLM.from_preset(preset_dir)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        inputs, y, weights = _packed(cp)
        # This process's devices form batch row `process_id`: it feeds that row, whole sequence.
        rows = slice(process_id, process_id + 1)
        mine = {name: value[rows] for name, value in inputs.items()}
        losses[strategy] = _fit(model, mine, y[rows], 1, weights[rows]).tolist()
    with open(out_path, "w") as f:
        json.dump({"losses": losses, "processes": cp.num_processes}, f)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.backends("jax")
def test_packed_fit_two_processes_four_devices_each_matches_one_device(tmp_path):
    inputs, y, weights = _packed()
    reference = _model(num_layers=1)
    preset_dir = str(tmp_path / "preset")
    reference.save_to_preset(preset_dir)

    port = _free_port()
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS=flags_with_devices(4),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                str(port),
                str(i),
                preset_dir,
                str(tmp_path / f"{i}"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    # The one-device reference trains while the workers start up.
    expected = _fit(reference, inputs, y, 2, weights)
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    for i in range(2):
        with open(tmp_path / f"{i}") as f:
            result = json.load(f)
        assert result["processes"] == 2
        for strategy in STRATEGIES:
            losses = np.array(result["losses"][strategy])
            np.testing.assert_array_less(np.abs(losses - expected) / expected, 1e-4)


# ---------------------------------------------------------------------------------------------
# torch.distributed: 2 processes (mesh 1 x 2) and 4 processes (mesh 2 x 2), started by torchrun.

TORCH_STEPS = 20


def _compiled(model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _torch_worker(preset_dir, out_dir):
    """Run by every process: predict, then fit with each strategy from the preset's weights;
    checkpoints every epoch and a final save; record losses, weights and who wrote files."""
    import torch.distributed as dist
    from keras.src.saving import saving_api

    from kzoo.distribution import ContextParallel, list_devices

    writes = []
    for name in ("save_model", "save_weights"):
        real = getattr(saving_api, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            writes.append(_name)
            return _real(*args, **kwargs)

        setattr(saving_api, name, counting)
    world = len(list_devices())
    rank = dist.get_rank()
    shape = (2, world // 2) if world == 4 else (1, world)
    mesh = keras.distribution.DeviceMesh(shape, ["batch", "context"], devices=list_devices())
    report = {"world": world, "losses": {}, "predict": None}
    for strategy in STRATEGIES:
        cp = ContextParallel(mesh, strategy=strategy)
        inputs, y, weights = _packed(cp)
        with cp.scope():
            model = _compiled(CausalLM.from_preset(preset_dir))
            if report["predict"] is None:
                # The global logits on every process, in layout order.
                report["predict"] = cp.from_layout_order(model.predict(inputs, verbose=0)).tolist()
            checkpoint = keras.callbacks.ModelCheckpoint(
                os.path.join(out_dir, f"{strategy}.weights.h5"), save_weights_only=True
            )
            history = model.fit(
                inputs, y, batch_size=2, epochs=TORCH_STEPS, shuffle=False, verbose=0,
                sample_weight=weights, callbacks=[checkpoint],
            )  # fmt: skip
            report["losses"][strategy] = history.history["loss"]
            report[f"evaluate_{strategy}"] = model.evaluate(
                inputs, y, batch_size=2, sample_weight=weights, verbose=0
            )
            model.save(os.path.join(out_dir, f"{strategy}.keras"))
        np.savez(
            os.path.join(out_dir, f"weights_{strategy}_{rank}.npz"),
            *[np.asarray(w) for w in model.get_weights()],
        )
    report["writes"] = writes
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


def _jax_worker(preset_dir, out_path):
    """JAX on 8 virtual devices (mesh 2 x 4), the ring, from the same preset and data."""
    import jax

    from kzoo.distribution import ContextParallel

    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "context"], devices=jax.devices())
    cp = ContextParallel(mesh, strategy="ring")
    inputs, y, weights = _packed(cp)
    with cp.scope():
        model = _compiled(CausalLM.from_preset(preset_dir))
        history = model.fit(
            inputs, y, batch_size=2, epochs=TORCH_STEPS, shuffle=False, verbose=0,
            sample_weight=weights,
        )  # fmt: skip
    with open(out_path, "w") as f:
        json.dump(history.history["loss"], f)


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory):
    """The one-process reference (torch) and the reports of the 2- and 4-process runs."""
    from tests.distribution.processes import run_torchrun

    root = tmp_path_factory.mktemp("torch_cp")
    preset_dir = str(root / "preset")
    reference = _model(num_layers=1)
    reference.save_to_preset(preset_dir)
    inputs, y, weights = _packed()
    expected_predict = np.asarray(reference.predict(inputs, verbose=0))
    history = reference.fit(
        inputs, y, batch_size=2, epochs=TORCH_STEPS, shuffle=False, verbose=0,
        sample_weight=weights,
    )  # fmt: skip
    runs = {}
    for nproc in (2, 4):
        out = root / f"run{nproc}"
        out.mkdir()
        run_torchrun(__file__, nproc, ["torch", preset_dir, str(out)])
        runs[nproc] = out
    return {
        "preset": preset_dir,
        "losses": np.array(history.history["loss"]),
        "predict": expected_predict,
        "runs": runs,
        "root": root,
    }


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.backends("torch")
@pytest.mark.parametrize("nproc", [2, 4])
def test_torch_processes_train_like_one_process(torch_runs, nproc):
    expected = torch_runs["losses"]
    assert len(expected) == TORCH_STEPS and expected[-1] < 0.5 * expected[0]
    out = torch_runs["runs"][nproc]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    for rank, report in enumerate(reports):
        assert report["world"] == nproc
        np.testing.assert_allclose(report["predict"], torch_runs["predict"], atol=1e-5)
        for strategy in STRATEGIES:
            losses = np.array(report["losses"][strategy])
            # Every process logs the losses of the whole batch, as one process does.
            np.testing.assert_array_less(np.abs(losses - expected) / expected, 1e-4)
            assert report[f"evaluate_{strategy}"] == reports[0][f"evaluate_{strategy}"]
        # Checkpoints (every epoch, then a final save per strategy) are written by rank 0 only.
        per_strategy = TORCH_STEPS + 1
        assert len(report["writes"]) == (2 * per_strategy if rank == 0 else 0), report["writes"]
    for strategy in STRATEGIES:
        # The same weights on every rank, bit for bit.
        weights = [np.load(out / f"weights_{strategy}_{r}.npz") for r in range(nproc)]
        for other in weights[1:]:
            for key in weights[0].files:
                np.testing.assert_array_equal(other[key], weights[0][key])
        # The files are complete (no temporary files left) and hold rank 0's weights.
        model = CausalLM.from_preset(torch_runs["preset"])
        model.load_weights(out / f"{strategy}.weights.h5")
        for w, key in zip(model.get_weights(), weights[0].files):
            np.testing.assert_array_equal(np.asarray(w), weights[0][key])
        loaded = keras.saving.load_model(out / f"{strategy}.keras")
        np.testing.assert_array_equal(np.asarray(loaded.get_weights()[0]), weights[0]["arr_0"])
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.backends("torch")
def test_jax_and_torch_processes_give_the_same_losses(torch_runs):
    out_path = torch_runs["root"] / "jax_losses.json"
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS=flags_with_devices(8),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, __file__, "jax", torch_runs["preset"], str(out_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    jax_losses = np.array(json.loads(out_path.read_text()))
    report = json.loads((torch_runs["runs"][4] / "rank0.json").read_text())
    torch_losses = np.array(report["losses"]["ring"])
    assert len(jax_losses) == len(torch_losses) == TORCH_STEPS
    np.testing.assert_array_less(np.abs(jax_losses - torch_losses) / torch_losses, 1e-4)


if __name__ == "__main__":
    if sys.argv[1] == "torch":
        _torch_worker(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "jax":
        _jax_worker(sys.argv[2], sys.argv[3])
    else:
        _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
