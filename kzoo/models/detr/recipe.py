"""DETR's training and evaluation recipe: every size and default in one place.

The published recipe (facebookresearch/detr, ``main.py`` and ``datasets/coco.py``) and kzoo's own
defaults for what it adds (training from scratch on the synthetic shapes, the learning-rate
drop). Everything in kzoo that resizes, trains or evaluates a DETR reads these, or receives them
as arguments: ``kzoo.data`` (a lower layer, which cannot import models) keeps the same values as
the defaults of ``kzoo.data.images`` and ``kzoo.data.detr_transforms``, and DETR's code passes
the recipe's explicitly (``tests/models/detr/test_recipe.py`` checks that they agree).
"""

# Evaluation resize: the shorter side to EVAL_SIZE, the longer one capped at MAX_SIZE.
EVAL_SIZE = 800
MAX_SIZE = 1333
# Training augmentation, for EVAL_SIZE (``scaled`` adapts them to another image size): the
# multi-scale resize of the shorter side, and the resize-then-crop branch.
TRAIN_SCALES = tuple(range(480, 801, 32))
CROP_RESIZE = (400, 500, 600)
CROP_SIZE = (384, 600)

# The optimizer (AdamW): DETR's recipe, which fine-tuning a preset follows.
LEARNING_RATE = 1e-4
BACKBONE_LR_SCALE = 0.1  # the backbone at 1e-5
WEIGHT_DECAY = 1e-4
CLIP_NORM = 0.1  # global gradient norm
LR_DROP_FACTOR = 0.1  # the learning rate drops 10x ...
LR_DROP = 0.8  # ... after this fraction of the steps (kzoo's; DETR drops at epoch 200 of 300)

# Training-only queries (off by default): DN-DETR's noise (denoising groups are DN-DETR's 5 when
# turned on) and Group DETR's groups (LW-DETR and RF-DETR train with 13).
DN_GROUPS = 5
DN_BOX_NOISE_SCALE = 0.4
DN_LABEL_NOISE_RATIO = 0.2

# Training from scratch (kzoo's defaults for the small backbone, which has no pretrained
# weights): a higher learning rate, the backbone at half of it, no dropout.
SCRATCH_LEARNING_RATE = 5e-4
SCRATCH_BACKBONE_LR_SCALE = 0.5
SCRATCH_DROPOUT = 0.0

# The synthetic shapes run (``kzoo train detr`` without data): its images and its small DETR.
SYNTHETIC = {
    "image_size": 96,
    "num_classes": 3,
    "max_objects": 4,
    "num_queries": 10,
    "d_model": 64,
    "num_heads": 4,
    "num_encoder_layers": 2,
    "num_decoder_layers": 3,
    "ffn_dim": 128,
}
SYNTHETIC_TRAIN_IMAGES = 4096
SYNTHETIC_EVAL_IMAGES = 256
# The held-out images' seed is the training seed plus this: they share no generator state.
HELD_OUT_SEED_OFFSET = 1_000_000


def scaled(sizes, image_size):
    """DETR's ``sizes`` (for ``EVAL_SIZE``-pixel evaluation) scaled to ``image_size``: distinct,
    sorted, at least 1."""
    return tuple(sorted({max(1, round(s * image_size / EVAL_SIZE)) for s in sizes}))


def default_max_size(image_size):
    """The longer-side cap that goes with a shorter side of ``image_size`` (1333 for 800)."""
    return max(image_size, round(image_size * MAX_SIZE / EVAL_SIZE))
