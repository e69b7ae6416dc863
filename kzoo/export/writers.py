"""How an artifact is written: keras's ``model.export``, per backend through the dispatch.

The dispatch op ``export_artifact`` maps ``(serving model, path, format, signature, fixed
sizes, verbose)`` to a written artifact; ``export_fixed_dims`` maps ``(signature, format)`` to
the free dimensions that backend's converter cannot leave free. The portable writer below hands keras the signature's
specs; each backend package registers what its converter needs on top
(``kzoo/backends/{jax,tensorflow,torch}/export.py``).
"""

from kzoo.backends import dispatch
from kzoo.backends.common.export import KERAS_FORMATS, export_with_keras  # noqa: F401

OP = "export_artifact"
FIXED_OP = "export_fixed_dims"
# keras's format names -> kzoo's (the inverse of KERAS_FORMATS).
KERAS_TO_KZOO = {keras_name: name for name, keras_name in KERAS_FORMATS.items()}


dispatch.register(
    OP,
    dispatch.Implementation(
        name="keras",
        target="kzoo.backends.common.export:export_with_keras",
        description="keras's model.export with kzoo's input signature",
    ),
    fallback=True,
)


def no_fixed_dims(signature, format):
    return ()


dispatch.register(
    FIXED_OP,
    dispatch.Implementation(
        name="none",
        target="kzoo.export.writers:no_fixed_dims",
        description="every free dimension stays free",
    ),
    fallback=True,
)


def writer():
    """The writer for this backend."""
    return dispatch.select(OP).load()


def fixed_dims(signature, format):
    """The signature's free dimensions this backend must fix to export ``format``."""
    return tuple(dispatch.select(FIXED_OP).load()(signature, format))
