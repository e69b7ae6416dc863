"""DETR the network: ``DETR`` (``detr.py``), its ResNet backbone, the ``DETRHead`` (input
projection, position embedding, transformer, class and box branches), input checks,
post-processing, COCO's label names and ``DETRDetections`` (post-processing in the graph, for
export). Nothing here imports the training or conversion code beside it."""
