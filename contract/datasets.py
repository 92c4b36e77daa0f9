"""What the service and the workers agree on about datasets, without loading any: the task
kinds, ``DatasetInfo``, ``DatasetError`` (naming the JobSpec field and, for a limit, the
service setting), label rules, the built-in datasets' shapes and the step count of an epoch.

Pure Python: the service imports it at start (no numpy, torch or scikit-learn)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Task = Literal["classification", "segmentation"]


class DatasetError(ValueError):
    """A dataset that cannot be used, with a message saying why.

    ``field`` names the JobSpec field the problem is about (``dataset`` unless the data is
    fine but the job's ``model`` or ``batch_size_per_worker`` cannot use it). ``setting``, on
    errors about a configurable limit, names the service ``Settings`` field that sets it
    (``max_upload_bytes``, ``max_upload_images``, ``max_image_pixels``,
    ``max_decoded_pixels``: environment variable ``SYNCBN_<SETTING>``); None otherwise.
    """

    def __init__(self, message: str, field: str = "dataset", setting: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.setting = setting


@dataclass(frozen=True)
class DatasetInfo:
    """What a job needs to know of a dataset without loading it."""

    name: str
    n_train: int
    input_shape: tuple[int, ...]
    num_classes: int
    task: Task = "classification"
    class_names: tuple[str, ...] | None = None

    def describe(self) -> str:
        what = "pixel classes" if self.task == "segmentation" else "classes"
        return (
            f"{self.name}: {self.n_train} train samples of shape {self.input_shape}, "
            f"{self.num_classes} {what}"
        )


MAX_CLASSES = 1000


IGNORE_LABEL = 255
"""Segmentation masks: pixels with this label count neither in the loss nor in the metrics."""


SEGMENTATION_MAX_CLASSES = min(MAX_CLASSES, IGNORE_LABEL)
"""Mask labels are 0 .. 254 (255 is ``IGNORE_LABEL``, never a class)."""


SHAPES_CLASSES = ("background", "circle", "square", "triangle")


METRIC_LABELS = {"test_accuracy": "accuracy", "test_miou": "mIoU"}
"""The test metric that says how good a job of each task is, and its name in words."""


def metric_for(task: Task) -> str:
    """The result field that compares jobs of ``task``: ``test_miou`` for segmentation (pixel
    accuracy hides small classes), else ``test_accuracy``."""
    return "test_miou" if task == "segmentation" else "test_accuracy"


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ``IMG_EXTENSIONS``: the image files an image folder may hold and predict
takes (compared case-insensitively)."""

BUILTIN_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 1347, (8, 8), 10),
    "synthetic": DatasetInfo("synthetic", 1024, (16,), 4),
    "shapes": DatasetInfo("shapes", 600, (3, 24, 24), 4, "segmentation", SHAPES_CLASSES),
}
"""What the built-in datasets hold (``workers.data.builtin`` makes them; a test checks that
they agree), known here without loading them."""


def builtin_info(name: str) -> DatasetInfo:
    """``DatasetInfo`` of a built-in dataset."""
    if name not in BUILTIN_INFO:
        raise DatasetError(f"{name!r} is not a built-in dataset")
    return BUILTIN_INFO[name]


def steps_per_epoch(n: int, world: int, batch_size: int) -> int:
    """Optimizer steps per epoch on every rank for ``n`` training samples: each rank gets
    ``ceil(n / world)`` of them in consecutive batches, a lone trailing sample joining the
    previous batch (``workers.data.shard``)."""
    per_rank = math.ceil(n / world)
    steps = math.ceil(per_rank / batch_size)
    if steps > 1 and batch_size > 1 and per_rank % batch_size == 1:
        steps -= 1
    return steps
