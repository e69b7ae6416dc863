"""Export from TensorFlow: keras's writers, with two tf2onnx 1.17 problems worked around.

- tf2onnx has no handler for TensorFlow's ``Erfc``, which ``tf.nn.gelu`` (keras's exact GELU
  on TensorFlow) computes with: the op is copied into the ONNX graph unconverted and ONNX
  Runtime refuses the file. ``erfc(x) = 1 - erf(x)`` with ONNX's ``Erf`` (opset 9+) fills the
  gap; in float32 the two differ by at most about 6e-8 in absolute value.
- Its ``reshape_optimizer`` rewrites a reshape whose shape is computed from its input's shape
  into one that copies dimensions from the input (``0`` entries); ``remove_back_to_back`` then
  merges it with the reshape before it, so the copied dimensions come from the wrong tensor.
  keras's ``Dense`` on 3D inputs (``tf.tensordot``: reshape, matmul, reshape) followed by a
  heads reshape hits this: ONNX Runtime fails with "cannot reshape {12,32} to {12,32,4,8}".
  The conversion runs without ``reshape_optimizer`` (its only gain is constant shapes).
"""

import contextlib

import numpy as np

from kzoo.backends.common.export import export_with_keras

_registered = False


def _register_erfc():
    global _registered
    if _registered:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    known = any("Erfc" in ops for opsets in tf_op.get_opsets().values() for ops in opsets)
    if not known:

        @tf_op("Erfc")
        class Erfc:
            @classmethod
            def version_9(cls, ctx, node, **kwargs):
                dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
                one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype))
                erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
                node.type = "Sub"
                ctx.replace_inputs(node, [one.output[0], erf.output[0]])

    _registered = True


@contextlib.contextmanager
def _without_optimizers(*names):
    from tf2onnx import optimizer

    table = optimizer._get_optimizers()
    saved = list(table.items())
    for name in names:
        table.pop(name, None)
    try:
        yield
    finally:
        table.clear()
        table.update(saved)


def export_artifact(serving, path, format, signature, fixed, verbose=False):
    if format != "onnx":
        return export_with_keras(serving, path, format, signature, fixed, verbose=verbose)
    _register_erfc()
    with _without_optimizers("reshape_optimizer"):
        return export_with_keras(serving, path, format, signature, fixed, verbose=verbose)
