"""What kzoo keeps in its cache (``$KERAS_HOME/kzoo``): for ``kzoo list --cached``."""

import contextlib
import dataclasses
import os

from kzoo.presets import hub
from kzoo.utils.download import keras_home

PRESETS_SUBDIR = os.path.join("kzoo", "presets")


@dataclasses.dataclass(frozen=True)
class CachedPreset:
    """One cache entry.

    Args:
        source: ``hf://owner/repo`` for a Hub repo; the preset name (or archive stem) and the
            first 12 digits of its sha256 for a registered preset's conversion or an archive.
        version: The commit of a Hub entry; ``""`` otherwise.
        refs: The revisions recorded as resolving to that commit (Hub entries).
        size: Bytes on disk.
        path: The entry.
    """

    source: str
    version: str
    refs: tuple
    size: int
    path: str


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(folder, name))
    return total


def cached_presets():
    """Every entry: Hub presets first (by repo, then commit), then the other cached presets
    and downloaded checkpoints. Temporaries of writes in progress are left out."""
    entries = [
        CachedPreset(e.handle, e.commit, e.refs, e.size, e.path) for e in hub.cached_hub_presets()
    ]
    root = os.path.join(keras_home(), PRESETS_SUBDIR)
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(root)):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            entries.append(CachedPreset(name, "", (), _size(path), path))
    return entries


def format_size(size):
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
