"""DETR training under keras.distribution.DataParallel (JAX) gives the one-device numbers.

Five training steps (forward, Hungarian matching on the host, set loss, backward, AdamW with
clipping) on 8 virtual CPU devices in one process, and (slow) on 2 processes x 4 devices started
with ``keras.distribution.initialize`` on a loopback coordinator, give the same losses (relative
difference <= 1e-5) and weights as one device.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.models.detr.coco_files import tiny_detr
from tests.xla import flags_with_devices

STEPS, BATCH = 5, 8
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 4))


def _compile(model):
    from kzoo.models.detr.training.optimizer import ScaledAdamW

    model.compile(
        optimizer=ScaledAdamW(
            1e-3,
            weight_decay=1e-4,
            global_clipnorm=0.1,
            learning_rate_scales={model.backbone_path_pattern(): 0.5},
        )
    )
    return model


def _batch():
    """One batch of 8 images of two sizes (padded, with a pixel mask), 0 to 3 boxes each."""
    from kzoo.data.coco import collate
    from kzoo.data.detection import SyntheticDetection

    big = SyntheticDetection(num_images=4, image_size=64, max_objects=3, seed=11)
    small = SyntheticDetection(num_images=4, image_size=48, max_objects=3, seed=12)
    examples = [big.sample(i) for i in range(4)] + [small.sample(i) for i in range(4)]
    return collate(examples, max_objects=3)


def _fit(model, x, y):
    # One batch per epoch: the epoch losses are the step losses.
    history = model.fit(x, y, batch_size=BATCH, epochs=STEPS, shuffle=False, verbose=0)
    return np.array(history.history["loss"])


def _weights(model):
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.weights]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-device run: its preset (the starting weights), losses and final weights; both
    tests compare with the same run."""
    keras.utils.set_random_seed(3)
    model = tiny_detr()
    preset = str(tmp_path_factory.mktemp("reference") / "start")
    model.save_to_preset(preset)
    x, y = _batch()
    losses = _fit(_compile(model), x, y)
    assert losses[-1] < losses[0]
    return preset, losses, _weights(model)


@pytest.mark.slow  # ~40 s: two compilations of DETR's training step
@pytest.mark.backends("jax")
def test_data_parallel_on_eight_devices_matches_one_device(reference):
    from kzoo.models import DETR

    preset, expected_losses, expected_weights = reference
    devices = keras.distribution.list_devices()
    assert len(devices) == 8
    distribution = keras.distribution.DataParallel(devices=devices)
    x, y = _batch()
    with distribution.scope():
        model = _compile(DETR.from_preset(preset))
        losses = _fit(model, x, y)
        # The step really ran on the 8 devices.
        assert len(model.trainable_variables[0].value.sharding.device_set) == 8
    np.testing.assert_array_less(np.abs(losses - expected_losses) / expected_losses, 1e-5)
    for a, b in zip(_weights(model), expected_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Two processes x four CPU devices, JAX's distributed runtime on a loopback coordinator.


def _worker(port, process_id, preset, out_path):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize(
        job_addresses=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
    )
    from kzoo.models import DETR

    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    assert len(devices) == 8 and jax.local_device_count() == 4
    # Each process feeds its own half of the global batch (keras does not split numpy arrays
    # across processes): images 4 * process_id to 4 * process_id + 3.
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    model = _compile(DETR.from_preset(preset))
    x, y = _batch()
    rows = slice(4 * process_id, 4 * process_id + 4)
    mine_x = {k: v[rows] for k, v in x.items()}
    mine_y = {k: v[rows] for k, v in y.items()}
    history = model.fit(mine_x, mine_y, batch_size=4, epochs=STEPS, shuffle=False, verbose=0)
    weights = _weights(model)
    with open(out_path, "w") as f:
        json.dump(
            {
                "losses": history.history["loss"],
                "processes": jax.process_count(),
                "weights": [w.ravel()[:64].tolist() for w in weights],
            },
            f,
        )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.backends("jax")
def test_data_parallel_on_two_processes_of_four_devices_matches_one_device(reference, tmp_path):
    preset, expected_losses, expected_weights = reference
    port = _free_port()
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS=flags_with_devices(4),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT,
    )
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(port), str(i), preset, str(tmp_path / f"{i}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    for i in range(2):
        with open(tmp_path / f"{i}.json") as f:
            result = json.load(f)
        assert result["processes"] == 2
        losses = np.array(result["losses"])
        np.testing.assert_array_less(np.abs(losses - expected_losses) / expected_losses, 1e-5)
        for got, want in zip(result["weights"], expected_weights):
            np.testing.assert_allclose(got, want.ravel()[:64], rtol=1e-4, atol=1e-6)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
