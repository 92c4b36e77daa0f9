"""What a rank measures: training statistics between reports (``Window``), the loss and hits
of a batch, the confusion matrix of segmentation and its pixel accuracy and mean IoU, and
the evaluation over the whole test set, all-reduced so that every rank has the same numbers."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from contract.datasets import IGNORE_LABEL
from workers.data.arrays import ArrayDataset
from workers.data.shard import eval_indices

EVAL_BATCH = 512


EVAL_PIXELS = 512 * 32 * 32
"""Evaluation batches hold at most EVAL_BATCH samples and, for segmentation, EVAL_PIXELS
pixels (at least one image)."""


class Window:
    """Training statistics accumulated since the last report.

    ``samples`` counts images (throughput); loss and accuracy are means over the counted
    predictions: samples for classification, non-ignored pixels for segmentation.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.end: float | None = None
        self.steps = 0
        self.samples = 0
        self.counted = 0
        self.loss_sum = 0.0
        self.correct = 0
        self.step_time = 0.0

    def add(self, n: int, loss: float, correct: int, counted: int, step_time: float) -> None:
        """One step of ``n`` samples: mean ``loss`` and ``correct`` of ``counted`` predictions."""
        self.steps += 1
        self.samples += n
        self.counted += counted
        self.loss_sum += loss * counted
        self.correct += correct
        self.step_time += step_time

    def close(self) -> None:
        """Stop the clock (before evaluation and checkpointing, which are not training)."""
        self.end = time.perf_counter()

    def stats(self, sync_time: float) -> dict[str, float]:
        wall = (self.end or time.perf_counter()) - self.start
        steps, counted = max(self.steps, 1), max(self.counted, 1)
        return {
            "loss": self.loss_sum / counted,
            "train_accuracy": self.correct / counted,
            "samples_per_s": self.samples / wall if wall > 0 else 0.0,
            "step_time_s": self.step_time / steps,
            "sync_time_s": sync_time / steps,
        }


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over ``array`` (copied if read-only, as arrays from the object store are)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def all_reduce_sum(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """SUM over all ranks of a small CPU tensor (through ``device`` for NCCL); a CPU result."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = tensor.to(on)
    dist.all_reduce(tensor)
    return tensor.cpu()


def loss_and_hits(
    out: torch.Tensor, y: torch.Tensor, segmentation: bool, reduction: str = "mean"
) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy of a batch (``reduction`` "mean" or "sum"), its correct predictions and
    how many were counted: samples, or for segmentation the pixels not labelled
    ``IGNORE_LABEL`` (the mean is over those; 0 if there are none)."""
    pred = out.detach().argmax(1)
    if not segmentation:
        return F.cross_entropy(out, y, reduction=reduction), int((pred == y).sum()), len(y)
    valid = y != IGNORE_LABEL
    counted = int(valid.sum())
    loss = F.cross_entropy(out, y, ignore_index=IGNORE_LABEL, reduction="sum")
    if reduction == "mean":
        loss = loss / max(counted, 1)
    return loss, int(((pred == y) & valid).sum()), counted


def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 ``(num_classes, num_classes)`` counts of (target, prediction) pixel pairs;
    ``IGNORE_LABEL`` pixels are left out."""
    valid = y != IGNORE_LABEL
    pairs = (y[valid] * num_classes + pred[valid]).cpu()
    counts = torch.bincount(pairs, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).to(torch.int64)


def confusion_metrics(confusion: torch.Tensor) -> tuple[float, float | None]:
    """Pixel accuracy and mean IoU of a (target, prediction) confusion matrix.

    The mean is over the classes that occur in the targets or the predictions (a class whose
    union is empty is left out); (0.0, None) when no pixel was counted.
    """
    counts = confusion.to(torch.float64)
    hits = counts.diagonal()
    union = counts.sum(0) + counts.sum(1) - hits
    present = union > 0
    if not present.any():
        return 0.0, None
    return float(hits.sum() / counts.sum()), float((hits[present] / union[present]).mean())


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """``torch.autocast`` to bfloat16 for ``precision="bf16"`` (disabled for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def evaluate(
    model: nn.Module,
    data: ArrayDataset,
    rank: int,
    world: int,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, float | int | None]:
    """Accuracy and mean loss over the WHOLE test set; identical on every rank.

    Segmentation: pixel accuracy and ``test_miou`` from the confusion matrix (all-reduced
    once), the loss per non-ignored pixel.
    """
    segmentation = data.task == "segmentation"
    k = data.num_classes
    batch = EVAL_BATCH
    if segmentation:
        batch = max(1, min(EVAL_BATCH, EVAL_PIXELS // math.prod(data.y_test.shape[1:])))
    model.eval()
    idx = eval_indices(len(data.x_test), rank, world)
    totals = torch.zeros(4, dtype=torch.float64)  # correct, loss sum, counted, samples
    confusion = torch.zeros((k, k), dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, len(idx), batch):
            part = idx[start : start + batch]
            x = torch.from_numpy(data.x_test[part]).to(device)
            y = torch.from_numpy(data.y_test[part]).to(device)
            with autocast(precision, device):
                out = model(x).float()
            loss, correct, counted = loss_and_hits(out, y, segmentation, reduction="sum")
            totals += torch.tensor([correct, loss.item(), counted, len(part)], dtype=torch.float64)
            if segmentation:
                confusion += confusion_matrix(out.argmax(1), y, k)
    model.train()
    totals = all_reduce_sum(totals, device)
    count = max(int(totals[2].item()), 1)
    result: dict[str, float | int | None] = {
        "test_accuracy": totals[0].item() / count,
        "test_loss": totals[1].item() / count,
        "test_samples": int(totals[3].item()),
    }
    if segmentation:
        confusion = all_reduce_sum(confusion, device)
        result["test_accuracy"], result["test_miou"] = confusion_metrics(confusion)
    return result
