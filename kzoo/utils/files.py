"""Atomic file and directory writes, recovery after crashes, and sha256 of files.

Guarantees (see docs/reliability.md):

- :func:`atomic_file` writes a temporary file beside the target and renames it over the target
  (``os.replace``, atomic on POSIX): a reader sees the old file or the new one, never a part.
- :func:`atomic_directory` writes a temporary directory beside the target. A target that does
  not exist yet (or is an empty directory) is replaced by one ``rename``. An existing directory
  is swapped with the new one by one ``renameat2(RENAME_EXCHANGE)`` (Linux), so the name holds
  the old directory or the new one at every instant, then the old one is deleted. Where the
  exchange is not available (another OS, a filesystem without it) the old directory is renamed
  aside first; if the process dies between the two renames, :func:`recover_directory` (which
  every save and every load of a preset directory runs) renames it back.
- Temporaries are named ``.<target name>.kzoo-tmp.<pid>.<token>`` (being written) and
  ``.<target name>.kzoo-old.<pid>.<token>`` (the replaced directory, being deleted).
  :func:`recover_directory` deletes those whose process is gone, so no temporary outlives a
  crash for longer than the next save or load of the same target.
- New files and directories get the permissions ``open()`` and ``mkdir()`` give under the
  process's umask (0666 and 0777 without it), not ``mkstemp``'s private 0600/0700.
"""

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import secrets
import shutil
import sys
import time

TMP_TAG = "kzoo-tmp"
OLD_TAG = "kzoo-old"
# A temporary whose process cannot be checked (another machine sharing the filesystem, another
# PID namespace) is considered abandoned after this long.
STALE_AFTER_S = 24 * 3600

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def sha256_file(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def current_umask():
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_path(target, tag):
    parent, base = os.path.split(target)
    return os.path.join(parent, f".{base}.{tag}.{os.getpid()}.{secrets.token_hex(4)}")


def _temp_pattern(base):
    # Also matches what earlier kzoo versions left (tempfile.mkdtemp names: ".<base>.XXXXXXXX.tmp"
    # and ".old"), so those are cleaned up too.
    name = re.escape(base)
    return re.compile(
        rf"^\.{name}\.(?:(?P<tag>{TMP_TAG}|{OLD_TAG})\.(?P<pid>\d+)\.[0-9a-f]+"
        rf"|[a-z0-9_]{{8}}\.(?P<legacy>tmp|old))$"
    )


def process_gone(pid):
    """Whether no process ``pid`` runs (this process never counts as gone)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    except OSError:
        return True
    return False


def write_probe(directory):
    """Try to create (then remove) a file in ``directory``; returns the ``OSError`` that
    stopped it, or None when the directory can be written.

    A real attempt, not ``os.access``: for root, ``os.access`` says yes on read-only
    filesystems (``/sys``, a read-only mount), and it knows nothing of full disks or quotas on
    creating an entry. The probe's name (``.kzoo-write-probe.<pid>.<random>``, opened with
    ``O_EXCL``) cannot collide with an existing file, and the file is removed whatever happens.
    """
    probe = os.path.join(
        os.fspath(directory), f".kzoo-write-probe.{os.getpid()}.{secrets.token_hex(4)}"
    )
    try:
        fd = os.open(
            probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600
        )
    except OSError as e:
        return e
    try:
        os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)
    return None


def _remove_tree(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def recover_directory(target):
    """Finish or undo what an interrupted :func:`atomic_directory` (or :func:`atomic_file`) left
    beside ``target``.

    If ``target`` is missing but a replaced copy survives (a crash between the two renames of
    the fallback path), that copy is renamed back. Temporaries of processes that no longer run
    are deleted, as are replaced copies once ``target`` exists. Best effort: a directory that
    cannot be written (a read-only install) is left alone. Returns the list of removed paths.
    """
    target = os.path.abspath(os.fspath(target))
    parent, base = os.path.split(target)
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    pattern = _temp_pattern(base)
    found = []
    for entry in entries:
        m = pattern.match(entry)
        if m:
            found.append((entry, m))
    if not found:
        return []
    now = time.time()

    def mtime(entry):
        try:
            return os.lstat(os.path.join(parent, entry)).st_mtime
        except OSError:
            return now

    # Names in the old mkdtemp pattern are only touched when they hold what those kzoo versions
    # wrote there (a preset); anything else might be a user's.
    found = [(e, m) for e, m in found if not m["legacy"] or _legacy_preset(os.path.join(parent, e))]
    if not os.path.lexists(target):
        olds = [e for e, m in found if m["tag"] == OLD_TAG or m["legacy"] == "old"]
        if olds:
            newest = max(olds, key=mtime)
            with contextlib.suppress(OSError):
                os.rename(os.path.join(parent, newest), target)
                found = [(e, m) for e, m in found if e != newest]
    removed = []
    for entry, m in found:
        path = os.path.join(parent, entry)
        if m["tag"] == OLD_TAG or m["legacy"]:
            stale = os.path.lexists(target) or m["legacy"] == "tmp"
        else:
            stale = process_gone(int(m["pid"])) or now - mtime(entry) > STALE_AFTER_S
        if stale:
            _remove_tree(path)
            if not os.path.lexists(path):
                removed.append(path)
    return removed


_LEGACY_PRESET_FILES = {"config.json", "model.weights.h5", "metadata.json"}


def _legacy_preset(path):
    """Whether ``path`` is a directory holding nothing but (part of) a kzoo preset."""
    try:
        return (
            os.path.isdir(path)
            and not os.path.islink(path)
            and set(os.listdir(path)) <= _LEGACY_PRESET_FILES
        )
    except OSError:
        return False


def _exchange(a, b):
    """Atomically swap the directory entries ``a`` and ``b``; False where not supported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def _fsync_tree(root):
    """Flush every file, then every directory, of ``root`` to disk."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(folder)


def fsync_dir(path):
    """Flush a directory's entries (a rename into it) to disk; a no-op where that fails."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _is_empty_dir(path):
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False


@contextlib.contextmanager
def atomic_directory(target, overwrite=False):
    """Yield a temporary directory beside ``target`` that becomes ``target`` on success.

    Args:
        target: The directory to create or replace.
        overwrite: Whether an existing non-empty directory may be replaced. Deciding *whether*
            it may (is it ours? does it hold a user's files?) is the caller's job; this only
            guarantees that the replacement is atomic.

    On an exception (or an interrupt) the temporary directory is removed and ``target`` is left
    as it was. At every instant ``target`` holds the old directory or the new one (see the
    module docstring for the one fallback where a crash needs :func:`recover_directory`).
    """
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    recover_directory(target)
    if os.path.lexists(target) and not os.path.isdir(target):
        raise ValueError(f"{target} exists and is not a directory.")
    if os.path.isdir(target) and not overwrite and not _is_empty_dir(target):
        raise ValueError(f"{target} already exists and is not empty.")
    tmp = _temp_path(target, TMP_TAG)
    os.mkdir(tmp, 0o777)  # mkdir applies the umask, as for any directory the user creates
    try:
        yield tmp
        _fsync_tree(tmp)
        if os.path.isdir(target) and not _is_empty_dir(target):
            _replace_directory(tmp, target)
        else:
            # rename() replaces a missing or empty directory in one step.
            os.rename(tmp, target)
        fsync_dir(parent)
    except BaseException:
        _remove_tree(tmp)
        raise


def _replace_directory(new, target):
    old = _temp_path(target, OLD_TAG)
    if _exchange(new, target):
        # ``new`` now holds the old directory; mark it as replaced before deleting it, so that a
        # crash during the deletion leaves a name recover_directory removes.
        try:
            os.rename(new, old)
        except OSError:
            old = new
    else:
        os.rename(target, old)
        try:
            os.rename(new, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(old, target)
            raise
    fsync_dir(os.path.dirname(target))
    _remove_tree(old)


@contextlib.contextmanager
def atomic_file(target, mode="wb"):
    """Yield a file object whose contents replace ``target`` only when the block succeeds.

    The file is created with ``open()``'s permissions under the umask. Temporaries that killed
    writes of the same target left behind are deleted first.
    """
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    recover_directory(target)
    tmp = _temp_path(target, TMP_TAG)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
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
