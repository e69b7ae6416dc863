"""Training DETR: the set loss and its Hungarian matcher, the optimizer, the training engine,
DETR's own callbacks, COCO evaluation and fine-tuning a preset with a new class head."""
