"""scripts/train/eval_video.py: per-step metrics of a rollout and of the copy-last-frame
baseline."""

import importlib.util
import json
import os

import numpy as np
import pytest

from kzoo.metrics import per_frame_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script():
    path = os.path.join(ROOT, "scripts", "train", "eval_video.py")
    spec = importlib.util.spec_from_file_location("eval_video", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_and_moving_mnist_tables_and_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    mnist = rng.integers(0, 256, (20, 3, 16, 16), dtype=np.uint8)  # (time, videos, H, W)
    np.save(tmp_path / "mnist.npy", mnist)
    out = tmp_path / "r.json"
    argv = ["--steps", "3", "--num-sequences", "4", "--moving-mnist", str(tmp_path / "mnist.npy")]
    assert _script().main(argv + ["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic moving shapes" in printed and "Moving MNIST" in printed
    assert "copy-last at" in printed
    with open(out) as f:
        result = json.load(f)
    assert result["model"] == "ColorFramePredictor"
    for name in ("synthetic", "moving_mnist"):
        data = result["datasets"][name]
        assert set(data["model"]) == {"mse", "mae", "psnr", "ssim"}
        assert all(len(v) == 3 for v in data["model"].values())
    # The baseline's numbers, recomputed here from the file: 10 frames in, the next 3 out.
    videos = np.transpose(mnist, (1, 0, 2, 3))[..., None].astype("float32") / 255.0
    videos = np.repeat(videos, 3, axis=-1)  # the colour preset sees grey frames as RGB
    future = videos[:, 10:13]
    ref = per_frame_metrics(future, np.repeat(videos[:, 9:10], 3, axis=1))
    got = result["datasets"]["moving_mnist"]["copy_last"]
    np.testing.assert_allclose(got["mse"], ref["mse"], rtol=1e-6)
    np.testing.assert_allclose(got["ssim"], ref["ssim"], atol=1e-6)
    # An existing --json is not replaced without --overwrite.
    with pytest.raises(SystemExit):
        _script().main(argv + ["--json", str(out)])
