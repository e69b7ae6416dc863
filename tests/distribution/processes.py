"""Starting real processes for the multi-process tests: torchrun (gloo on 127.0.0.1)."""

import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(script, nproc, args, timeout=600):
    """Run ``script args`` under ``torchrun`` as ``nproc`` CPU processes (gloo on 127.0.0.1);
    returns the finished process, failing with the end of its output if any rank failed."""
    env = dict(
        os.environ,
        KERAS_BACKEND="torch",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script), *args,
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return done
