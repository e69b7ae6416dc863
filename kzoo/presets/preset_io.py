"""Saving and loading preset directories, and fetching them from names and URLs.

A preset directory holds ``config.json`` (the registered class and its config),
``model.weights.h5`` and ``metadata.json`` (kzoo version, backend saved from, the weights'
sha256), as in keras-hub.
"""

import contextlib
import datetime
import json
import os
import tarfile
import tempfile
import urllib.parse
import zipfile

import keras
import numpy as np

from kzoo.presets import registry
from kzoo.utils.download import download_verified, keras_home, remove
from kzoo.utils.files import atomic_directory, sha256_file
from kzoo.version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
CACHE_SUBDIR = os.path.join("kzoo", "presets")
BUILTIN_DIR = os.path.join(os.path.dirname(__file__), "builtin")


def save_preset(model, path, overwrite=True, extra_metadata=None):
    """Write ``model`` as a preset directory at ``path``, atomically."""
    from kzoo.presets.mixin import PresetMixin

    if not isinstance(model, PresetMixin):
        raise ValueError(
            f"save_to_preset needs a kzoo model; got {type(model).__name__}, which kzoo does "
            "not register as a preset model."
        )
    if not model.built:
        raise ValueError("The model must be built (called on data once) before it is saved.")
    with atomic_directory(path, overwrite=overwrite) as tmp:
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


def read_metadata(preset_dir):
    with open(os.path.join(preset_dir, METADATA_FILE)) as f:
        return json.load(f)


def load_preset(source, expected_class=None, sha256=None, load_weights=True, **config_overrides):
    """Build the model a preset describes and load its weights.

    Args:
        source: A registered preset name, a preset directory, or an http(s)/file URL of an
            archive holding one.
        expected_class: When given, the preset must build an instance of this class.
        sha256: The archive's sha256, for URLs that are not registered presets.
        load_weights: ``False`` builds the architecture only.
        **config_overrides: Config entries to replace (e.g. ``dropout``).
    """
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
        _load_weights(model, preset_dir)
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
    path = os.path.join(preset_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{preset_dir} is not a kzoo preset: it has no {CONFIG_FILE}.")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"{path} does not describe a model (no 'class_name').")
    return config


def _registered_class(config):
    from kzoo.presets.mixin import PresetMixin

    name = config.get("registered_name") or config.get("class_name")
    cls = keras.saving.get_registered_object(name)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, PresetMixin)):
        raise ValueError(
            f"The preset's config names class {name!r}, which kzoo did not register as a "
            "preset model."
        )
    return cls


def _load_weights(model, preset_dir):
    weights = os.path.join(preset_dir, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise ValueError(f"{preset_dir} is not a complete preset: it has no {WEIGHTS_FILE}.")
    meta_path = os.path.join(preset_dir, METADATA_FILE)
    if os.path.isfile(meta_path):
        expected = read_metadata(preset_dir).get("weights_sha256")
        if expected and sha256_file(weights) != expected:
            raise ValueError(
                f"{weights} is corrupt or truncated: its sha256 does not match the "
                f"{expected[:12]}... recorded in {METADATA_FILE}."
            )
    try:
        model.load_weights(weights)
    except (OSError, KeyError) as e:
        raise ValueError(f"Could not read weights from {weights}: {e}") from None


def resolve_preset(source, sha256=None):
    """Turn a preset name, directory or URL into a local preset directory."""
    source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise ValueError(f"A preset is a name, a directory or a URL; got {source!r}.")
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https", "file"):
        return _fetch_archive(source, sha256)
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
    target = os.path.join(_cache_root(), f"{name or _stem(base)}-{sha256[:12]}")
    if os.path.isdir(target) and os.path.isfile(os.path.join(_preset_root(target), CONFIG_FILE)):
        return _preset_root(target)
    archive = _download(url, sha256, f"{sha256[:12]}-{base}")
    try:
        with atomic_directory(target) as tmp:
            _extract(archive, tmp)
    finally:
        remove(archive)
    return _preset_root(target)


def _fetch_and_convert(info):
    import importlib

    target = os.path.join(_cache_root(), f"{info.name}-{(info.sha256 or 'local')[:12]}")
    if os.path.isfile(os.path.join(target, CONFIG_FILE)):
        return target
    parsed = urllib.parse.urlparse(info.location)
    if parsed.scheme in ("http", "https", "file"):
        base = os.path.basename(parsed.path) or "checkpoint"
        checkpoint = _download(info.location, info.sha256, f"{info.sha256[:12]}-{base}")
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
