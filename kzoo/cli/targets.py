"""Modules that add model targets to ``kzoo train|predict|convert|eval|export``.

Each module defines ``register(commands)``, where ``commands`` maps a command name (``"train"``,
``"predict"``, ``"convert"``, ``"eval"``, ``"export"``) to its argparse sub-parsers; it adds a
parser per target and sets
``func`` to a function taking the parsed arguments. Heavy imports stay inside those functions so
that ``kzoo --help`` is fast.
"""

TARGET_MODULES = [
    "kzoo.models.conv_lstm.cli",
    "kzoo.cli.detr.convert",
    "kzoo.cli.detr.predict",
    "kzoo.cli.detr.train",
    "kzoo.cli.detr.evaluate",
    "kzoo.export.cli",
]
