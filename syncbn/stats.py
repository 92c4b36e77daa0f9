"""Observe what SyncBatchNorm layers see: local vs. global batch statistics and collective time.

Recording is opt-in through a context manager; when no recorder is active the layers pay one
``ContextVar.get()`` per call and nothing else. It is eager-only: layers running under
``torch.compile`` record nothing (their compiled graph does not read the recorder).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.distributed as dist

_active: ContextVar[StatsRecorder | None] = ContextVar("syncbn_recorder", default=None)


@dataclass(frozen=True)
class LayerStats:
    """One layer's last training batch: this rank's statistics and the synchronized ones."""

    local_mean: torch.Tensor
    local_var: torch.Tensor
    local_count: int
    global_mean: torch.Tensor
    global_var: torch.Tensor
    global_count: int

    def mean_shift(self, eps: float = 1e-5) -> float | None:
        """Mean over channels of |mu_local - mu_global| / sigma_global (None for an empty batch)."""
        if self.local_count == 0:
            return None
        sigma = (self.global_var + eps).sqrt()
        return ((self.local_mean - self.global_mean).abs() / sigma).mean().item()

    def var_ratio(self) -> float | None:
        """Mean over channels of var_local / var_global (None for an empty batch)."""
        if self.local_count == 0:
            return None
        return (self.local_var / self.global_var.clamp_min(1e-12)).mean().item()

    def summary(self) -> dict[str, float | int | None]:
        """Plain numbers for a report."""
        return {
            "local_count": self.local_count,
            "global_count": self.global_count,
            "mean_shift": self.mean_shift(),
            "var_ratio": self.var_ratio(),
        }


class StatsRecorder:
    """Collects the last LayerStats per layer and the time spent inside syncbn collectives."""

    def __init__(self, names: dict[int, str] | None = None) -> None:
        self._names = names or {}
        self.layers: dict[str, LayerStats] = {}
        self.sync_time_s = 0.0
        self.collectives = 0
        self.allreduce_bytes = 0
        """Bytes of the buffers this rank all-reduced (what it contributes to the collectives)."""

    def name_of(self, layer: object) -> str:
        return self._names.get(id(layer), f"layer{id(layer):x}")

    def record_layer(self, layer: object, stats: LayerStats) -> None:
        self.layers[self.name_of(layer)] = stats

    def timed_all_reduce(self, tensor: torch.Tensor, group: dist.ProcessGroup | None) -> None:
        """all_reduce(SUM), adding its wall time (device-synchronized) to ``sync_time_s`` and its
        buffer's bytes to ``allreduce_bytes``."""
        cuda = tensor.is_cuda
        if cuda:
            torch.cuda.synchronize(tensor.device)
        start = time.perf_counter()
        dist.all_reduce(tensor, group=group)
        if cuda:
            torch.cuda.synchronize(tensor.device)
        self.sync_time_s += time.perf_counter() - start
        self.collectives += 1
        self.allreduce_bytes += tensor.numel() * tensor.element_size()


def active_recorder() -> StatsRecorder | None:
    """The recorder of the innermost ``record_stats`` block, if any."""
    return _active.get()


@contextmanager
def record_stats(model: torch.nn.Module | None = None) -> Iterator[StatsRecorder]:
    """Record per-layer statistics and collective time for the forward/backward passes inside.

    Layers are named as in ``model.named_modules()`` when a model is given.

    >>> with record_stats(model) as rec:
    ...     model(x).sum().backward()
    >>> rec.layers["bn1"].mean_shift(), rec.sync_time_s
    """
    names = {id(m): n for n, m in model.named_modules()} if model is not None else {}
    recorder = StatsRecorder(names)
    token = _active.set(recorder)
    try:
        yield recorder
    finally:
        _active.reset(token)
