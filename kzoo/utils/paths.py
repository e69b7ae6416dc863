"""Checks of the paths given on the command line, run before any work starts.

Each raises a ``ValueError`` whose message names the option, so a mistake costs one line and no
wasted inference or training: an output that cannot be written is reported before the model
runs, not after.
"""

import os
import stat

from kzoo.utils.files import write_probe


def describe(path):
    """What kind of thing is at ``path``, for messages ("a directory", "a FIFO", ...)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "missing"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_input_file(path, option, allow_directory=False):
    """``path`` must name an existing regular file (or a directory when allowed)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        if os.path.islink(path):
            raise ValueError(f"{option} {path!r} is a broken symbolic link.")
        raise ValueError(f"{option} {path!r} does not exist.")
    kind = describe(path)
    if kind == "a regular file" or (allow_directory and kind == "a directory"):
        if not os.access(path, os.R_OK):
            raise ValueError(f"{option} {path!r} cannot be read (permission denied).")
        return path
    expected = "a file or a directory" if allow_directory else "a file"
    raise ValueError(f"{option} {path!r} is {kind}, not {expected}.")


def check_output_location(path, option):
    """``path`` can be created or replaced: its parent is (or can become) a writable directory.

    Refuses a path under a regular file (``out.png/x``), a parent the user cannot write (a
    read-only directory or filesystem), and an existing file that is read-only (its mode says
    the user does not want it changed, and renaming over it would ignore that). Whether the
    directory can be written is tried (a file created and removed there,
    ``kzoo.utils.files.write_probe``), not asked of ``os.access``, which answers yes to root on
    filesystems that refuse new files (``/sys``). An existing directory at ``path`` (a run or
    output folder) must be writable too: tried the same way when another filesystem is mounted
    there, else asked of ``os.access`` (so no probe file appears in the user's folder).
    """
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{option} is empty.")
    full = os.path.abspath(path)
    if os.path.lexists(full) and os.path.isfile(full):
        if not os.stat(full).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            raise ValueError(f"{option} {path!r} is a read-only file; kzoo will not replace it.")
    ancestor = os.path.dirname(full)
    while not os.path.exists(ancestor):
        if os.path.lexists(ancestor):
            raise ValueError(f"{option} {path!r}: {ancestor} is a broken symbolic link.")
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(
            f"{option} {path!r} cannot be created: {ancestor} is {describe(ancestor)}, not a "
            "directory."
        )
    error = write_probe(ancestor)
    if error is None and os.path.isdir(full):
        # An existing directory (a run or output folder) is written into as well. On the
        # parent's filesystem its own permission bits decide, which os.access reads right.
        if os.stat(full).st_dev != os.stat(ancestor).st_dev:
            ancestor, error = full, write_probe(full)
        elif not os.access(full, os.W_OK | os.X_OK):
            ancestor, error = full, PermissionError(13, "Permission denied")
    if error is not None:
        raise ValueError(
            f"{option} {path!r} cannot be written: the directory {ancestor} is not writable "
            f"({error.strerror or error}: permissions or a read-only filesystem)."
        )
    return path


def check_output_file(
    path, option, extensions=None, not_same_as=(), not_inside=(), overwrite=False
):
    """An output file: a writable location, not a directory, not one of the inputs.

    Args:
        path: The file to write.
        option: The option's name for messages (``"--out"``).
        extensions: Allowed lower-case extensions with their dot (``{".png": "PNG"}`` or a
            tuple), or None.
        not_same_as: ``(option, path)`` pairs of input files that must not be overwritten.
        not_inside: ``(option, directory)`` pairs of input folders (a preset, a dataset) that
            the file must not be written into.
        overwrite: Whether an existing file may be replaced; without it an existing file is
            refused, naming the ``--overwrite`` flag.
    """
    path = os.fspath(path)
    check_output_location(path, option)
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a directory; name the file to write.")
    if os.path.exists(path) and describe(path) != "a regular file":
        raise ValueError(f"{option} {path!r} is {describe(path)}, not a regular file.")
    for other_option, other in not_same_as:
        if other is not None and os.path.exists(other) and os.path.exists(path):
            if os.path.samefile(path, other):
                raise ValueError(
                    f"{option} {path!r} is the {other_option} file; kzoo will not overwrite its "
                    f"input. Choose another {option}."
                )
    real = os.path.realpath(path)
    for other_option, folder in not_inside:
        if folder is None:
            continue
        inside = os.path.realpath(folder).rstrip(os.sep) + os.sep
        if real.startswith(inside):
            raise ValueError(
                f"{option} {path!r} is inside the {other_option} folder {folder!r}; kzoo does "
                f"not write into its inputs. Choose another {option}."
            )
    if extensions is not None:
        ext = os.path.splitext(path)[1].lower()
        if ext not in extensions:
            common = [
                e for e in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif") if e in extensions
            ]
            # A long list (every format PIL writes) is shown by its common members.
            listed = list(extensions) if len(extensions) <= 6 else common or sorted(extensions)[:6]
            more = ", ..." if len(extensions) > len(listed) else ""
            kind = "an image extension" if len(extensions) > 6 else "one of"
            raise ValueError(
                f"{option} {path!r} must end in {kind} ({', '.join(listed)}{more}): the "
                f"extension chooses the format written; got {ext or 'no extension'}."
            )
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{option} {path!r} already exists; pass --overwrite to replace it.")
    return path
