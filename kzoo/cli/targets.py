"""Modules that add model targets to ``kzoo train|predict|convert|eval|export``.

Each module defines ``register(commands)``, where ``commands`` maps a command name (``"train"``,
``"predict"``, ``"convert"``, ``"eval"``, ``"export"``) to its argparse sub-parsers; it adds a
parser per target and sets
``func`` to a function taking the parsed arguments. A target module imports no framework (keras,
TensorFlow, JAX, torch, numpy, nor any kzoo module that does): its heavy imports stay inside
those functions, so ``kzoo --help`` and argument errors load none of them
(``tests/cli/test_cli.py`` checks).
"""

TARGET_MODULES = [
    "kzoo.cli.convlstm",
    "kzoo.cli.detr.convert",
    "kzoo.cli.detr.predict",
    "kzoo.cli.detr.train",
    "kzoo.cli.detr.evaluate",
    "kzoo.cli.export",
]
