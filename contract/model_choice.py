"""Which built-in network a job gets, and whether it can train on the data: ``model="auto"``
picks ``unet`` for segmentation; for classification it picks by the shape of one sample:

- ``(C, H, W)`` or ``(H, W)`` (two comparable sides) -> ``resnet``: a small ResNet-style CNN
  with BatchNorm2d;
- ``(C, L)`` with few channels and a long axis (C <= 8 and L >= 4 C) or ``(L,)`` with
  L >= 128 -> ``cnn1d``: a 1-D CNN with BatchNorm1d;
- ``(F,)`` with F < 128 -> ``mlp`` with BatchNorm1d.

Name a model explicitly when the heuristic guesses wrong (e.g. a long flat feature vector).
``unet`` takes only segmentation data, the other models only classification data. Pure
Python: the service checks a submission with it (the networks are ``workers.nets``)."""

from __future__ import annotations

from contract.datasets import DatasetError, DatasetInfo, Task
from contract.spec import JobSpec

SEQUENCE_MIN_LENGTH = 128


def infer_kind(input_shape: tuple[int, ...], task: Task = "classification") -> str:
    """The model ``auto`` picks for samples of ``input_shape`` (batch dimension excluded)."""
    if task == "segmentation":
        return "unet"
    if len(input_shape) == 3:
        return "resnet"
    if len(input_shape) == 2:
        channels, length = input_shape
        return "cnn1d" if channels <= 8 and length >= 4 * channels else "resnet"
    if len(input_shape) == 1:
        return "cnn1d" if input_shape[0] >= SEQUENCE_MIN_LENGTH else "mlp"
    raise ValueError(f"no model for samples of shape {input_shape}")


NORM_CHANNELS: dict[str, tuple[int, ...]] = {
    "mlp": (64,),
    "cnn1d": (16, 32),
    "resnet": (16, 32),
    "unet": (16, 32, 64),
}
"""The channel counts of each built-in model's BatchNorm layers (``workers/nets.py``; a unit
test keeps the two in step), so a ``group_norm_groups`` that cannot divide them is refused at
submit instead of failing in the workers."""


def check_compatible(kind: str, input_shape: tuple[int, ...]) -> None:
    """Raise ValueError when model ``kind`` cannot take samples of ``input_shape``."""
    allowed = {"mlp": (1, 2, 3), "cnn1d": (1, 2), "resnet": (2, 3), "unet": (2, 3)}[kind]
    if len(input_shape) not in allowed:
        raise ValueError(f"model {kind!r} cannot take samples of shape {input_shape}")


def check_data(spec: JobSpec, info: DatasetInfo) -> None:
    """Raise ``DatasetError`` (naming the JobSpec field) if ``spec`` cannot train on the data
    ``info`` describes: the model must suit the task and take its samples, and an MLP's
    BatchNorm1d must not be left one value per channel. A code bundle's builder (``spec.code``)
    is not checked here."""
    if spec.code is not None:
        return
    kind = infer_kind(info.input_shape, info.task) if spec.model == "auto" else spec.model
    if info.task == "segmentation" and kind != "unet":
        raise DatasetError(
            f"{info.describe()}: model {kind!r} predicts one class per sample, but this data "
            'has per-pixel masks: use model="unet" (or "auto")',
            field="model",
        )
    if info.task != "segmentation" and kind == "unet":
        raise DatasetError(
            f"{info.describe()}: model 'unet' predicts a class per pixel, but this data has one "
            'label per sample: use a classification model (or "auto")',
            field="model",
        )
    try:
        check_compatible(kind, info.input_shape)
    except ValueError as exc:
        raise DatasetError(f"{info.describe()}: {exc}", field="model") from exc
    group = spec.sync_group_size or spec.workers
    alone = spec.norm == "local" or (spec.norm == "sync" and group == 1)
    if kind == "mlp" and spec.batch_size_per_worker == 1 and alone:
        raise DatasetError(
            "batch_size_per_worker=1 leaves an MLP's BatchNorm1d one value per channel when "
            'statistics are not shared: use norm="sync" with several workers, norm="group" '
            "(batch-independent) or a larger batch",
            field="batch_size_per_worker",
        )
    groups = spec.group_norm_groups
    if spec.norm == "group" and groups and any(c % groups for c in NORM_CHANNELS[kind]):
        raise DatasetError(
            f"model {kind!r} has BatchNorm layers of {', '.join(map(str, NORM_CHANNELS[kind]))} "
            f"channels: {groups} groups must divide each (or leave group_norm_groups unset for "
            "the largest divisor up to 32)",
            field="group_norm_groups",
        )
