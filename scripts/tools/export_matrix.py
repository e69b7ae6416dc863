"""Export every kzoo model in every format from every backend; print docs/export.md's table.

Each backend runs in its own subprocess (keras picks its backend at import). In it, every case
of ``tests/export/cases.py`` (the models the export tests use) is exported in each format the
backend writes, loaded in its runtime and compared with the keras model at two input sizes;
a cell reports the largest difference over both sizes and all outputs (pixel boxes divided by
the image's larger side), or the converter's error.

Usage:
    python scripts/tools/export_matrix.py                       # all backends, markdown table
    python scripts/tools/export_matrix.py --backends torch --cases DETR CausalLM
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLUMNS = [
    ("tensorflow", "saved_model"),
    ("tensorflow", "onnx"),
    ("tensorflow", "litert"),
    ("jax", "saved_model"),
    ("jax", "onnx"),
    ("torch", "onnx"),
]
HEADERS = {
    "saved_model": "SavedModel",
    "onnx": "ONNX",
    "litert": "LiteRT",
    "tensorflow": "TF",
    "jax": "JAX",
    "torch": "torch",
}


def _load(path, name):
    """The Python file ``path`` as module ``name`` (the tests folder is not installed)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def child(cases, formats):
    import keras

    from kzoo import export

    test_cases = _load(os.path.join(ROOT, "tests", "export", "cases.py"), "export_cases")
    CASES, run_case = test_cases.CASES, test_cases.run_case

    backend = keras.backend.backend()
    for name in cases or CASES:
        for format in export.supported_formats(backend):
            if formats and format not in formats:
                continue
            cell = {"case": name, "backend": backend, "format": format}
            with tempfile.TemporaryDirectory() as directory:
                try:
                    results, fixed, _ = run_case(name, format, directory)
                    cell["max_diff"] = max(max(d.values()) for d in results)
                    cell["fixed"] = fixed
                except Exception as error:  # a cell that does not work: record why
                    cell["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            print("RESULT " + json.dumps(cell), flush=True)


def markdown(cells, cases):
    head = "| model | " + " | ".join(f"{HEADERS[b]} {HEADERS[f]}" for b, f in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
    for name in cases:
        row = [name]
        for backend, format in COLUMNS:
            cell = cells.get((name, backend, format))
            if cell is None:
                row.append("not run")
            elif "error" in cell:
                row.append(f"does not work: {cell['error']}")
            else:
                fixed = ", ".join(f"{k} fixed" for k in cell["fixed"])
                row.append(f"works ({cell['max_diff']:.1e}{'; ' + fixed if fixed else ''})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--cases", nargs="+", default=None, help="case names (default: all)")
    parser.add_argument("--formats", nargs="+", default=None, help="formats (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.cases, args.formats)
        return 0
    cells, order = {}, []
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [sys.executable, os.path.abspath(__file__), "--child"]
        if args.cases:
            cmd += ["--cases", *args.cases]
        if args.formats:
            cmd += ["--formats", *args.formats]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            if not line.startswith("RESULT "):
                continue
            cell = json.loads(line[len("RESULT ") :])
            cells[(cell["case"], cell["backend"], cell["format"])] = cell
            if cell["case"] not in order:
                order.append(cell["case"])
            status = cell.get("error") or f"{cell['max_diff']:.2e}"
            print(f"{backend:>10} {cell['format']:<11} {cell['case']:<26} {status}", flush=True)
        if proc.wait():
            print(f"{backend}: the child exited with {proc.returncode}", flush=True)
    print()
    print(markdown(cells, order))
    return 0


if __name__ == "__main__":
    sys.exit(main())
