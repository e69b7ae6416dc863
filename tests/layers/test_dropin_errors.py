"""Issue #24, item 5: for the same mistake a drop-in layer raises the exception class keras's
layer raises, so code that catches keras's exception keeps working.

Every case below runs the same steps (construct, then build and call where given) with keras's
layer and with kzoo's, on the backend under test, and first checks that keras's outcome is the
one recorded here (so the table cannot drift from keras). The cases were read from keras 3.15's
source: the explicit checks (``LayerNormalization``'s ``axis`` type, ``standardize_tuple``,
``standardize_padding``, ``standardize_data_format``, the strides/dilation combination,
``Dropout``'s ``rate`` and ``noise_shape``, ``MultiHeadAttention``'s sizes, the RNN's stateful
batch size, ``InputSpec``'s rank, the ``*.get`` lookups, unknown keyword arguments) and what its
argument handling raises on a wrong type or size (``input_shape[axis]`` in ``build``: an
``IndexError`` out of range, a ``TypeError`` for a non-int axis; ``filters * 4`` on ``None``;
comparing a string with 0; ``states[1]`` of a single state). Then, by the case's rule:

* ``SAME``: keras raises the class from its own code, the same on every backend. kzoo's error is
  an instance of it (kzoo's ``ArgumentTypeError`` / ``ArgumentIndexError`` are both the keras class
  and a ``ValueError``).
* ``KZOO``: keras accepts the mistake, or fails in backend code with a class that differs
  between backends (or by accident: ``AttributeError`` from ``padding.lower()``,
  ``OverflowError`` from ``strides=0``). kzoo raises its ``ValueError`` on every backend, and
  where keras's class on this backend is ``TypeError``, ``ValueError`` or ``IndexError`` kzoo's
  error is an instance of it as well, except where marked (the only one: keras's JAX ``reshape``
  of a ``gamma`` built for another width raises ``TypeError``; kzoo's "`gamma` has shape" error
  stays a plain ``ValueError``).
* ``EXTENDS``: keras refuses, kzoo accepts by design (ConvLSTM spatial sizes that are unknown or
  change between calls; ``docs/convlstm.md``).

kzoo's error always names the argument (a missing argument is Python's ``TypeError`` for both:
the signatures are keras's).
"""

import keras
import numpy as np
import pytest

import kzoo

SAME, KZOO, EXTENDS = "same", "kzoo", "extends"
ARGUMENT_CLASSES = (TypeError, ValueError, IndexError)
BACKEND = keras.backend.backend()


def _x(*shape, dtype="float32"):
    return np.random.default_rng(0).normal(size=shape).astype(dtype)


class Sym:
    """A symbolic input (``keras.Input``) of this shape, batch size included."""

    def __init__(self, *shape):
        self.shape = shape

    def make(self):
        return keras.Input(shape=self.shape[1:], batch_size=self.shape[0])


PAIRS = {
    "LayerNormalization": (keras.layers.LayerNormalization, kzoo.layers.LayerNormalization),
    "RMSNormalization": (keras.layers.RMSNormalization, kzoo.layers.RMSNormalization),
    "Dropout": (keras.layers.Dropout, kzoo.layers.Dropout),
    "ConvLSTM1D": (keras.layers.ConvLSTM1D, kzoo.layers.ConvLSTM1D),
    "ConvLSTM2D": (keras.layers.ConvLSTM2D, kzoo.layers.ConvLSTM2D),
    "ConvLSTM3D": (keras.layers.ConvLSTM3D, kzoo.layers.ConvLSTM3D),
    # Not a drop-in constructor, but called like keras's layer and sharing its size arguments.
    "ContextParallelAttention": (
        keras.layers.MultiHeadAttention,
        kzoo.layers.ContextParallelAttention,
    ),
}

CASES = []


def case(
    name, layer, kwargs, keras_outcome, rule, argument, inputs=None, call=None, first=None,
    plain_value_error=False,
):  # fmt: skip
    """One mistake. ``keras_outcome``: keras's exception class name (or None: no error), or a
    dict of them by backend. ``inputs``: call the layer on them (after a call on ``first``)."""
    CASES.append(
        pytest.param(
            dict(
                layer=layer,
                kwargs=kwargs,
                keras=keras_outcome,
                rule=rule,
                argument=argument,
                inputs=inputs,
                call=call or {},
                first=first,
                plain=plain_value_error,
            ),  # fmt: skip
            id=f"{layer}-{name}",
        )
    )


# --- LayerNormalization and RMSNormalization ----------------------------------------------------

X = _x(2, 3, 4)
NORMS = ("LayerNormalization", "RMSNormalization")
for norm in NORMS:
    # LayerNormalization checks the type in its constructor; RMSNormalization indexes the input
    # shape with it in build. Both raise TypeError.
    for name, axis in [("dict", {"axis": -1}), ("str", "a"), ("float", 1.5), ("none", None)]:
        case(f"axis-{name}", norm, {"axis": axis}, "TypeError", SAME, "axis", X)
    for name, axis in [("float-item", [1.5]), ("str-item", ["a"]), ("mixed", [0, "a"])]:
        case(f"axis-{name}", norm, {"axis": axis}, "TypeError", SAME, "axis", X)
    # ``input_shape[axis]`` in build.
    for name, axis, x in [
        ("5", 5, X),
        ("minus-5", -5, X),
        ("tuple-5", (5,), X),
        ("list-2-5", [2, 5], X),
        ("rank-2", 2, _x(2, 3)),
        ("scalar", -1, np.float32(1.0)),
    ]:
        case(f"axis-out-of-range-{name}", norm, {"axis": axis}, "IndexError", SAME, "axis", x)
    case("axis-out-of-range-symbolic", norm, {"axis": 3}, "IndexError", SAME, "axis", Sym(2, 3, 4))
    # keras: accepted, or refused by the backend.
    bool_outcome = (
        {"jax": None, "tensorflow": None, "torch": "RuntimeError"}
        if norm == "LayerNormalization"
        else {"jax": "ValueError", "tensorflow": "InvalidArgumentError", "torch": "RuntimeError"}
    )
    case("axis-bool", norm, {"axis": True}, bool_outcome, KZOO, "axis", X)
    empty = {"jax": None, "tensorflow": None, "torch": "RuntimeError"}
    case("axis-empty", norm, {"axis": []}, empty, KZOO, "axis", X)
    repeated = {"jax": "ValueError", "tensorflow": "InvalidArgumentError", "torch": "RuntimeError"}
    case("axis-repeated", norm, {"axis": [1, 1]}, repeated, KZOO, "axis", X)
    wrong_type = {"jax": "TypeError", "tensorflow": "InvalidArgumentError", "torch": "TypeError"}
    case("epsilon-str", norm, {"epsilon": "a"}, wrong_type, KZOO, "epsilon", X)
    as_list = {"jax": "TypeError", "tensorflow": None, "torch": "TypeError"}
    case("epsilon-list", norm, {"epsilon": [1e-3]}, as_list, KZOO, "epsilon", X)
    for name, eps in [("none", None), ("negative", -1.0), ("nan", float("nan"))]:
        case(f"epsilon-{name}", norm, {"epsilon": eps}, None, KZOO, "epsilon", X)
    for name, eps in [("inf", float("inf")), ("bool", True), ("zero", 0), ("below-float32", 1e-40)]:
        case(f"epsilon-{name}", norm, {"epsilon": eps}, None, KZOO, "epsilon", X)
    width = (
        {"jax": "TypeError", "tensorflow": "InvalidArgumentError", "torch": "RuntimeError"}
        if norm == "LayerNormalization"
        else {"jax": "ValueError", "tensorflow": "InvalidArgumentError", "torch": "RuntimeError"}
    )
    case(
        "other-width-after-build", norm, {}, width, KZOO, "has shape", _x(2, 3, 5), first=X,
        plain_value_error=norm == "LayerNormalization",
    )  # fmt: skip
    case("input-str", norm, {}, "ValueError", SAME, "", "abc")
    for key in ("foo", "dtype", "name", "trainable"):
        value = {"foo": 1, "dtype": "bogus", "name": 5, "trainable": "x"}[key]
        case(f"kwarg-{key}", norm, {key: value}, "ValueError", SAME, "")
for key in ("center", "scale", "rms_scaling"):
    case(f"{key}-str", "LayerNormalization", {key: "yes"}, None, KZOO, key, X)
for key in ("beta_initializer", "gamma_regularizer", "beta_constraint"):
    case(f"{key}-bogus", "LayerNormalization", {key: "bogus"}, "ValueError", SAME, "bogus")


# --- Dropout ----------------------------------------------------------------------------------

TRAIN = {"training": True}
case("no-rate", "Dropout", {}, "TypeError", SAME, "missing")
for name, rate in [("str", "a"), ("none", None)]:
    case(f"rate-{name}", "Dropout", {"rate": rate}, "TypeError", SAME, "rate", X, TRAIN)
for name, rate in [("negative", -0.1), ("above-1", 1.1), ("nan", float("nan"))]:
    case(f"rate-{name}", "Dropout", {"rate": rate}, "ValueError", SAME, "rate", X, TRAIN)
for name, shape in [("str", "abc"), ("int", 5), ("str-item", (2, "a")), ("zero", (0, 1, 1))]:
    kwargs = {"rate": 0.5, "noise_shape": shape}
    case(f"noise-shape-{name}", "Dropout", kwargs, "ValueError", SAME, "noise_shape", X, TRAIN)
case(
    "noise-shape-float", "Dropout", {"rate": 0.5, "noise_shape": (1.5, 1, 1)}, "ValueError",
    SAME, "noise_shape", X, TRAIN,
)  # fmt: skip
incompatible = {"jax": "ValueError", "tensorflow": "InvalidArgumentError", "torch": "RuntimeError"}
for name, shape in [("rank", (2, 1)), ("size", (2, 2, 4)), ("rank-4", (2, 3, 4, 1))]:
    kwargs = {"rate": 0.5, "noise_shape": shape}
    case(f"noise-shape-{name}", "Dropout", kwargs, incompatible, KZOO, "noise_shape", X, TRAIN)
for name, seed in [("str", "a"), ("float", 1.5)]:
    case(f"seed-{name}", "Dropout", {"rate": 0.5, "seed": seed}, "ValueError", SAME, "seed")
ints = {"jax": "TypeError", "tensorflow": "ValueError", "torch": "RuntimeError"}
case("int-inputs", "Dropout", {"rate": 0.5}, ints, KZOO, "inputs", X.astype("int32"), TRAIN)
case("kwarg-foo", "Dropout", {"rate": 0.5, "foo": 1}, "ValueError", SAME, "")


# --- ConvLSTM1D/2D/3D -------------------------------------------------------------------------

SEQ = {1: _x(2, 3, 5, 2), 2: _x(2, 3, 5, 5, 2), 3: _x(2, 3, 4, 4, 4, 2)}
for rank in (1, 2, 3):
    conv = f"ConvLSTM{rank}D"
    seq = SEQ[rank]
    base = {"filters": 2, "kernel_size": 1}
    case("no-kernel-size", conv, {"filters": 2}, "TypeError", SAME, "missing")
    # Construction: the checks of the cell and keras's argument helpers.
    case("filters-none", conv, {**base, "filters": None}, "TypeError", SAME, "filters", seq)
    for name, filters in [("str", "a"), ("negative", -1), ("float", 2.5), ("tuple", (2,))]:
        kwargs = {**base, "filters": filters}
        case(f"filters-{name}", conv, kwargs, "ValueError", SAME, "filters", seq)
    zero = {"jax": "ValueError", "tensorflow": "InvalidArgumentError", "torch": "RuntimeError"}
    case("filters-zero", conv, {**base, "filters": 0}, zero, KZOO, "filters", seq)
    flag = {"jax": None, "tensorflow": None, "torch": "TypeError"}
    if rank == 2:
        case("filters-bool", conv, {**base, "filters": True}, flag, KZOO, "filters", seq)
    for arg in ("kernel_size", "strides", "dilation_rate"):
        bad = [("negative", -1), ("too-long", (1,) * (rank + 1)), ("float", 3.5), ("none", None)]
        bad += [("str-item", [1] * (rank - 1) + ["a"])]
        if arg != "strides":  # keras's strides may be 0 (below)
            bad.append(("zero", 0))
        for name, value in bad:
            case(f"{arg}-{name}", conv, {**base, arg: value}, "ValueError", SAME, arg, seq)
        # keras: tuple("3") has 1 item; compared with 0 it is a TypeError, of the wrong length a
        # ValueError. kzoo's ArgumentTypeError is both.
        outcome = "TypeError" if rank == 1 else "ValueError"
        case(f"{arg}-str", conv, {**base, arg: "3"}, outcome, SAME, arg, seq)
        if rank == 2:  # keras runs the whole layer here: one rank is enough
            outcome = None if arg == "kernel_size" else flag
            case(f"{arg}-bool", conv, {**base, arg: True}, outcome, KZOO, arg, seq)
    floats = (1.5,) * rank
    case("kernel_size-float-items", conv, {**base, "kernel_size": floats}, "ValueError", SAME,
         "kernel_size", seq)  # fmt: skip
    outcome = {"jax": "TypeError", "tensorflow": "InvalidArgumentError", "torch": "TypeError"}
    case("strides-float-items", conv, {**base, "strides": floats}, outcome, KZOO, "strides", seq)
    outcome = {"jax": "TypeError", "tensorflow": None, "torch": "TypeError"}
    case("dilation_rate-float-items", conv, {**base, "dilation_rate": floats}, outcome, KZOO,
         "dilation_rate", seq)  # fmt: skip
    # keras allows strides=0 and then divides by it.
    case("strides-zero", conv, {**base, "strides": 0}, "OverflowError", KZOO, "strides", seq)
    case("padding-full", conv, {**base, "padding": "full"}, "ValueError", SAME, "padding", seq)
    case("padding-list", conv, {**base, "padding": ["valid"]}, "ValueError", SAME, "padding", seq)
    for name, padding in [("int", 5), ("none", None)]:  # keras: ``padding.lower()``
        kwargs = {**base, "padding": padding}
        case(f"padding-{name}", conv, kwargs, "AttributeError", KZOO, "padding", seq)
    for name, fmt in [("nhwc", "NHWC"), ("int", 5)]:
        kwargs = {**base, "data_format": fmt}
        case(f"data_format-{name}", conv, kwargs, "ValueError", SAME, "data_format", seq)
    kwargs = {**base, "strides": 2, "dilation_rate": 2}
    case("strides-and-dilation", conv, kwargs, "ValueError", SAME, "dilation_rate", seq)
    for arg in ("dropout", "recurrent_dropout"):
        for name, rate in [("str", "a"), ("none", None)]:
            kwargs = {**base, arg: rate}
            case(f"{arg}-{name}", conv, kwargs, "TypeError", SAME, arg, seq, TRAIN)
        for name, rate in [("above-1", 1.5), ("negative", -0.5)]:  # keras clips them
            case(f"{arg}-{name}", conv, {**base, arg: rate}, None, KZOO, arg, seq[:, :1], TRAIN)
    for arg in ("activation", "recurrent_initializer", "bias_regularizer", "kernel_constraint"):
        case(f"{arg}-bogus", conv, {**base, arg: "bogus"}, "ValueError", SAME, "bogus", seq)
    case("seed-str", conv, {**base, "seed": "a"}, "ValueError", SAME, "seed", seq)
    case("kwarg-foo", conv, {**base, "foo": 1}, "ValueError", SAME, "")
    # Calls.
    case("rank-too-small", conv, base, "ValueError", SAME, "", seq[0])
    case("rank-too-large", conv, base, "ValueError", SAME, "", seq[None])
    # kzoo's weights do not depend on the spatial size: it may be unknown or change.
    spatial = (None,) * rank
    shape = (2, 3, *spatial, 2)
    case("unknown-spatial", conv, base, "ValueError", EXTENDS, "", Sym(*shape))
    if rank == 2:  # keras's layer runs (and compiles) here: one rank covers the shared code
        case("channels-change", conv, base, "ValueError", SAME, "channels", seq[..., :1], first=seq)
        case("initial-state-tensor", conv, base, "IndexError", SAME, "initial_state", seq,
             {"initial_state": seq})  # fmt: skip
        case("initial-state-one", conv, base, "IndexError", SAME, "initial_state", seq,
             {"initial_state": [seq]})  # fmt: skip
        case("mask-rank-1", conv, base, "IndexError", SAME, "mask", seq,
             {"mask": np.ones((2,), bool)})  # fmt: skip
        case("stateful-other-batch", conv, {**base, "stateful": True}, "ValueError", SAME,
             "batch size", seq[:1], first=seq)  # fmt: skip
        case("stateful-unknown-batch", conv, {**base, "stateful": True}, "ValueError", SAME,
             "batch size", Sym(None, *seq.shape[1:]))  # fmt: skip
        case("kernel-larger-than-input", conv, {**base, "kernel_size": 9}, "ValueError", SAME,
             "kernel", seq)  # fmt: skip
        ints = {"jax": None, "tensorflow": "InvalidArgumentError", "torch": "RuntimeError"}
        case("int-inputs", conv, base, ints, KZOO, "inputs", seq.astype("int32"))
        case("mask-other-length", conv, base, {"jax": "ValueError", "tensorflow": "ValueError",
             "torch": None}, KZOO, "mask", seq, {"mask": np.ones((2, 7), bool)})  # fmt: skip
        case("spatial-change", conv, base, "ValueError", EXTENDS, "", _x(2, 3, 6, 6, 2), first=seq)


# --- ContextParallelAttention against MultiHeadAttention ----------------------------------------

Q = _x(2, 8, 6)
CPA = "ContextParallelAttention"
for arg, value in [("num_heads", "a"), ("num_heads", 0), ("num_heads", None), ("key_dim", "a"),
                   ("key_dim", 0), ("value_dim", "a")]:  # fmt: skip
    kwargs = {"num_heads": 2, "key_dim": 4, arg: value}
    case(f"{arg}-{value}", CPA, kwargs, "ValueError", SAME, arg, Q, {"value": Q})
kwargs = {"num_heads": 2, "key_dim": 4, "kernel_initializer": "bogus"}
case("kernel_initializer-bogus", CPA, kwargs, "ValueError", SAME, "bogus", Q, {"value": Q})


def _run(cls, spec):
    """Construct, build on ``first``, call on ``inputs``: the exception raised, or None."""
    try:
        layer = cls(**spec["kwargs"])
        if spec["inputs"] is None:
            return None
        if spec["first"] is not None:
            layer(spec["first"])
        inputs = spec["inputs"]
        layer(inputs.make() if isinstance(inputs, Sym) else inputs, **spec["call"])
    except Exception as error:  # noqa: BLE001 - the class is what is compared
        return error
    return None


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
@pytest.mark.parametrize("spec", CASES)
def test_dropin_raises_what_keras_raises(spec):
    keras_cls, kzoo_cls = PAIRS[spec["layer"]]
    expected = spec["keras"]
    if isinstance(expected, dict):
        expected = expected[BACKEND]
    keras_error = _run(keras_cls, spec)
    assert (type(keras_error).__name__ if keras_error else None) == expected, keras_error
    kzoo_error = _run(kzoo_cls, spec)
    if spec["rule"] == EXTENDS:
        assert kzoo_error is None, kzoo_error
        return
    if spec["argument"] == "missing":
        # Python's own TypeError for a missing argument: the signatures are keras's.
        assert type(kzoo_error) is type(keras_error) is TypeError, kzoo_error
        return
    assert isinstance(kzoo_error, ValueError), repr(kzoo_error)
    assert spec["argument"] in str(kzoo_error), kzoo_error
    if spec["rule"] == SAME:
        assert isinstance(kzoo_error, type(keras_error)), (keras_error, kzoo_error)
    elif isinstance(keras_error, ARGUMENT_CLASSES) and not spec["plain"]:
        assert isinstance(kzoo_error, type(keras_error)), (keras_error, kzoo_error)


def test_the_error_classes_are_keras_classes_and_value_errors():
    from kzoo.utils.errors import ArgumentIndexError, ArgumentTypeError

    with pytest.raises(TypeError) as type_error:
        kzoo.layers.LayerNormalization(axis={"axis": -1})
    with pytest.raises(IndexError) as index_error:
        kzoo.layers.RMSNormalization(axis=3)(X)
    assert type(type_error.value) is ArgumentTypeError
    assert isinstance(index_error.value, ArgumentIndexError)
    for error in (type_error.value, index_error.value):
        assert isinstance(error, ValueError)
