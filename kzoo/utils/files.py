"""Atomic file and directory writes, and sha256 of files."""

import contextlib
import hashlib
import os
import shutil
import tempfile


def sha256_file(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_directory(target, overwrite=True):
    """Yield a temporary directory beside ``target`` that becomes ``target`` on success.

    On an exception (or an interrupt) the temporary directory is removed and ``target`` is left
    as it was, so a reader never sees half of a directory under the target name.
    """
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(target) and not overwrite:
        raise ValueError(f"{target} already exists; pass overwrite=True to replace it.")
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"{target} exists and is not a directory.")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        backup = None
        if os.path.exists(target):
            backup = tempfile.mkdtemp(
                prefix=f".{os.path.basename(target)}.", suffix=".old", dir=parent
            )
            os.rmdir(backup)
            os.rename(target, backup)
        os.rename(tmp, target)
        if backup:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target, mode="wb"):
    """Yield a file object whose contents replace ``target`` only when the block succeeds."""
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
