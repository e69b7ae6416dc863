"""What an exported model takes: named inputs with named, possibly free, dimensions.

An ``InputSpec`` here is one input tensor: its name, dtype and a shape whose free dimensions
carry a name (``"batch"``, ``"time"``, ``"height"``, ...). Two inputs that share a dimension
name share its size: DETR's ``images`` and ``pixel_mask`` have the same height and width, which
a shape-polymorphic JAX export must know (a model that compares the two sizes would otherwise
see two unrelated symbols). A ``Signature`` is the inputs of one model call: a single tensor or
a dict of tensors, and the dimensions that a tracing exporter cannot leave free.
"""

import dataclasses

import keras
from keras.src.models.functional import Functional


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One input: ``dims`` holds an int for a fixed size and a name for a free one."""

    name: str
    dims: tuple
    dtype: str = "float32"

    @property
    def shape(self):
        return tuple(d if isinstance(d, int) else None for d in self.dims)

    def keras_spec(self, fixed=None):
        """A ``keras.InputSpec``; dimensions named in ``fixed`` get that size."""
        fixed = fixed or {}
        shape = tuple(d if isinstance(d, int) else fixed.get(d) for d in self.dims)
        return keras.InputSpec(shape=shape, dtype=self.dtype, name=self.name)

    def polymorphic_shape(self):
        """The shape as jax2tf's ``polymorphic_shapes`` string, e.g. ``"(batch, h, w, 3)"``."""
        return "(" + ", ".join(str(d) for d in self.dims) + ")"


@dataclasses.dataclass(frozen=True)
class Signature:
    """The inputs of one call: ``inputs`` is an ``InputSpec`` or a dict of them.

    ``eager_dims``: dimensions that eager Python code turns into constants when one run is
    traced (torch): a ConvLSTM's loop over time is unrolled, and a strided ``"same"``
    ConvLSTM's padding is computed from the frame size; such an exporter fixes them.
    ``merged``: free dimensions the model reshapes into one axis (DETR's height x width
    feature map into tokens); jax2onnx cannot express that reshape, so its export fixes them.
    """

    inputs: object
    eager_dims: tuple = ()
    merged: tuple = ()

    @property
    def specs(self):
        """The input specs in the order the exported artifacts take them."""
        if isinstance(self.inputs, dict):
            return [self.inputs[k] for k in sorted(self.inputs)]
        return [self.inputs]

    def names(self):
        return [s.name for s in self.specs]

    def map(self, fn):
        """``self.inputs`` with every spec replaced by ``fn(spec)``."""
        if isinstance(self.inputs, dict):
            return {k: fn(v) for k, v in self.inputs.items()}
        return fn(self.inputs)

    def free_dims(self):
        names = []
        for spec in self.specs:
            for d in spec.dims:
                if not isinstance(d, int) and d not in names:
                    names.append(d)
        return names

    def check(self, inputs):
        """Raise a ValueError unless ``inputs`` (numpy arrays) fit the signature; returns them
        as a dict by input name."""
        if isinstance(self.inputs, dict):
            if not isinstance(inputs, dict) or set(inputs) != set(self.inputs):
                got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
                raise ValueError(
                    f"The model takes a dict with keys {sorted(self.inputs)}; got {got}."
                )
            named = {self.inputs[k].name: inputs[k] for k in self.inputs}
        else:
            if isinstance(inputs, dict):
                raise ValueError(
                    f"The model takes one tensor ({self.inputs.name!r}); got a dict with keys "
                    f"{sorted(inputs)}."
                )
            named = {self.inputs.name: inputs}
        sizes = {}
        for spec in self.specs:
            value = named[spec.name]
            shape = tuple(getattr(value, "shape", ()))
            if len(shape) != len(spec.dims):
                raise ValueError(
                    f"Input {spec.name!r} must have rank {len(spec.dims)} {spec.dims}; got "
                    f"shape {shape}."
                )
            for d, n in zip(spec.dims, shape):
                if isinstance(d, int) and d != n:
                    raise ValueError(
                        f"Input {spec.name!r} must be shaped {spec.dims}; got shape {shape}."
                    )
                if not isinstance(d, int) and sizes.setdefault(d, n) != n:
                    raise ValueError(
                        f"Inputs disagree on the size of {d!r}: {sizes[d]} and {n} "
                        f"({spec.name!r} has shape {shape})."
                    )
        return named

    def sizes(self, inputs):
        """``{dimension name: size}`` in ``inputs`` (a dict by input name)."""
        sizes = {}
        for spec in self.specs:
            for d, n in zip(spec.dims, inputs[spec.name].shape):
                if not isinstance(d, int):
                    sizes[d] = int(n)
        return sizes


SPATIAL_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def _recurrent_layers(model):
    """The recurrent layers of ``model`` (kzoo's ConvLSTMs and keras's RNNs)."""
    from kzoo.layers.conv_lstm import ConvLSTM

    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, (ConvLSTM, keras.layers.RNN))
    ]


def _has_time_loop(model):
    return bool(_recurrent_layers(model))


def _size_dependent_padding(model):
    """Whether a ConvLSTM pads by the frame size (``"same"`` with strides > 1)."""
    return any(
        getattr(layer, "padding", None) == "same" and max(getattr(layer, "strides", (1,))) > 1
        for layer in _recurrent_layers(model)
    )


def _functional_signature(model):
    inputs = model._inputs_struct if isinstance(model, Functional) else model.inputs
    flat = keras.tree.flatten(inputs)
    loops = _has_time_loop(model)
    used = set()

    def spec_for(tensor, index):
        name = tensor.name or f"input_{index}"
        if name in used:
            name = f"{name}_{index}"
        used.add(name)
        # Videos (batch, time, spatial..., channels): the free spatial axes by name.
        spatial = list(SPATIAL_NAMES.get(len(tensor.shape) - 3, ())) if loops else []
        dims = []
        for axis, size in enumerate(tensor.shape):
            if axis == 0:
                dims.append("batch")
            elif size is not None:
                dims.append(int(size))
            elif loops and axis == 1:
                dims.append("time")
            elif spatial:
                dims.append(spatial.pop(0))
            else:
                dims.append(f"{name}_{axis}")
        return InputSpec(name, tuple(dims), keras.backend.standardize_dtype(tensor.dtype))

    if isinstance(inputs, dict):
        specs = {k: spec_for(v, i) for i, (k, v) in enumerate(sorted(inputs.items()))}
        # Name dict inputs by their keys: that is what callers pass.
        specs = {k: dataclasses.replace(s, name=k) for k, s in specs.items()}
        sig_inputs = specs
    elif len(flat) == 1:
        sig_inputs = spec_for(flat[0], 0)
    else:
        sig_inputs = {f"input_{i}": spec_for(t, i) for i, t in enumerate(flat)}
        sig_inputs = {k: dataclasses.replace(s, name=k) for k, s in sig_inputs.items()}
    eager = ("time",) if loops else ()
    signature = Signature(sig_inputs)
    if loops and _size_dependent_padding(model):
        eager += tuple(d for d in signature.free_dims() if d not in ("batch", "time"))
    return Signature(sig_inputs, eager_dims=eager)


def _detr_signature():
    return Signature(
        {
            "images": InputSpec("images", ("batch", "height", "width", 3)),
            "pixel_mask": InputSpec("pixel_mask", ("batch", "height", "width")),
        },
        merged=("height", "width"),
    )


def _called_signature(model):
    """A subclassed model's inputs as keras recorded them at its first call (batch free)."""
    shapes = getattr(model, "_build_shapes_dict", None)
    if not getattr(model, "_called", False) or not shapes or len(shapes) != 1:
        raise ValueError(
            f"{type(model).__name__} has never been called, so the shapes of its inputs are "
            "unknown: call it once on a sample batch (`model(x)`) before exporting, or pass "
            "`input_signature`."
        )
    shape = next(iter(shapes.values()))
    if not isinstance(shape, (tuple, list)) or not all(
        d is None or isinstance(d, int) for d in shape
    ):
        raise ValueError(
            f"{type(model).__name__} takes nested inputs; pass `input_signature` to export it."
        )
    dims = ("batch",) + tuple(shape[1:])
    dims = tuple(d if d is not None else f"input_{i}" for i, d in enumerate(dims))
    dtype = keras.backend.standardize_dtype(getattr(model, "input_dtype", "float32"))
    return Signature(InputSpec("inputs", dims, dtype))


def signature_for(model):
    """The ``Signature`` a model is exported with.

    DETR takes ``images (batch, height, width, 3)`` and ``pixel_mask (batch, height, width)``;
    CausalLM ``token_ids (batch, sequence)`` (int32); functional models their ``keras.Input``
    shapes with the batch free (and, in models with a recurrent layer, axis 1 named
    ``"time"``); other subclassed models the shapes of their first call with the batch free.
    """
    from kzoo.models.causal_lm import CausalLM
    from kzoo.models.detr import DETR
    from kzoo.models.detr.model.detections import DETRDetections

    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model; got {type(model).__name__}.")
    if not model.built:
        raise ValueError(
            f"{type(model).__name__} has never been built or called: call it once on a sample "
            "batch (`model(x)`) or build it (`model.build(input_shape)`) before exporting."
        )
    if isinstance(model, (DETR, DETRDetections)):
        return _detr_signature()
    if isinstance(model, CausalLM):
        return Signature(InputSpec("token_ids", ("batch", "sequence"), "int32"))
    if isinstance(model, (Functional, keras.Sequential)):
        return _functional_signature(model)
    return _called_signature(model)


def from_keras(input_signature, model=None):
    """A ``Signature`` from keras-style specs: a ``keras.InputSpec`` (or anything with
    ``shape`` and ``dtype``), a dict of them, or a one-element list holding either. A free
    axis 1 of a ``model`` with a recurrent layer is its ``"time"``."""
    loops = model is not None and _has_time_loop(model)
    if isinstance(input_signature, (list, tuple)):
        if len(input_signature) != 1:
            raise ValueError(
                "`input_signature` must describe the model's one call argument: a spec, a dict "
                f"of specs, or a list holding one of them; got {len(input_signature)} entries."
            )
        input_signature = input_signature[0]

    def convert(spec, name):
        shape = getattr(spec, "shape", None)
        if shape is None:
            raise ValueError(f"Input signature entry {name!r} has no shape: {spec!r}.")
        dims = []
        for i, d in enumerate(shape):
            if d is not None:
                dims.append(int(d))
            elif i == 0:
                dims.append("batch")
            else:
                dims.append("time" if loops and i == 1 else f"{name}_{i}")
        dims = tuple(dims)
        dtype = keras.backend.standardize_dtype(getattr(spec, "dtype", None) or "float32")
        return InputSpec(name, dims, dtype)

    loop_dims = ("time",) if loops else ()
    if isinstance(input_signature, dict):
        inputs = {k: convert(v, k) for k, v in input_signature.items()}
    else:
        inputs = convert(input_signature, getattr(input_signature, "name", None) or "inputs")
    signature = Signature(inputs)
    eager = tuple(d for d in loop_dims if d in signature.free_dims())
    if loops and _size_dependent_padding(model):
        eager += tuple(d for d in signature.free_dims() if d not in ("batch", "time"))
    return Signature(inputs, eager_dims=eager)
