"""Every kzoo model exported in every format this backend writes, run in its runtime.

For each cell of docs/export.md's table on this backend: export a tiny model, load the artifact
with the runtime that serves it (``tf.saved_model.load`` + the serving signature,
``onnxruntime.InferenceSession``, the LiteRT interpreter) and compare it with the keras model
at two input sizes (batch, and time / spatial size / sequence length where the artifact leaves
them free). Tolerance: 1e-5 absolute for every float32 output in every format (boxes in
pixels: 1e-5 of the image's larger side); integer outputs (labels) must match exactly.
"""

import os

import keras
import pytest

from kzoo import export
from tests.export.cases import CASES, UNSUPPORTED, run_case

BACKEND = keras.backend.backend()


def _marks(name, format):
    # jax2tf and jax2onnx traces of DETR take 8-30 s each on this 2-core machine: those run in
    # the slow step (which runs under JAX).
    heavy = BACKEND == "jax" and name.startswith("DETR")
    return [pytest.mark.slow] if heavy else []


WORKING = [
    pytest.param(name, format, marks=_marks(name, format), id=f"{name}-{format}")
    for name in CASES
    for format in export.supported_formats(BACKEND)
    if (name, BACKEND, format) not in UNSUPPORTED
]
FAILING = [
    pytest.param(name, format, error, marks=_marks(name, format), id=f"{name}-{format}")
    for (name, backend, format), (_, error) in UNSUPPORTED.items()
    if backend == BACKEND
]


@pytest.mark.parametrize("name,format", WORKING)
def test_artifact_matches_keras_in_its_runtime(name, format, tmp_path):
    results, fixed, path = run_case(name, format, tmp_path)
    tolerance = export.TOLERANCES[format]
    for diffs in results:
        for output, diff in diffs.items():
            limit = 0.0 if output == "labels" else tolerance
            assert diff <= limit, (output, diff, diffs)
    # Nothing but the artifact is left beside it (the export wrote through a temporary name).
    assert os.listdir(tmp_path) == [os.path.basename(path)]


@pytest.mark.parametrize("name,format,error", FAILING)
def test_documented_limitations_still_fail(name, format, error, tmp_path):
    with pytest.raises(Exception, match=error):  # whatever the converter raises
        run_case(name, format, tmp_path)
    # A failed export leaves nothing behind.
    assert os.listdir(tmp_path) == []


def test_docs_table_has_a_test_or_a_reason_for_every_cell():
    """docs/export.md's table: a "works" cell for every case this file runs, a "does not
    work" cell for every documented limitation, and nothing else."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "export.md")) as f:
        text = f.read().splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith("| model | TF SavedModel"))
    lines = []
    for line in text[start:]:
        if not line.startswith("| "):
            break
        lines.append(line)
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    assert header[0] == "model"
    names = {"TF": "tensorflow", "JAX": "jax", "torch": "torch"}
    formats = {"SavedModel": "saved_model", "ONNX": "onnx", "LiteRT": "litert"}
    columns = [(names[h.split()[0]], formats[h.split()[1]]) for h in header[1:]]
    assert sorted(columns) == sorted((b, f) for b, fs in export.BACKEND_FORMATS.items() for f in fs)
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].split(" (")[0] in CASES:
            rows[cells[0].split(" (")[0]] = dict(zip(columns, cells[1:]))
    assert set(rows) == set(CASES)
    for name, cells in rows.items():
        for (backend, format), cell in cells.items():
            if (name, backend, format) in UNSUPPORTED:
                assert cell.startswith("does not work: "), (name, backend, format, cell)
            else:
                assert cell.startswith("works ("), (name, backend, format, cell)
