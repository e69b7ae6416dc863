"""Saving and loading preset directories, and fetching them from names and URLs.

A preset directory holds ``config.json`` (the registered class and its config),
``model.weights.h5`` and ``metadata.json`` (kzoo version, backend saved from, the weights'
sha256), as in keras-hub.

What saving may replace (:func:`check_destination`): a missing path, an empty directory, or a
kzoo preset (a directory holding only the three preset files). A directory holding anything
else is a user's and is refused unless the caller passes ``force=True``. Replacing is atomic
(``kzoo.utils.files.atomic_directory``). Loading verifies the weights against the sha256 in
``metadata.json`` every time, and refuses a preset without one.
"""

import contextlib
import datetime
import json
import os
import re
import tarfile
import tempfile
import urllib.parse
import zipfile

import keras
import numpy as np

from kzoo.presets import hub, registry
from kzoo.presets.files import (  # noqa: F401  (public through preset_io too)
    CONFIG_FILE,
    METADATA_FILE,
    PRESET_FILES,
    WEIGHTS_FILE,
    forget_hashes,
    read_json,
    read_metadata,
    weights_sha256,
    weights_verified,
)
from kzoo.utils.download import download_verified, keras_home, normalize_sha256, remove
from kzoo.utils.files import atomic_directory, recover_directory, sha256_file
from kzoo.version import __version__

CACHE_SUBDIR = os.path.join("kzoo", "presets")
BUILTIN_DIR = os.path.join(os.path.dirname(__file__), "builtin")
# The manifest kzoo writes into an archive's extraction in the cache: every file's sha256.
MANIFEST_FILE = ".kzoo-manifest.json"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# How the destination checks name the options that change their outcome (the CLI passes its
# flags instead).
PYTHON_OPTIONS = {
    "overwrite": "pass overwrite=True",
    "force": "pass force=True",
}

# The class attribute kzoo.presets.PresetMixin sets on the models it serves.
PRESET_MODEL_MARK = "_kzoo_preset_model"


def is_preset_directory(path):
    """Whether ``path`` is a directory holding a kzoo preset and nothing else."""
    try:
        entries = os.listdir(path)
    except OSError:
        return False
    return CONFIG_FILE in entries and set(entries) <= set(PRESET_FILES)


def check_destination(path, overwrite=True, force=False, options=None):
    """Raise a ``ValueError`` unless a preset may be written to ``path``.

    - A missing path or an empty directory: always allowed.
    - A kzoo preset (``config.json`` and at most the other two preset files): replaced when
      ``overwrite`` is true, refused otherwise.
    - A directory holding anything else: refused, whatever ``overwrite`` says, unless ``force``
      is true (then it is replaced, and what it held is deleted).
    - Anything that is not a directory (a file, a FIFO): always refused.

    Args:
        path: The preset directory to write.
        overwrite: Whether an existing preset may be replaced.
        force: Whether a directory holding other files may be replaced.
        options: How the messages name the options (``{"overwrite": ..., "force": ...}``).
    """
    opts = {**PYTHON_OPTIONS, **(options or {})}
    path = os.fspath(path)
    if not os.path.lexists(path):
        _check_parent(path)
        return
    if not os.path.isdir(path):
        raise ValueError(
            f"{path} exists and is not a directory; a preset is a directory. Choose another path "
            "(kzoo does not replace files with presets)."
        )
    try:
        entries = sorted(os.listdir(path))
    except OSError as e:
        raise ValueError(f"Cannot read the destination {path}: {e.strerror}.") from None
    if not entries:
        return
    if is_preset_directory(path):
        if not overwrite and not force:
            raise ValueError(
                f"{path} already holds a kzoo preset; {opts['overwrite']} to replace it."
            )
        return
    if force:
        return
    foreign = [e for e in entries if e not in PRESET_FILES]
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    raise ValueError(
        f"{path} is not empty and is not a kzoo preset (it holds {shown}); kzoo does not delete "
        f"files it did not write. Write the preset to a new or empty directory, or "
        f"{opts['force']} to replace the directory and everything in it."
    )


def _check_parent(path):
    """The nearest existing ancestor of ``path`` must be a directory (mkdir -p can create it)."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"Cannot write {path}: {ancestor} is a file, not a directory.")


def save_preset(model, path, overwrite=True, extra_metadata=None, force=False):
    """Write ``model`` as a preset directory at ``path``, atomically.

    Args:
        model: A built kzoo model.
        path: The preset directory. See :func:`check_destination` for what may be there.
        overwrite: Whether an existing kzoo preset at ``path`` may be replaced.
        extra_metadata: Entries added to ``metadata.json``.
        force: Whether a directory holding files that are not a kzoo preset may be replaced
            (they are deleted). Never needed for a new path, an empty directory or a preset.

    A crash at any instant leaves ``path`` holding the old preset or the new one (see
    ``kzoo.utils.files.atomic_directory``).
    """
    for name, value in (("overwrite", overwrite), ("force", force)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False; got {value!r}.")
    if force and not overwrite:
        raise ValueError("force=True replaces whatever is at the path; it needs overwrite=True.")

    if not is_preset_model(type(model)):
        raise ValueError(
            f"save_to_preset needs a kzoo model; got {type(model).__name__}, which kzoo does "
            "not register as a preset model."
        )
    if not model.built:
        raise ValueError("The model must be built (called on data once) before it is saved.")
    path = os.fspath(path)
    if os.path.islink(path):
        # Replace the directory the link points to, not the link.
        path = os.path.realpath(path)
    recover_directory(path)
    check_destination(path, overwrite=overwrite, force=force)
    with atomic_directory(path, overwrite=True) as tmp:
        config = keras.saving.serialize_keras_object(model)
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
        weights = os.path.join(tmp, WEIGHTS_FILE)
        model.save_weights(weights)
        metadata = {
            "kzoo_version": __version__,
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
            "class_name": config.get("registered_name") or config.get("class_name"),
            "weights_sha256": sha256_file(weights),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        metadata.update(extra_metadata or {})
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2)
    return os.path.abspath(path)


def load_preset(source, expected_class=None, sha256=None, load_weights=True, **config_overrides):
    """Build the model a preset describes and load its weights.

    Args:
        source: A registered preset name, a preset directory, an http(s)/file URL of an
            archive holding one, or a Hugging Face Hub handle ``hf://owner/repo[@revision]``
            (see ``kzoo.presets.hub``).
        expected_class: When given, the preset must build an instance of this class.
        sha256: The archive's sha256, for URLs that are not registered presets.
        load_weights: ``False`` builds the architecture only.
        **config_overrides: Config entries to replace (e.g. ``dropout``).
    """
    try:
        return _load_preset(source, expected_class, sha256, load_weights, config_overrides)
    finally:
        forget_hashes()


def _load_preset(source, expected_class, sha256, load_weights, config_overrides):
    preset_dir = resolve_preset(source, sha256=sha256)
    config = _read_config(preset_dir)
    cls = _registered_class(config)
    if expected_class is not None and not issubclass(cls, expected_class):
        raise ValueError(
            f"Preset {source!r} holds a {cls.__name__}, not a {expected_class.__name__}; "
            f"load it with {cls.__name__}.from_preset."
        )
    if config_overrides:
        config = dict(config)
        config["config"] = {**config.get("config", {}), **config_overrides}
    build_config = None
    if load_weights and config.get("build_config"):
        config = dict(config)
        build_config = config.pop("build_config")
    model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    if build_config is not None and not model.built:
        # The weights are about to be overwritten: skip drawing random initial values.
        with placeholder_initializers(model):
            model.build_from_config(build_config)
        model.built = True  # as keras' own deserialization does after build_from_config
    if load_weights:
        _load_weights(model, preset_dir, config_overrides)
    return model


_INITIALIZER_ATTRS = (
    "kernel_initializer",
    "bias_initializer",
    "embeddings_initializer",
    "gamma_initializer",
    "beta_initializer",
    "recurrent_initializer",
    "depthwise_initializer",
    "pointwise_initializer",
)


def _zeros(shape, dtype=None):
    return np.zeros(shape, dtype=dtype or "float32")


@contextlib.contextmanager
def placeholder_initializers(model):
    """Build variables from numpy zeros instead of their initializers, for weights loaded next.

    Under JAX every random initializer compiles one XLA program per variable shape: building a
    ResNet-50 DETR that way took ~24 s on a busy 2-core CPU, all of it for values that loading
    overwrites. The layers' initializers are restored afterwards, so configs are unchanged.
    """
    saved = []
    for layer in model._flatten_layers(include_self=True):
        for attr in _INITIALIZER_ATTRS:
            if getattr(layer, attr, None) is not None:
                saved.append((layer, attr, getattr(layer, attr)))
                setattr(layer, attr, _zeros)
    try:
        yield
    finally:
        for layer, attr, value in saved:
            setattr(layer, attr, value)


def _read_config(preset_dir):
    config = read_json(preset_dir, CONFIG_FILE, "a kzoo preset")
    path = os.path.join(preset_dir, CONFIG_FILE)
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"{path} does not describe a model (no 'class_name').")
    return config


def is_preset_model(cls):
    """Whether ``cls`` is a kzoo preset model (a subclass of ``kzoo.presets.PresetMixin``, which
    marks its subclasses so that this module need not import it)."""
    return isinstance(cls, type) and getattr(cls, PRESET_MODEL_MARK, False) is True


def _registered_class(config):
    name = config.get("registered_name") or config.get("class_name")
    cls = keras.saving.get_registered_object(name)
    if cls is None or not is_preset_model(cls):
        raise ValueError(
            f"The preset's config names class {name!r}, which kzoo did not register as a "
            "preset model."
        )
    return cls


def _load_weights(model, preset_dir, config_overrides=None):
    weights = os.path.join(preset_dir, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise ValueError(f"{preset_dir} is not a complete preset: it has no {WEIGHTS_FILE}.")
    if not os.path.isfile(os.path.join(preset_dir, METADATA_FILE)):
        raise ValueError(
            f"{preset_dir} is not a complete kzoo preset: it has no {METADATA_FILE}, which records "
            "the sha256 its weights are checked against; kzoo does not load unverified weights. "
            "Rebuild the preset with save_to_preset."
        )
    expected = read_metadata(preset_dir).get("weights_sha256")
    if not isinstance(expected, str) or not SHA256_RE.match(expected.lower()):
        raise ValueError(
            f"{os.path.join(preset_dir, METADATA_FILE)} has no valid weights_sha256 (64 hex "
            "digits); kzoo does not load unverified weights. Rebuild the preset with "
            "save_to_preset."
        )
    if weights_sha256(weights) != expected.lower():
        raise ValueError(
            f"{weights} is corrupt or truncated: its sha256 does not match the "
            f"{expected[:12]}... recorded in {METADATA_FILE}."
        )
    try:
        model.load_weights(weights)
    except (OSError, KeyError) as e:
        raise ValueError(f"Could not read weights from {weights}: {e}") from None
    except ValueError as e:
        raise ValueError(_mismatch_message(model, preset_dir, e, config_overrides)) from None


# sha256 of files hashed since resolve_preset was last called, so that a cached preset verified
# by resolve_preset is not hashed a second time by _load_weights right after. Cleared by every
# resolve_preset and at the end of every load: a file changed between two loads is hashed again.
def _mismatch_message(model, preset_dir, error, config_overrides):
    """One paragraph for keras's multi-line "objects could not be loaded" list."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    hint = ""
    if config_overrides:
        changed = ", ".join(f"{k}={v!r}" for k, v in sorted(config_overrides.items()))
        hint = (
            f" The overrides {changed} change the architecture the weights were saved for; "
            "drop them, or pass load_weights=False to build that architecture with fresh weights."
        )
    return (
        f"The weights in {preset_dir} do not fit the {type(model).__name__} its "
        f"{CONFIG_FILE} describes: {first}{hint}"
    )


def resolve_preset(source, sha256=None):
    """Turn a preset name, directory, URL or ``hf://`` handle into a local preset directory."""
    forget_hashes()
    source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise ValueError(f"A preset is a name, a directory or a URL; got {source!r}.")
    if source.startswith(hub.SCHEME):
        if sha256 is not None:
            raise ValueError(
                "sha256 applies to archive URLs; an hf:// handle is checked against the sha256 "
                "the Hub lists, and pinned with @<commit>."
            )
        return hub.resolve_hub_preset(source)
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https", "file"):
        return _fetch_archive(source, sha256)
    # Put back a preset an interrupted save left renamed aside, and drop dead temporaries.
    recover_directory(source)
    if os.path.isdir(source):
        return source
    if os.sep in source or source.startswith(".") or os.path.splitext(source)[1]:
        raise ValueError(f"Preset directory {source!r} does not exist.")
    info = registry.get_preset(source)
    return _resolve_registered(info)


def _resolve_registered(info):
    loc = info.location
    if loc.startswith("builtin:"):
        path = os.path.join(BUILTIN_DIR, loc[len("builtin:") :])
        if not os.path.isdir(path):
            raise ValueError(f"Preset {info.name!r} should ship in the package at {path}.")
        return path
    if info.converter:
        return _fetch_and_convert(info)
    if urllib.parse.urlparse(loc).scheme in ("http", "https", "file"):
        return _fetch_archive(loc, info.sha256, name=info.name)
    return loc


def _cache_root():
    return os.path.join(keras_home(), CACHE_SUBDIR)


def _download(url, sha256, fname):
    return download_verified(url, sha256, CACHE_SUBDIR, fname=fname)


def _fetch_archive(url, sha256, name=None):
    if sha256 is None:
        fragment = urllib.parse.urlparse(url).fragment
        if fragment.startswith("sha256="):
            sha256 = fragment[len("sha256=") :]
    url = urllib.parse.urldefrag(url).url
    base = os.path.basename(urllib.parse.urlparse(url).path) or "preset"
    if not sha256:
        raise ValueError(
            f"Refusing to download {url} without a sha256 to check it against; pass sha256=... "
            "or add #sha256=<hex> to the URL."
        )
    sha256 = normalize_sha256(sha256)
    target = os.path.join(_cache_root(), f"{name or _stem(base)}-{sha256[:12]}")
    recover_directory(target)
    if os.path.isdir(target):
        if _manifest_matches(target, sha256):
            return _preset_root(target)
        # Altered, damaged or written by an older kzoo without a manifest: fetch it again.
        remove(target)
    archive = _download(url, sha256, f"{sha256[:12]}-{base}")
    try:
        with atomic_directory(target, overwrite=True) as tmp:
            _extract(archive, tmp)
            _write_manifest(tmp, sha256)
    finally:
        remove(archive)
    return _preset_root(target)


def _walk_files(root):
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if rel != MANIFEST_FILE:
                yield rel.replace(os.sep, "/"), path


def _write_manifest(root, archive_sha256):
    """Record every extracted file's sha256, so later uses of the cache can be verified."""
    files = {rel: sha256_file(path) for rel, path in _walk_files(root)}
    with open(os.path.join(root, MANIFEST_FILE), "w") as f:
        json.dump({"archive_sha256": archive_sha256, "files": files}, f, indent=2)


def _manifest_matches(root, archive_sha256):
    """Whether the cached extraction at ``root`` is exactly what its manifest recorded."""
    try:
        with open(os.path.join(root, MANIFEST_FILE)) as f:
            manifest = json.load(f)
        recorded = manifest["files"]
        if manifest["archive_sha256"] != archive_sha256 or not isinstance(recorded, dict):
            return False
        found = dict(_walk_files(root))
        if set(found) != set(recorded):
            return False
        return all(weights_sha256(found[rel]) == recorded[rel] for rel in recorded)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _fetch_and_convert(info):
    import importlib

    sha256 = normalize_sha256(info.sha256) if info.sha256 else None
    target = os.path.join(_cache_root(), f"{info.name}-{(sha256 or 'local')[:12]}")
    recover_directory(target)
    if os.path.lexists(target):
        if weights_verified(target):
            return target
        # A damaged or altered conversion: convert again rather than fail on every load.
        remove(target)
    parsed = urllib.parse.urlparse(info.location)
    if parsed.scheme in ("http", "https", "file"):
        base = os.path.basename(parsed.path) or "checkpoint"
        checkpoint = _download(info.location, sha256, f"{sha256[:12]}-{base}")
    else:
        checkpoint = info.location
    module, _, attr = info.converter.partition(":")
    convert = getattr(importlib.import_module(module), attr)
    convert(checkpoint, target)
    return target


def _stem(name):
    for ext in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _extract(archive, dest):
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                _check_member(member, dest)
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive.")
    root = _preset_root(dest)
    if not os.path.isfile(os.path.join(root, CONFIG_FILE)):
        raise ValueError("The downloaded archive holds no kzoo preset (no config.json).")


def _check_member(member, dest):
    path = os.path.realpath(os.path.join(dest, member))
    if not path.startswith(os.path.realpath(dest) + os.sep):
        raise ValueError(f"Archive member {member!r} would be written outside the preset.")


def _preset_root(path):
    """The directory holding config.json: ``path`` itself or its single subdirectory."""
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return path
    entries = [e for e in os.listdir(path) if not e.startswith(".")]
    if len(entries) == 1 and os.path.isdir(os.path.join(path, entries[0])):
        return os.path.join(path, entries[0])
    return path


def make_archive(preset_dir, archive_path):
    """Pack a preset directory as a ``.tar.gz`` (for publishing); returns its sha256."""
    from kzoo.utils.files import atomic_file

    with atomic_file(archive_path) as f:
        with tempfile.TemporaryDirectory() as _, tarfile.open(fileobj=f, mode="w:gz") as t:
            t.add(preset_dir, arcname=os.path.basename(os.path.normpath(preset_dir)))
    return sha256_file(archive_path)
