"""Exception classes that keep kzoo's promise and keras's at once.

kzoo refuses a bad argument with a ``ValueError`` that names it. For some mistakes keras's layers
raise another class: a ``TypeError`` for an argument of the wrong type (``LayerNormalization(
axis={"axis": -1})``), an ``IndexError`` for an axis out of range or a missing state, and code
written against keras catches that class. kzoo's drop-in layers raise these subclasses, which
are both: a ``ValueError`` as every kzoo refusal is, and keras's class for code that catches
keras's error (as ``numpy.exceptions.AxisError`` is both a ``ValueError`` and an
``IndexError``).
"""


class ArgumentTypeError(ValueError, TypeError):
    """An argument of the wrong type (keras raises ``TypeError`` for these)."""


class ArgumentIndexError(ValueError, IndexError):
    """An axis out of range, or a list of states or a mask of the wrong length or rank (keras
    raises ``IndexError`` for these)."""
