"""Whether this process is the ``kzoo`` command, and whether the command is still parsing.

Imports nothing of kzoo: read by ``kzoo/__init__.py`` and by the packages whose ``__init__``
imports keras while the parsers read light modules inside them (``kzoo.models``,
``kzoo.models.detr``: DETR's ``recipe.py`` and ``training/config.py`` give its flags'
defaults). While ``parsing`` is set those packages skip importing their contents, so that
``kzoo --help`` and argument errors load no framework; ``kzoo._import_all()`` (run once the
arguments have parsed) clears it and runs them in full.
"""

import os
import sys


def running_as_command():
    """Whether this process is ``kzoo`` (the console script) or ``python -m kzoo``."""
    if os.path.basename(sys.argv[0]) == "kzoo":
        return True
    # The interpreter's own options come before ``-m``; a later "-m" belongs to a script.
    argv = getattr(sys, "orig_argv", [])
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return argv[i + 1 : i + 2] == ["kzoo"]
        if arg.startswith("-m"):
            return arg == "-mkzoo"
        if not arg.startswith("-") or arg.startswith("-c") or arg == "--":
            return False
        i += 2 if arg in ("-X", "-W") else 1
    return False


parsing = running_as_command()
# Inner first: the outer package imports from the inner one.
LIGHT_PACKAGES = ("kzoo.models.detr", "kzoo.models")
