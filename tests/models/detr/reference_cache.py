"""Reference files that a script writes once, in its own process, for every test session.

``detr_checkpoints.py`` and ``hub_checkpoints.py`` generate transformers' and the official code's
DETRs in a subprocess (torch with no keras settings) and keep them in a directory named by a
hash of what produced them, so later sessions and the other backends' runs reuse them.
"""

import os
import subprocess
import sys
from pathlib import Path


def generated(script, root, spec, default_specs, tmp_path_factory, timeout, pythonpath=None):
    """``root/spec``, generated first (with the default specs not there yet) when missing.

    Runs ``script <work dir> <specs...>``; each spec's directory is then moved into ``root``
    whole, so a concurrent session sees all of it or none.
    """
    root = Path(root)
    out = root / spec
    if (out / "done").exists():
        return out
    specs = default_specs if spec in default_specs else (spec,)
    specs = [s for s in specs if not (root / s / "done").exists()]
    work = tmp_path_factory.mktemp("detr_reference")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_")}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, os.path.abspath(script), str(work), *specs],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"reference generation failed:\n{result.stderr[-4000:]}")
    root.mkdir(parents=True, exist_ok=True)
    for name in specs:
        (work / name / "done").write_text("ok")
        try:
            os.rename(work / name, root / name)
        except OSError:
            if not (root / name / "done").exists():
                raise
    return out
