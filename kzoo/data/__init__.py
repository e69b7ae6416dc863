"""kzoo.data."""

from kzoo.data import detr_transforms, images  # noqa: E402,F401
from kzoo.data.coco import CocoDetection, export_coco  # noqa: E402,F401
from kzoo.data.coco_eval import evaluate_detections  # noqa: E402,F401
from kzoo.data.detection import SyntheticDetection  # noqa: E402,F401
from kzoo.data.moving_mnist import MOVING_MNIST_URL, load_moving_mnist  # noqa: E402,F401
from kzoo.data.moving_objects import (  # noqa: E402,F401
    MovingObjectsDataset,
    moving_objects,
    next_frame_targets,
)
from kzoo.data.video_folder import VideoFolder  # noqa: E402,F401
