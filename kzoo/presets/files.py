"""The files of a kzoo preset directory, its metadata, and whether its weights are the ones it names.

Below both ``preset_io`` (saving, loading, resolving) and ``hub`` (the Hugging Face Hub cache),
which each check a preset directory before trusting it.
"""

import json
import os

from kzoo.utils.files import sha256_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)


def read_json(preset_dir, name, missing):
    """A preset's JSON file ``name``; a ``ValueError`` naming the file if absent (``missing``
    says what the folder then is not) or unreadable."""
    path = os.path.join(os.fspath(preset_dir), name)
    if not os.path.isfile(path):
        raise ValueError(f"{preset_dir} is not {missing}: it has no {name}.")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    except OSError as e:
        raise ValueError(f"Cannot read {path}: {e.strerror}.") from None


def read_metadata(preset_dir):
    """``metadata.json`` of a preset as a dict; a ``ValueError`` naming the file if unreadable."""
    metadata = read_json(preset_dir, METADATA_FILE, "a complete kzoo preset")
    if not isinstance(metadata, dict):
        path = os.path.join(os.fspath(preset_dir), METADATA_FILE)
        raise ValueError(
            f"{path} must hold a JSON object (the preset's metadata); found "
            f"{type(metadata).__name__}."
        )
    return metadata


_HASHED = {}


def weights_sha256(path):
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(path)
    return _HASHED[key]


def weights_verified(preset_dir):
    """Whether ``preset_dir`` is a preset whose weights match the sha256 in its metadata."""
    try:
        expected = read_metadata(preset_dir).get("weights_sha256")
        weights = os.path.join(preset_dir, WEIGHTS_FILE)
        return (
            os.path.isfile(os.path.join(preset_dir, CONFIG_FILE))
            and isinstance(expected, str)
            and weights_sha256(weights) == expected.lower()
        )
    except (OSError, ValueError):
        return False


def forget_hashes():
    """Drop the remembered sha256 of weights files (kept only within one load)."""
    _HASHED.clear()
