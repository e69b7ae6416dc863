"""Presets on the Hugging Face Hub: ``hf://<owner>/<repo>[@<revision>]``.

A handle names a Hub model repository and, after ``@``, a branch, tag or commit (``main`` when
none is given). Resolving one (:func:`resolve_hub_preset`) gives a local kzoo preset directory:

1. The revision is resolved to a commit (``HfApi.model_info``), which also lists the repo's
   files and their sha256.
2. kzoo's cache, ``$KERAS_HOME/kzoo/hub/<owner>--<repo>/<commit>/``, is used when it holds that
   commit's preset with verified weights: nothing is downloaded or converted again.
3. Otherwise ``config.json`` is downloaded first and decides what the repo is: a kzoo preset
   (``config.json`` naming a kzoo class, with ``model.weights.h5`` and ``metadata.json``), whose
   files are linked (or copied) into the cache; or a repo in another library's layout, whose
   ``model_type`` names a converter a model package registered (:func:`register_hub_converter`;
   ``kzoo.models.detr`` registers ``detr``). The converter checks the config first, so a repo
   that is not a model kzoo has, or has options kzoo lacks, fails with one ``ValueError``
   naming the repo and the field before any weights are downloaded; then the weights it asks
   for are downloaded, checked against the sha256 the Hub lists, and converted into the cache
   entry, written atomically (an interrupted download or conversion leaves no entry).
4. The revision's commit is recorded (``refs/<revision>``), so the next load of the same handle
   works with the network off (or ``HF_HUB_OFFLINE=1``): the Hub is asked first, and when it
   cannot be reached the recorded commit's cached preset is used. A revision whose remote commit
   changed is picked up on the next online load (a new entry; the old one stays until deleted).

Downloads go through ``huggingface_hub`` (``pip install kzoo[hub]``): its cache, progress bars,
``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` apply.
huggingface_hub reads most of those once, when it is imported; kzoo reads ``HF_ENDPOINT``,
``HF_HUB_CACHE``/``HF_HOME`` and ``HF_HUB_OFFLINE`` again at every resolve and passes them on,
so a program may set them after importing it.

This module imports no model: converters are named by ``"module:function"`` strings.
"""

import contextlib
import dataclasses
import importlib
import json
import os
import re
import shutil
import sys
import urllib.parse

from kzoo.presets.files import weights_verified
from kzoo.utils.download import keras_home, remove
from kzoo.utils.files import atomic_directory, atomic_file, recover_directory, sha256_file

SCHEME = "hf://"
CACHE_SUBDIR = os.path.join("kzoo", "hub")
REFS_DIR = "refs"
DEFAULT_REVISION = "main"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# The Hub's repo names: letters, digits, "-", "_", "."; no "--" or ".." (the cache layout uses
# "--" as a separator, as huggingface_hub's does).
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
KZOO_FILES = ("config.json", "model.weights.h5", "metadata.json")


@dataclasses.dataclass(frozen=True)
class HubHandle:
    """A parsed ``hf://owner/repo[@revision]``."""

    repo_id: str
    revision: str | None = None

    @property
    def ref(self):
        return self.revision or DEFAULT_REVISION

    def __str__(self):
        return f"{SCHEME}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def is_hub_handle(source):
    return isinstance(source, str) and source.startswith(SCHEME)


def parse_handle(source):
    """``hf://owner/repo[@revision]`` as a :class:`HubHandle`; a ``ValueError`` saying what a
    handle looks like otherwise."""
    usage = (
        f"expected hf://<owner>/<repo> or hf://<owner>/<repo>@<revision> (a branch, tag or "
        f"commit); got {source!r}."
    )
    if not is_hub_handle(source):
        raise ValueError(f"Not a Hugging Face Hub handle: {usage}")
    rest = source[len(SCHEME) :]
    repo_id, at, revision = rest.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_NAME_RE.match(p) and ".." not in p for p in parts):
        raise ValueError(f"Invalid Hub repository {repo_id!r}: {usage}")
    if "--" in repo_id:
        raise ValueError(f"Invalid Hub repository {repo_id!r} ('--' is not allowed): {usage}")
    if at and (not revision or re.search(r"\s", revision) or ".." in revision.split("/")):
        raise ValueError(f"Invalid revision {revision!r} in {source!r}: {usage}")
    return HubHandle(repo_id, revision or None)


# ----------------------------------------------------------------------------- converters


@dataclasses.dataclass(frozen=True)
class HubConverter:
    """How repos of one ``model_type`` become kzoo presets.

    Args:
        model_type: The ``model_type`` of the repo's ``config.json`` (``"detr"``).
        check: ``"module:function"``, ``check(config, handle, files) -> [weight files]``: raises
            a ``ValueError`` naming ``handle`` and the field when the config is not a model kzoo
            can build; returns the files to download (names in the repo), before any is.
        convert: ``"module:function"``, ``convert(files, config, target, metadata)``: writes the
            preset directory ``target`` (atomically) from ``files`` (``{name in repo: local
            path}``, ``config.json`` included), adding ``metadata`` to its ``metadata.json``.
    """

    model_type: str
    check: str
    convert: str


_CONVERTERS: dict[str, HubConverter] = {}


def register_hub_converter(converter):
    if not isinstance(converter, HubConverter):
        raise ValueError(
            f"register_hub_converter expects a HubConverter, got {type(converter).__name__}."
        )
    _CONVERTERS[converter.model_type] = converter
    return converter


def hub_converters():
    return dict(_CONVERTERS)


def _load_function(spec):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


# ----------------------------------------------------------------------------- settings


def _is_true(value):
    return isinstance(value, str) and value.strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclasses.dataclass(frozen=True)
class _Settings:
    endpoint: str | None
    cache_dir: str | None
    offline: bool


def _settings(hf):
    env = os.environ
    endpoint = env.get("HF_ENDPOINT", "").rstrip("/") or None
    cache_dir = env.get("HF_HUB_CACHE") or (
        os.path.join(env["HF_HOME"], "hub") if env.get("HF_HOME") else None
    )
    offline = _is_true(env.get("HF_HUB_OFFLINE")) or _is_true(env.get("TRANSFORMERS_OFFLINE"))
    offline = offline or bool(getattr(hf.constants, "HF_HUB_OFFLINE", False))
    return _Settings(
        endpoint=endpoint,
        cache_dir=os.path.expanduser(os.path.expandvars(cache_dir)) if cache_dir else None,
        offline=offline,
    )


def _huggingface_hub():
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401
        import huggingface_hub.errors  # noqa: F401
    except ImportError:
        raise ValueError(
            "Loading hf:// presets needs the huggingface_hub package: pip install "
            "huggingface_hub (or kzoo[hub])."
        ) from None
    return huggingface_hub


def _transport_errors(hf):
    """The exceptions that mean "the Hub cannot be reached" for the installed huggingface_hub
    (its HTTP library is httpx2, httpx or requests depending on the version)."""
    errors = [hf.errors.OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for name, attr in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, attr):
            errors.append(getattr(module, attr))
    requests = sys.modules.get("requests")
    if requests is not None:
        errors += [requests.ConnectionError, requests.Timeout]
    return tuple(errors)


# ----------------------------------------------------------------------------- the cache


def cache_root():
    """``$KERAS_HOME/kzoo/hub``: one folder per repo, one preset per commit."""
    return os.path.join(keras_home(), CACHE_SUBDIR)


def repo_cache(repo_id):
    return os.path.join(cache_root(), repo_id.replace("/", "--"))


def _ref_path(repo_dir, ref):
    return os.path.join(repo_dir, REFS_DIR, urllib.parse.quote(ref, safe=""))


def _read_ref(repo_dir, ref):
    try:
        with open(_ref_path(repo_dir, ref)) as f:
            commit = f.read().strip()
    except OSError:
        return None
    return commit if COMMIT_RE.match(commit) else None


def _write_ref(repo_dir, ref, commit):
    if ref == commit:
        return
    path = _ref_path(repo_dir, ref)
    if _read_ref(repo_dir, ref) == commit:
        return
    with atomic_file(path, mode="w") as f:
        f.write(commit)


def _verified(entry):
    return os.path.isdir(entry) and weights_verified(entry)


def _cached_entry(handle, reason):
    """The cached preset of ``handle``'s last resolved commit, or a ``ValueError`` saying why
    the Hub was not asked (``reason``) and that nothing is cached."""
    repo_dir = repo_cache(handle.repo_id)
    commit = handle.ref if COMMIT_RE.match(handle.ref) else _read_ref(repo_dir, handle.ref)
    if commit is not None:
        entry = os.path.join(repo_dir, commit)
        recover_directory(entry)
        if _verified(entry):
            return entry
    raise ValueError(
        f"Cannot load {handle}: {reason}, and kzoo's cache ({repo_dir}) holds no copy of it "
        "(a handle is cached by its first online load)."
    )


# ----------------------------------------------------------------------------- resolving


def resolve_hub_preset(source):
    """A local preset directory for the handle ``source``; see the module docstring."""
    handle = parse_handle(source)
    hf = _huggingface_hub()
    settings = _settings(hf)
    if settings.offline:
        return _cached_entry(handle, "HF_HUB_OFFLINE is set")
    transport = _transport_errors(hf)
    try:
        info = hf.HfApi(endpoint=settings.endpoint).model_info(
            handle.repo_id, revision=handle.ref, files_metadata=True
        )
    except transport as e:
        where = settings.endpoint or hf.constants.ENDPOINT
        return _cached_entry(handle, f"the Hub at {where} cannot be reached ({_first_line(e)})")
    except Exception as e:
        error = _hub_error(hf, handle, e)
        if error is None:
            raise
        if isinstance(error, _Unreachable):
            return _cached_entry(handle, str(error))
        raise error from None
    commit = info.sha
    if not isinstance(commit, str) or not COMMIT_RE.match(commit):
        raise ValueError(f"The Hub gave no commit for {handle} (got {commit!r}).")
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    repo_dir = repo_cache(handle.repo_id)
    entry = os.path.join(repo_dir, commit)
    recover_directory(entry)
    if not _verified(entry):
        if os.path.lexists(entry):
            # A damaged or altered entry: build it again rather than fail on every load.
            remove(entry)
        _build_entry(hf, settings, handle, commit, siblings, entry)
        if not _verified(entry):
            remove(entry)
            raise ValueError(
                f"The preset built from {handle} (commit {commit[:12]}) is not a complete kzoo "
                "preset whose model.weights.h5 matches the weights_sha256 of its metadata.json; "
                "it was removed from kzoo's cache."
            )
    _write_ref(repo_dir, handle.ref, commit)
    return entry


class _Unreachable(Exception):
    pass


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _hub_error(hf, handle, e):
    """The kzoo error for a huggingface_hub exception (None: not one of its HTTP errors)."""
    errors = hf.errors
    if isinstance(e, errors.GatedRepoError):
        return ValueError(
            f"{handle}: the repository is gated or private; accept its terms on the Hub and set "
            "HF_TOKEN (or run `hf auth login`) to load it."
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        return ValueError(
            f"{handle}: no such repository on the Hub (or it is private: set HF_TOKEN to a token "
            "that can read it)."
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return ValueError(
            f"{handle}: the repository has no revision {handle.ref!r} (a branch, tag or commit)."
        )
    if isinstance(e, errors.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status is not None and status >= 500:
            return _Unreachable(f"the Hub answered HTTP {status}")
        return ValueError(f"{handle}: the Hub refused the request: {_first_line(e)}")
    return None


def _download(hf, settings, handle, commit, name, siblings):
    """One file of the commit, through huggingface_hub's cache; its local path."""
    transport = _transport_errors(hf)
    try:
        path = hf.hf_hub_download(
            handle.repo_id,
            name,
            revision=commit,
            endpoint=settings.endpoint,
            cache_dir=settings.cache_dir,
        )
    except (OSError, *transport) as e:
        kzoo_error = _hub_error(hf, handle, e) if isinstance(e, hf.errors.HfHubHTTPError) else None
        if isinstance(kzoo_error, ValueError):
            raise kzoo_error from None
        raise ValueError(
            f"Downloading {name} of {handle} (commit {commit[:12]}) failed: {_first_line(e)}. "
            "kzoo cached nothing for it; run again to resume."
        ) from None
    lfs = getattr(siblings.get(name), "lfs", None)
    expected = getattr(lfs, "sha256", None) if lfs is not None else None
    if isinstance(expected, str) and sha256_file(path) != expected.lower():
        raise ValueError(
            f"{name} of {handle} (commit {commit[:12]}) does not match the sha256 the Hub lists "
            f"({expected[:12]}...): the copy in the Hugging Face cache ({path}) is damaged; "
            "delete it and load again."
        )
    return path


def _read_json(path, handle, name):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{name} of {handle} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{name} of {handle} must hold a JSON object; found {type(data).__name__}."
        )
    return data


def is_kzoo_config(config):
    """Whether a repo's ``config.json`` is a kzoo preset's (a serialized keras object)."""
    return isinstance(config.get("class_name"), str) and isinstance(config.get("config"), dict)


def _build_entry(hf, settings, handle, commit, siblings, entry):
    if "config.json" not in siblings:
        shown = ", ".join(sorted(siblings)[:8]) or "no files"
        raise ValueError(
            f"{handle} has no config.json (it holds {shown}); kzoo loads repos holding a kzoo "
            "preset or a model in a layout kzoo converts."
        )
    config_path = _download(hf, settings, handle, commit, "config.json", siblings)
    config = _read_json(config_path, handle, "config.json")
    metadata = {
        "hub_repo": handle.repo_id,
        "hub_revision": handle.ref,
        "hub_commit": commit,
    }
    if is_kzoo_config(config):
        missing = [n for n in KZOO_FILES if n not in siblings]
        if missing:
            raise ValueError(
                f"{handle} holds a kzoo config.json but not {', '.join(missing)}; a kzoo preset "
                f"repo holds {', '.join(KZOO_FILES)}."
            )
        paths = {n: _download(hf, settings, handle, commit, n, siblings) for n in KZOO_FILES}
        with atomic_directory(entry, overwrite=True) as tmp:
            for name, path in paths.items():
                _link_or_copy(path, os.path.join(tmp, name))
        return
    model_type = config.get("model_type")
    converter = _CONVERTERS.get(model_type) if isinstance(model_type, str) else None
    if converter is None:
        known = ", ".join(sorted(_CONVERTERS)) or "none"
        raise ValueError(
            f"{handle}: config.json has model_type {model_type!r}, which kzoo does not convert "
            f"(it converts: {known}), and the repo holds no kzoo preset."
        )
    weights = _load_function(converter.check)(config, str(handle), sorted(siblings))
    files = {"config.json": config_path}
    for name in weights:
        files[name] = _download(hf, settings, handle, commit, name, siblings)
    _load_function(converter.convert)(files, config, entry, metadata)


def _link_or_copy(src, dst):
    """A hard link to the file behind ``src`` (huggingface_hub's blob), else a copy: the cache
    entry then survives a cleaned Hugging Face cache without taking the space twice."""
    real = os.path.realpath(src)
    try:
        os.link(real, dst)
    except OSError:
        shutil.copyfile(real, dst)


# ----------------------------------------------------------------------------- listing


@dataclasses.dataclass(frozen=True)
class CachedHubPreset:
    handle: str
    commit: str
    refs: tuple
    size: int
    path: str


def cached_hub_presets():
    """Every cached hub preset: ``hf://owner/repo``, its commit, the revisions recorded for it,
    its size in bytes and its directory (incomplete or damaged entries are left out)."""
    root = cache_root()
    found = []
    with contextlib.suppress(OSError):
        for repo in sorted(os.listdir(root)):
            repo_dir = os.path.join(root, repo)
            if "--" not in repo or not os.path.isdir(repo_dir):
                continue
            refs = {}
            with contextlib.suppress(OSError):
                for name in os.listdir(os.path.join(repo_dir, REFS_DIR)):
                    ref = urllib.parse.unquote(name)
                    commit = _read_ref(repo_dir, ref)
                    if commit:
                        refs.setdefault(commit, []).append(ref)
            for commit in sorted(os.listdir(repo_dir)):
                entry = os.path.join(repo_dir, commit)
                if not COMMIT_RE.match(commit) or not os.path.isdir(entry):
                    continue
                size = sum(
                    os.path.getsize(os.path.join(entry, n))
                    for n in os.listdir(entry)
                    if os.path.isfile(os.path.join(entry, n))
                )
                found.append(
                    CachedHubPreset(
                        handle=SCHEME + repo.replace("--", "/", 1),
                        commit=commit,
                        refs=tuple(sorted(refs.get(commit, []))),
                        size=size,
                        path=entry,
                    )
                )
    return found
