"""``kzoo train detr`` on COCO-format files: fine-tuning, evaluation, prediction, resume, errors.

The dataset is written to disk by ``coco_files.write_coco_dataset``: JPEG and PNG files of
different sizes, category ids 3, 8, 42 (listed out of order), a crowd annotation and an image
without objects. Training runs as a real ``python -m kzoo`` process.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

from kzoo.cli.main import main
from kzoo.data.coco_eval import COCO_METRICS
from kzoo.models import DETR
from kzoo.presets import preset_io
from tests.models.detr.coco_files import tiny_detr, write_coco_dataset
from tests.robustness.support import ROOT, assert_cli_error, kzoo, kzoo_in_process

# JAX and TensorFlow compile the training step for ~30 s: their runs go to the slow CI step.
slow_unless_torch = pytest.mark.slow if keras.backend.backend() != "torch" else (lambda f: f)

# Images of at most 107 pixels padded to 128 x 128: one step shape, one compilation.
TINY = [
    "--batch-size", "2", "--image-size", "64", "--num-queries", "5", "--d-model", "16",
    "--num-heads", "2", "--num-encoder-layers", "1", "--num-decoder-layers", "2",
    "--ffn-dim", "16", "--workers", "1", "--pad-multiple", "128",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    train = write_coco_dataset(root, 6, 0, "train")
    val = write_coco_dataset(root, 4, 1, "val")
    return root, train, val


def data_args(data, val=True):
    _, (train_json, train_dir), (val_json, val_dir) = data
    args = ["--train-annotations", train_json, "--train-images", train_dir]
    if val:
        args += ["--val-annotations", val_json, "--val-images", val_dir]
    return args


def _numpy(v):
    return np.asarray(keras.ops.convert_to_numpy(v))


@pytest.fixture(scope="module")
def source_preset(tmp_path_factory):
    """A 5-class tiny DETR preset to fine-tune from (as a converted checkpoint would be)."""
    path = tmp_path_factory.mktemp("source") / "preset"
    preset_io.save_preset(tiny_detr(5), path)
    return str(path)


@slow_unless_torch
def test_fine_tunes_a_preset_then_evaluates_and_predicts(data, source_preset, tmp_path, capsys):
    root, _, (val_json, val_dir) = data
    out = tmp_path / "run"
    result = kzoo(
        "train", "detr", "--out", out, *data_args(data), *TINY, "--epochs", "2",
        "--preset", source_preset, "--freeze-backbone", "--verbose", "2", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # The class head was re-initialised for the data's 3 classes, and it was said once.
    assert result.stderr.count("newly initialised") == 1
    assert "Epoch 2/2" in result.stdout and "validation COCO AP" in result.stdout

    report = json.loads((out / "eval.json").read_text())
    assert set(COCO_METRICS) <= set(report) and report["steps"] == 6
    meta = preset_io.read_metadata(out / "preset")
    assert meta["class_names"] == ["square", "bar", "disc"]
    assert meta["category_ids"] == [3, 8, 42] and meta["image_size"] == 64
    assert preset_io.read_metadata(out / "best")["epoch"] in (1, 2)
    records = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2] and all("val_AP" in r for r in records)
    with Image.open(out / "curves.png") as im:
        assert im.format == "PNG"
    assert not (out / "backup").exists()  # removed once training finished

    # --freeze-backbone: the backbone is the source preset's, the head has trained.
    source, trained = DETR.from_preset(source_preset), DETR.from_preset(str(out / "preset"))
    before, after = source.weights_by_path(), trained.weights_by_path()
    for key in before:
        if key.startswith("backbone/"):
            np.testing.assert_array_equal(_numpy(after[key]), _numpy(before[key]), err_msg=key)
    assert not np.array_equal(
        _numpy(after["input_proj/kernel"]), _numpy(before["input_proj/kernel"])
    )

    # kzoo eval detr: the twelve metrics, the same as the run's own final evaluation.
    metrics_file, results_file = tmp_path / "metrics.json", tmp_path / "results.json"
    code = main(
        [
            "eval", "detr", "--preset", str(out / "preset"), "--annotations", val_json,
            "--images", val_dir, "--metrics-json", str(metrics_file),
            "--results", str(results_file),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.count("Average Precision") == 6 and printed.count("Average Recall") == 6
    metrics = json.loads(metrics_file.read_text())
    assert list(metrics) == list(COCO_METRICS)
    assert metrics == pytest.approx({k: report[k] for k in COCO_METRICS}, abs=1e-9)
    results = json.loads(results_file.read_text())
    assert {r["category_id"] for r in results} <= {3, 8, 42}
    assert len(results) == 4 * 5  # every query of every image (threshold 0)

    # kzoo predict detr on the folder: the same detections, ids from the annotation file.
    pictures, predicted_file = tmp_path / "pictures", tmp_path / "predicted.json"
    code = main(
        [
            "predict", "detr", "--preset", str(out / "preset"), "--image", val_dir,
            "--threshold", "0", "--results", str(predicted_file), "--annotations", val_json,
            "--out", str(pictures),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "wrote 4 pictures" in printed
    assert sorted(os.listdir(pictures)) == sorted(os.listdir(val_dir))
    predicted = json.loads(predicted_file.read_text())

    def key(r):
        return (r["image_id"], -r["score"])

    assert len(predicted) == len(results)
    for a, b in zip(sorted(predicted, key=key), sorted(results, key=key)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.05)


# JAX and TensorFlow train under mixed_bfloat16 in test_mixed_precision.py; here the CLI's path.
@pytest.mark.backends("torch")
def test_trains_a_new_model_without_validation_under_mixed_bfloat16(data, tmp_path):
    out = tmp_path / "run"
    result = kzoo(
        "train", "detr", "--out", out, *data_args(data, val=False), *TINY, "--epochs", "1",
        "--dtype-policy", "mixed_bfloat16", "--augment", "detr", "--verbose", "0", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["steps"] == 3 and np.isfinite(report["final_loss"])
    assert not (out / "best").exists()  # no validation set, no best model
    # The preset holds float32 weights and loads as float32 (the policy is the run's).
    model = DETR.from_preset(str(out / "preset"))
    assert model.compute_dtype == "float32" and model.head.compute_dtype == "float32"


def _corrupt(data, tmp_path, edit):
    root, (train_json, train_dir), _ = data
    target = tmp_path / "bad"
    shutil.copytree(train_dir, target / "images")
    text = open(train_json).read()
    coco = json.loads(text)
    text = edit(coco, target / "images", text)
    (target / "train.json").write_text(text if isinstance(text, str) else json.dumps(coco))
    return str(target / "train.json"), str(target / "images")


def _missing_image(coco, images, text):
    os.remove(images / coco["images"][2]["file_name"])


def _unknown_category(coco, images, text):
    coco["annotations"][1]["category_id"] = 77


def _negative_width(coco, images, text):
    coco["annotations"][0]["bbox"][2] = -4


def _malformed(coco, images, text):
    return text[:-20]


def _escaping_file_name(coco, images, text):
    # The file exists, beside the image folder: the old code trained on it.
    os.rename(images / coco["images"][2]["file_name"], images.parent / "outside.png")
    coco["images"][2]["file_name"] = "../outside.png"


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (_missing_image, ["image id 24", "img_24.png", "not in image_dir"]),
        (_unknown_category, ["annotation id 101", "category_id 77", "not in 'categories'"]),
        (_negative_width, ["annotation id 100", "bbox", "width and height >= 0"]),
        (_malformed, ["not valid JSON"]),
        (_escaping_file_name, ["image id 24", "'../outside.png'", "outside image_dir"]),
    ],
)
def test_bad_data_is_one_line_error_before_training(data, tmp_path, capsys, edit, fragments):
    annotations, images = _corrupt(data, tmp_path, edit)
    out = tmp_path / "run"
    code = main(
        ["train", "detr", "--out", str(out), "--train-annotations", annotations,
         "--train-images", images, *TINY]
    )  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("kzoo: error:")]
    assert code == 2 and len(lines) == 1, err
    for fragment in [annotations, *fragments]:
        assert fragment in lines[0]
    # Nothing was trained or written.
    assert not (out / "backup").exists() and not (out / "preset").exists()


@pytest.mark.parametrize(
    "workers, batch",
    [
        ("1", 0),
        ("2", 0),
        pytest.param(
            "2", 2, marks=[pytest.mark.slow] if keras.backend.backend() != "torch" else []
        ),
    ],
)
def test_an_image_over_the_decompression_bomb_limit_is_one_line_naming_it(
    data, tmp_path, capsys, monkeypatch, workers, batch
):
    """Issue #24 item 9: a decompression-bomb image in the training set ended the run with
    PIL's raw DecompressionBombError traceback, naming neither image id nor file. In the
    first batch keras reads it in Python; in the last (after two training steps) TensorFlow
    reads it inside tf.data, which wraps the error in its own."""
    from kzoo.data import CocoDetection

    _, (train_json, train_dir), _ = data
    images = tmp_path / "images"
    shutil.copytree(train_dir, images)
    # An image of epoch 0's batch `batch` (the training set shuffles by --seed 0).
    ids = CocoDetection(train_json, train_dir, batch_size=2, shuffle=True).batch_image_ids(batch)
    entry = next(im for im in json.loads(open(train_json).read())["images"] if im["id"] == ids[0])
    Image.fromarray(np.zeros((160, 160, 3), np.uint8)).save(images / entry["file_name"])
    # 25600 pixels, over twice the limit (PIL's error); the other images have at most 9216.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    out = tmp_path / "run"
    code = main(
        ["train", "detr", "--out", str(out), "--train-annotations", train_json,
         "--train-images", str(images), *TINY, "--workers", workers, "--epochs", "1"]
    )  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("kzoo: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in (f"image id {entry['id']}", entry["file_name"], "too large to decode"):
        assert fragment in lines[0]
    assert not (out / "preset").exists()


def test_option_mistakes_are_one_line_errors(data, source_preset, tmp_path, capsys):
    _, (train_json, train_dir), (val_json, _) = data
    out = tmp_path / "run"
    one_query = list(TINY)
    one_query[one_query.index("--num-queries") + 1] = "1"
    cases = [
        (["--train-annotations", train_json], "--train-images"),
        (["--train-annotations", train_json, "--train-images", str(tmp_path / "nope")], "nope"),
        (["--train-images", train_dir], "--train-annotations"),
        (["--preset", source_preset], "--train-annotations"),
        ([*data_args(data, val=False), "--val-annotations", val_json], "--val-images"),
        ([*data_args(data), "--num-classes", "4"], "3 categories"),
        ([*data_args(data), "--max-size", "32"], "--max-size"),
        ([*data_args(data), "--cpu-time-limit", "0"], "--cpu-time-limit"),
        ([*data_args(data), "--preset", str(tmp_path / "no_preset")], "does not exist"),
    ]
    for extra, fragment in cases:
        code = main(["train", "detr", "--out", str(out), *TINY, *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("kzoo: error:") == 1, (extra, err)
        assert fragment in err, (extra, err)
        assert not out.exists(), extra  # refused before anything was written
    # More boxes in an image than the model has queries.
    code = main(["train", "detr", "--out", str(out), *one_query, *data_args(data)])
    assert code == 2 and "1 queries" in capsys.readouterr().err
    assert not out.exists()
    if keras.backend.backend() != "jax":
        code = main(
            ["train", "detr", "--out", str(out), *TINY, *data_args(data), "--data-parallel"]
        )
        assert code == 2 and "KERAS_BACKEND=jax" in capsys.readouterr().err


def test_output_presets_holding_other_files_are_refused_unless_forced(data, tmp_path):
    out = tmp_path / "run"
    (out / "best").mkdir(parents=True)
    (out / "best" / "notes.txt").write_text("mine")
    args = ["train", "detr", "--out", out, *data_args(data), *TINY, "--epochs", "1"]
    # In this process: the refusal comes before train seeds or sets a policy.
    result = kzoo_in_process(*args)
    assert_cli_error(result, str(out / "best"), "--force")
    assert (out / "best" / "notes.txt").read_text() == "mine"


def _wait_for(path_test, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path_test():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_with_the_same_command(data, tmp_path):
    out = tmp_path / "run"
    args = [
        sys.executable, "-m", "kzoo", "train", "detr", "--out", str(out), *data_args(data),
        *TINY, "--epochs", "6", "--verbose", "2",
    ]  # fmt: skip
    env = dict(
        os.environ,
        KERAS_BACKEND=keras.backend.backend(),
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    backup = out / "backup"
    log = tmp_path / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(args, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        # Time an epoch (between the first two backups), then kill (SIGKILL: no handler runs)
        # part-way through the third one: training, evaluating or saving.
        assert _wait_for(lambda: (backup / "epoch-000001.weights.h5").exists(), proc, 500), (
            log.read_text()[-3000:]
        )
        first = time.time()
        assert _wait_for(lambda: (backup / "epoch-000002.weights.h5").exists(), proc, 500)
        epoch = time.time() - first
        time.sleep(epoch * np.random.default_rng().uniform(0.2, 0.8))
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # What the killed run left is loadable: its best preset, its last checkpoint.
    DETR.from_preset(str(out / "best"))
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # It resumed after the last backup (epoch 2 or 3), not from the start.
    assert "Epoch 1/6" not in resumed.stdout and "Epoch 6/6" in resumed.stdout
    report = json.loads((out / "eval.json").read_text())
    assert report["steps"] == 6 * 3
    records = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    for name in ("preset", "best"):
        model = DETR.from_preset(str(out / name))
        assert model.num_classes == 3
    assert not backup.exists()
    leftovers = [p for p in out.rglob("*") if "kzoo-tmp" in p.name or p.name.startswith(".tmp-")]
    assert not leftovers


@pytest.mark.slow
@pytest.mark.backends("jax")
def test_data_parallel_training_through_the_cli(tmp_path):
    # tests/conftest.py gives JAX 8 virtual CPU devices, through XLA_FLAGS, also to this process.
    train = write_coco_dataset(tmp_path, 9, 3, "train")
    val = write_coco_dataset(tmp_path, 3, 4, "val")
    out = tmp_path / "run"
    tiny = list(TINY)
    tiny[tiny.index("--batch-size") + 1] = "8"
    result = kzoo(
        "train", "detr", "--out", out, *data_args((tmp_path, train, val)), *tiny,
        "--epochs", "2", "--data-parallel", "--verbose", "2", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    # 9 images in batches of 8, the partial one dropped: one step per epoch; 3 images evaluated.
    assert report["steps"] == 2 and report["val_images"] == 3
    assert DETR.from_preset(str(out / "best")).num_classes == 3
    bad = list(TINY)
    bad[bad.index("--batch-size") + 1] = "6"
    # Refused before train seeds or sets a policy: in this process, which has the 8 devices too.
    result = kzoo_in_process("train", "detr", "--out", out, *data_args((tmp_path, train, val)),
                             *bad, "--data-parallel")  # fmt: skip
    assert_cli_error(result, "--batch-size 6", "8 devices")
