"""Downloads into the keras cache through ``keras.utils.get_file``, verified by sha256."""

import os
import re
import shutil
import urllib.parse

import keras

from kzoo.utils.files import sha256_file


def keras_home():
    """The keras cache root: ``$KERAS_HOME`` now, else the directory keras chose at import.

    keras reads KERAS_HOME once, at import; reading it here too lets a process point the cache
    elsewhere later (tests, a CLI option) while defaulting to keras's own directory.
    """
    if os.environ.get("KERAS_HOME"):
        return os.path.expanduser(os.environ["KERAS_HOME"])
    from keras.src.backend import config as keras_config

    return os.path.expanduser(keras_config.keras_home())


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def normalize_sha256(sha256):
    """``sha256`` as 64 lower-case hex digits (upper case is accepted), else a ``ValueError``."""
    value = sha256.strip().lower() if isinstance(sha256, str) else sha256
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValueError(f"sha256 must be 64 hexadecimal digits; got {sha256!r}.")
    return value


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def download_verified(url, sha256, cache_subdir, fname=None):
    """Download ``url`` into ``$KERAS_HOME/<cache_subdir>`` and check its sha256.

    A file that fails the check, or a download that breaks off, is deleted before the
    ``ValueError`` is raised, so nothing unverified stays in the cache. A cached file is checked
    again on every call (it may have been altered since).
    """
    if not sha256:
        raise ValueError(
            f"Refusing to download {url} without a sha256 to check it against; pass sha256=..."
        )
    # Checked before anything is downloaded; keras compares hex digests as strings, so an
    # upper-case digest would otherwise fail and the good download be deleted.
    sha256 = normalize_sha256(sha256)
    base = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    fname = fname or f"{sha256[:12]}-{base}"
    target = os.path.join(keras_home(), cache_subdir, fname)
    try:
        path = keras.utils.get_file(
            fname=fname,
            origin=url,
            file_hash=sha256,
            hash_algorithm="sha256",
            cache_dir=keras_home(),
            cache_subdir=cache_subdir,
        )
    except ValueError:
        remove(target)
        raise ValueError(
            f"The file downloaded from {url} does not match sha256 {sha256}; it was deleted."
        ) from None
    except Exception as e:  # get_file wraps URL errors in a bare Exception
        remove(target)
        raise ValueError(f"Could not download {url}: {e}") from None
    if sha256_file(path) != sha256:
        remove(path)
        raise ValueError(f"The cached copy of {url} does not match sha256 {sha256}; deleted it.")
    return path
