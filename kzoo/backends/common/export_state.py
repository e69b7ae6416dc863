"""What an exporter promises the code it traces: which free dimensions it has fixed in size.

A tracing exporter (torch.onnx's TorchScript tracer) records one run of eager code. Code that
cannot express a computation for every size of a dimension (a ConvLSTM loop whose activation
has no TorchScript form) may still run eagerly while being traced when the exporter declares
that dimension fixed: the artifact then takes that one size and its runtime refuses the others.
``kzoo.export.export_model`` declares the dimensions it fixes (``fixed_sizes``) here; keras's
own ``model.export`` declares nothing, so such code raises instead of being recorded wrongly.
"""

import contextlib
import contextvars

_FIXED = contextvars.ContextVar("kzoo_export_fixed_dims", default=frozenset())


@contextlib.contextmanager
def fixing(dims):
    """Within this block, the running exporter fixes the sizes of the dimensions ``dims``."""
    token = _FIXED.set(frozenset(dims))
    try:
        yield
    finally:
        _FIXED.reset(token)


def fixed_dims():
    """The dimensions the running export has fixed in size (empty outside ``fixing``)."""
    return _FIXED.get()
