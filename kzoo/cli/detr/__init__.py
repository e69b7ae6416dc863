"""DETR's command-line targets: ``kzoo train detr`` (``train.py``), ``kzoo predict detr``
(``predict.py``), ``kzoo eval detr`` (``evaluate.py``) and ``kzoo convert detr``
(``convert.py``). Each module's ``register(commands)`` adds its parser (``kzoo.cli.targets``
lists them); the work is done by ``kzoo.models.detr``."""
