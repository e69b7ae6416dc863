"""Export from TensorFlow: keras's writers, with an ONNX conversion tf2onnx lacks.

tf2onnx 1.17 has no handler for TensorFlow's ``Erfc``, which ``tf.nn.gelu`` (keras's exact
GELU on TensorFlow) computes with: the op is copied into the ONNX graph unconverted and ONNX
Runtime refuses the file. ``erfc(x) = 1 - erf(x)`` with ONNX's ``Erf`` (opset 9+) fills the
gap; in float32 the two differ by at most about 6e-8 in absolute value.
"""

import numpy as np

from kzoo.export.writers import export_with_keras

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


def export_artifact(serving, path, format, signature, fixed, verbose=False):
    if format == "onnx":
        _register_erfc()
    return export_with_keras(serving, path, format, signature, fixed, verbose=verbose)
