"""``export_model``: write one artifact atomically, check its destination, compare it with keras.

The functions ``kzoo.export`` makes public (see its docstring for the formats and rules).
"""

import os
import re
import shutil
import tempfile

import keras
import numpy as np

from kzoo.backends.common import export_state
from kzoo.export import signatures, writers
from kzoo.export.signatures import signature_for
from kzoo.ops.host_call import without_host_checks
from kzoo.utils.files import write_probe

FORMATS = ("saved_model", "onnx", "litert")
BACKEND_FORMATS = {
    "tensorflow": ("saved_model", "onnx", "litert"),
    "jax": ("saved_model", "onnx"),
    "torch": ("onnx",),
}
# Largest difference from the keras model (float32 outputs) that the tests accept per format.
TOLERANCES = {"saved_model": 1e-5, "onnx": 1e-5, "litert": 1e-5}


def supported_formats(backend=None):
    """The formats ``export_model`` writes from ``backend`` (keras's by default)."""
    backend = backend or keras.backend.backend()
    return BACKEND_FORMATS.get(backend, ())


def check_format(format, backend=None):
    """Raise a ValueError unless ``format`` is known and written from ``backend``."""
    backend = backend or keras.backend.backend()
    if format not in FORMATS:
        raise ValueError(
            f"Unknown export format {format!r}; supported formats: {', '.join(FORMATS)}."
        )
    if format not in supported_formats(backend):
        where = [b for b, formats in BACKEND_FORMATS.items() if format in formats]
        available = ", ".join(supported_formats(backend)) or "none"
        raise ValueError(
            f"Format {format!r} is exported from the {', '.join(where)} backend(s), not from "
            f"{backend!r} (which exports: {available}). Set KERAS_BACKEND accordingly."
        )


def named_outputs(outputs):
    """A model's outputs as ``{name: tensor}``: ``output_i`` for tensors, keys for a dict."""
    if isinstance(outputs, dict):
        bad = [k for k, v in outputs.items() if isinstance(v, (dict, list, tuple))]
        if bad:
            raise ValueError(f"Nested outputs ({bad}) cannot be exported by name.")
        return dict(outputs)
    if isinstance(outputs, (list, tuple)):
        return {f"output_{i}": v for i, v in enumerate(outputs)}
    return {"output_0": outputs}


class _Serving(keras.Model):
    """The model as exported: inference mode, outputs named (a dict), or a tuple in sorted
    name order for ONNX, whose outputs are renamed after export."""

    def __init__(self, served, as_tuple=False):
        super().__init__(name=f"{served.name}_serving")
        self.served = served
        self.as_tuple = as_tuple
        self.output_keys = None
        self.built = True

    def call(self, inputs):
        outputs = named_outputs(self.served(inputs, training=False))
        self.output_keys = sorted(outputs)
        if self.as_tuple:
            return tuple(outputs[k] for k in self.output_keys)
        return {k: outputs[k] for k in self.output_keys}


def _fixed_sizes(signature, fixed_sizes):
    fixed = dict(fixed_sizes or {})
    for name, size in fixed.items():
        if name not in signature.free_dims():
            raise ValueError(
                f"`fixed_sizes` names {name!r}, which is not a free dimension of the model's "
                f"inputs ({', '.join(signature.free_dims())})."
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`fixed_sizes[{name!r}]` must be a positive int; got {size!r}.")
    return fixed


# What ``tf.saved_model.save`` writes into a SavedModel directory; a directory holding anything
# else is not (only) an artifact, and is a user's.
_SAVED_MODEL_ENTRIES = {
    "saved_model.pb",
    "saved_model.pbtxt",
    "fingerprint.pb",
    "keras_metadata.pb",
    "variables",
    "assets",
}
_VARIABLES_FILE = re.compile(r"^variables\.(?:index|data-\d+-of-\d+)$")
_TFLITE_IDENTIFIER = b"TFL3"  # the FlatBuffer file identifier, bytes 4 to 8 of a .tflite file


def is_artifact(path, format):
    """Whether ``path`` holds an artifact of ``format`` and nothing else, i.e. what
    ``export_model(..., overwrite=True)`` may replace.

    - ``saved_model``: a directory with ``saved_model.pb`` and only what ``tf.saved_model``
      writes beside it (``variables/`` with its index and data shards, ``assets/``,
      ``fingerprint.pb``, ``keras_metadata.pb``).
    - ``onnx``: a regular file that parses as an ONNX ``ModelProto`` with a graph.
    - ``litert``: a regular file carrying the TFLite FlatBuffer identifier ``TFL3``.
    """
    path = os.fspath(path)
    if format == "saved_model":
        try:
            entries = set(os.listdir(path))
        except OSError:
            return False
        if (
            not entries & {"saved_model.pb", "saved_model.pbtxt"}
            or not entries <= _SAVED_MODEL_ENTRIES
        ):
            return False
        variables = os.path.join(path, "variables")
        if "variables" in entries:
            if os.path.islink(variables) or not os.path.isdir(variables):
                return False
            try:
                names = os.listdir(variables)
            except OSError:
                return False
            return all(_VARIABLES_FILE.match(n) for n in names)
        return True
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    if format == "litert":
        return head[4:8] == _TFLITE_IDENTIFIER
    # ONNX: a protobuf ModelProto, whose first field is ir_version (field 1, varint: tag 0x08).
    if head[:1] != b"\x08":
        return False
    try:
        import onnx

        model = onnx.load(path, load_external_data=False)
    except ImportError:
        return True
    except Exception:  # noqa: BLE001 - whatever the parser says, it is not an ONNX model
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def _describe_entries(path):
    try:
        entries = sorted(os.listdir(path))
    except OSError as e:
        return f"which cannot be read: {e.strerror}"
    foreign = [e for e in entries if e not in _SAVED_MODEL_ENTRIES] or entries
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return f"it holds {shown}"


def check_destination(path, format, overwrite=False, force=False):
    """Raise a ``ValueError`` unless an artifact of ``format`` may be written to ``path``;
    returns the absolute path.

    - A missing path: allowed (its folders are created).
    - An artifact of the same format (:func:`is_artifact`), an empty directory (SavedModel) or
      an empty file (ONNX, LiteRT): replaced when ``overwrite`` is true, refused otherwise.
    - Anything else (a directory holding a user's files, a file that is not such a model):
      refused whatever ``overwrite`` says, unless ``force`` is true, and then replaced (what
      it held is deleted). ``force`` implies ``overwrite``.
    - A file where a SavedModel directory goes, a directory where an ONNX/LiteRT file goes, a
      FIFO or device, a path under a regular file, a folder that cannot be written: always
      refused.
    """
    for name, value in (("overwrite", overwrite), ("force", force)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False; got {value!r}.")
    path = os.path.abspath(os.fspath(path))
    if format == "litert" and not path.endswith(".tflite"):
        raise ValueError(f"A LiteRT model's path must end in '.tflite'; got {path!r}.")
    ancestor = os.path.dirname(path)
    while not os.path.isdir(ancestor):
        if os.path.lexists(ancestor):
            raise ValueError(
                f"Cannot export to {path}: {ancestor} is "
                + ("a broken symbolic link" if not os.path.exists(ancestor) else "a file")
                + ", not a directory."
            )
        ancestor = os.path.dirname(ancestor)
    error = write_probe(ancestor)
    if error is not None:
        raise ValueError(
            f"Cannot export to {path}: the directory {ancestor} is not writable "
            f"({error.strerror or error})."
        )
    if not os.path.lexists(path):
        return path
    if not os.path.exists(path):
        raise ValueError(f"{path} is a broken symbolic link; remove it or choose another path.")
    if format == "saved_model":
        if not os.path.isdir(path):
            raise ValueError(
                f"{path} exists and is not a directory (a SavedModel is one); choose another "
                "path (kzoo does not replace files with SavedModel directories)."
            )
        try:
            empty = not os.listdir(path)
        except OSError as e:
            raise ValueError(f"Cannot read the destination {path}: {e.strerror}.") from None
    elif os.path.isdir(path):
        raise ValueError(f"{path} is a directory; a {format} model is one file.")
    elif not os.path.isfile(path):
        raise ValueError(f"{path} exists and is not a regular file (a FIFO, socket or device).")
    else:
        empty = os.path.getsize(path) == 0
    # Replacing an empty directory or file, or an artifact of this format, loses nothing of
    # the user's.
    replaceable = empty or is_artifact(path, format)
    if replaceable and not (overwrite or force):
        raise ValueError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it.")
    if replaceable or force:
        return path
    if format == "saved_model":
        what = f"is a directory but not a SavedModel ({_describe_entries(path)})"
        escape = "Export to a new or empty directory, or pass force=True (--force) to replace "
        escape += "the directory and everything in it."
    else:
        what = f"exists and is not {'an ONNX' if format == 'onnx' else 'a LiteRT'} model"
        escape = "Choose another path, or pass force=True (--force) to replace it."
    raise ValueError(f"{path} {what}; kzoo does not delete files it did not write. {escape}")


def export_model(
    model,
    path,
    format,
    input_signature=None,
    fixed_sizes=None,
    overwrite=False,
    verbose=False,
    force=False,
):
    """Export ``model`` for inference to ``path`` in ``format``; returns the absolute path.

    Args:
        model: A built ``keras.Model`` (kzoo's or any other). Subclassed models without an
            ``export_signature()`` of their own (DETR and CausalLM have one) must have been
            called once (their input shapes come from it).
        path: Destination: a directory for ``"saved_model"``, a file otherwise (``.tflite``
            for ``"litert"``).
        format: ``"saved_model"``, ``"onnx"`` or ``"litert"`` (see the module docstring for
            the backends each is written from).
        input_signature: Optional keras-style input specs (``keras.InputSpec`` or a dict of
            them) replacing the model's own signature (``kzoo.export.signatures``).
        fixed_sizes: ``{dimension name: size}`` for free dimensions to fix, e.g.
            ``{"time": 10}``; the torch ONNX export needs the time axis of keras's own
            recurrent layers fixed (``fixed_dims`` lists what a backend must fix).
        overwrite: Replace an existing artifact of the same format at ``path`` (atomically);
            without it an existing destination is an error. A directory or file that is not
            such an artifact (a folder of your files) is refused even so: see
            :func:`check_destination`.
        verbose: Let keras print its export messages.
        force: Replace whatever is at ``path``, deleting what it held (implies
            ``overwrite``).

    Raises:
        ValueError: for an unknown format or one the backend does not write, a model never
            built or called, an existing destination without ``overwrite``, a destination
            that is not an artifact of ``format`` without ``force``, a path that cannot be
            written (under a regular file, in a read-only folder).
    """
    check_format(format)
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model; got {type(model).__name__}.")
    if input_signature is not None:
        if not model.built:
            raise ValueError(
                f"{type(model).__name__} has never been built or called: call it once on a "
                "sample batch (`model(x)`) or build it (`model.build(input_shape)`) first."
            )
        signature = signatures.from_keras(input_signature, model)
    else:
        signature = signature_for(model)
    fixed = _fixed_sizes(signature, fixed_sizes)
    path = check_destination(path, format, overwrite=overwrite, force=force)
    serving = _Serving(model, as_tuple=format == "onnx")

    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        target = os.path.join(tmp_dir, os.path.basename(path))
        # A served artifact has no Python to call back into: input checks that run on the host
        # (DETR's pixel_mask) stay out of the exported graph.
        # The traced code learns which dimensions this export fixed (a ConvLSTM that cannot
        # loop in the exported graph may then unroll for the fixed length).
        with without_host_checks(), export_state.fixing(fixed):
            writers.writer()(serving, target, format, signature, fixed, verbose=verbose)
        if format == "onnx":
            _name_onnx_io(target, signature, serving.output_keys)
        _replace(target, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def _replace(source, path):
    """Move the finished artifact onto ``path`` (a directory is swapped, never merged)."""
    if not os.path.isdir(source):
        os.replace(source, path)
        return
    backup = None
    if os.path.exists(path):
        backup = tempfile.mkdtemp(
            prefix=f".{os.path.basename(path)}.", suffix=".old", dir=os.path.dirname(path)
        )
        os.rmdir(backup)
        os.rename(path, backup)
    os.rename(source, path)
    if backup:
        shutil.rmtree(backup, ignore_errors=True)


def _name_onnx_io(path, signature, output_keys):
    """Give the ONNX graph's inputs and outputs the model's names (the converters number or
    suffix them: ``Identity:0``, ``add_out_2``, ...)."""
    import onnx
    from onnx import helper

    model = onnx.load(path)
    graph = model.graph
    if output_keys is None or len(output_keys) != len(graph.output):
        raise RuntimeError(
            f"The ONNX graph has {len(graph.output)} outputs; the model returned {output_keys}."
        )
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    renames = {v.name: s.name for v, s in zip(inputs, signature.specs) if v.name != s.name}

    def rename_inputs(g):
        for node in g.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            for attr in node.attribute:
                # Loop / If / Scan bodies read outer values by name.
                if attr.HasField("g"):
                    rename_inputs(attr.g)
                for sub in attr.graphs:
                    rename_inputs(sub)

    if renames:
        for value in graph.input:
            value.name = renames.get(value.name, value.name)
        rename_inputs(graph)
        for value in graph.output:
            value.name = renames.get(value.name, value.name)
    # Free dimensions by the signature's names ("batch", "time", "height", ...); the converters
    # number them per input ("dim_0_1"), so two inputs of one height got two names.
    dim_names = {}
    for value, spec in zip(inputs, signature.specs):
        for dim, name in zip(value.type.tensor_type.shape.dim, spec.dims):
            if dim.HasField("dim_param") and isinstance(name, str):
                dim_names[dim.dim_param] = name
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dim_names:
                dim.dim_param = dim_names[dim.dim_param]
    # Outputs: an Identity per output, so no node inside the graph changes.
    for value, name in zip(graph.output, output_keys):
        if value.name != name:
            graph.node.append(helper.make_node("Identity", [value.name], [name]))
            value.name = name
    onnx.save(model, path)


def keras_outputs(model, inputs, signature=None):
    """The keras model's outputs on ``inputs`` (by input name) as numpy, by output name."""
    signature = signature or signature_for(model)
    named = (
        signature.check(inputs) if isinstance(inputs, dict) else {signature.specs[0].name: inputs}
    )
    if isinstance(signature.inputs, dict):
        call_inputs = {k: named[v.name] for k, v in signature.inputs.items()}
    else:
        call_inputs = named[signature.inputs.name]
    outputs = named_outputs(model(call_inputs, training=False))
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in outputs.items()}


def max_differences(model, artifact, inputs, signature=None):
    """``{output name: max |artifact - keras|}`` on ``inputs`` (dict by input name)."""
    signature = signature or signature_for(model)
    expected = keras_outputs(model, inputs, signature)
    named = (
        signature.check(inputs) if isinstance(inputs, dict) else {signature.specs[0].name: inputs}
    )
    got = artifact(named)
    if set(got) != set(expected):
        raise ValueError(
            f"The artifact's outputs {sorted(got)} are not the model's {sorted(expected)}."
        )
    diffs = {}
    for name, value in expected.items():
        actual = np.asarray(got[name])
        if actual.shape != value.shape:
            raise ValueError(
                f"Output {name!r} has shape {actual.shape} in the artifact and {value.shape} in "
                "keras."
            )
        if value.size == 0:
            diffs[name] = 0.0
        else:
            diffs[name] = float(np.max(np.abs(actual.astype(np.float64) - value)))
    return diffs
