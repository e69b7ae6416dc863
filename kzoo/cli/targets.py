"""Modules that add model targets to ``kzoo train|predict|convert|eval|export``.

Each module defines ``register(commands)``, where ``commands`` maps a command name (``"train"``,
``"predict"``, ``"convert"``, ``"eval"``, ``"export"``) to its argparse sub-parsers; it adds a
parser per target and sets
``func`` to a function taking the parsed arguments. Heavy imports stay inside those functions so
that ``kzoo --help`` is fast.
"""

TARGET_MODULES = [
    "kzoo.models.conv_lstm.cli",
    "kzoo.models.detr.cli",
    "kzoo.models.detr.train_cli",
    "kzoo.models.detr.eval_cli",
    "kzoo.export.cli",
]
