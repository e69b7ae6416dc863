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
