import os
import subprocess
import sys

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORKS = ("torch", "tensorflow", "jax", "triton", "transformers", "scipy", "matplotlib")

CHECK = f"""
import sys
import keras
before = {{m.split('.')[0] for m in sys.modules}}
import kzoo
after = {{m.split('.')[0] for m in sys.modules}}
print(sorted((after - before) & set({FRAMEWORKS!r})))
"""


def test_import_kzoo_imports_no_framework_beyond_keras():
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    out = subprocess.run(
        [sys.executable, "-c", CHECK],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_unknown_backend_is_a_clear_error():
    env = dict(os.environ, KERAS_BACKEND="pytorch")
    out = subprocess.run(
        [sys.executable, "-c", "import kzoo"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "ValueError: KERAS_BACKEND='pytorch' is not a backend keras knows" in out.stderr
