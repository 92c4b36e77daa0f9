"""BatchNorm statistics of a training step, for ``norm="sync"`` and ``norm="local"`` alike.

The one place that knows how to get, per BN layer, this rank's batch mean/var against the
global (all ranks) ones, and the time spent inside syncbn collectives:

- synchronized models: ``syncbn.record_stats`` sees every ``syncbn.SyncBatchNorm`` (global
  = the layer's sync group) and times its all_reduces;
- local models: forward pre-hooks on torch's BatchNorm layers capture the local sums on the
  steps that are reported, and one packed all_reduce over the world at report time gives the
  global statistics for comparison. Training never uses them, and ``sync_time_s`` is 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import syncbn
from syncbn import LayerStats


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel sum, sum of squares (fp64) and count over all dims but dim 1."""
    x = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
    return x.sum(1), (x * x).sum(1), x.shape[1]


def _moments(vec: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean, biased variance and count from a packed [sum (C), sum of squares (C), n]."""
    s1, s2, n = vec[:channels], vec[channels : 2 * channels], vec[-1]
    mean = s1 / n.clamp_min(1)
    return mean, (s2 / n.clamp_min(1) - mean * mean).clamp_min(0), int(n)


class BNProbe:
    """Per-step BN statistics and syncbn collective time of one (unwrapped, non-DDP) model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.synchronized = any(isinstance(m, syncbn.SyncBatchNorm) for m in model.modules())
        self._local_layers = {
            name: m
            for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and not isinstance(m, syncbn.SyncBatchNorm)
        }
        self.sync_time_s = 0.0
        self._layers: dict[str, LayerStats] = {}
        self._captured: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    @contextmanager
    def step(self, detailed: bool) -> Iterator[None]:
        """Wrap forward + backward of one step; ``detailed`` keeps its per-layer statistics."""
        if self.synchronized:
            with syncbn.record_stats(self.model) as rec:
                yield
            self.sync_time_s += rec.sync_time_s
            if detailed:
                self._layers = dict(rec.layers)
            return
        if not detailed:
            yield
            return
        captured: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
        handles = []
        for name, layer in self._local_layers.items():

            def hook(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                if module.training:
                    captured[name] = _channel_stats(args[0])

            handles.append(layer.register_forward_pre_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        self._captured = captured

    def take_sync_time(self) -> float:
        """Seconds inside syncbn collectives since the last call."""
        spent, self.sync_time_s = self.sync_time_s, 0.0
        return spent

    def layer_summaries(self) -> dict[str, dict[str, float | int | None]]:
        """Per BN layer, the last detailed step: local vs global mean/var.

        For a local model this runs ONE all_reduce over the world: every rank must call it
        at the same point (it is called on report steps, which all ranks share).
        """
        if not self.synchronized and self._local_layers:
            self._layers = self._globalize(self._captured)
        out: dict[str, dict[str, float | int | None]] = {}
        for name, stats in self._layers.items():
            summary = dict(stats.summary())
            summary["local_mean"] = float(stats.local_mean.float().mean())
            summary["global_mean"] = float(stats.global_mean.float().mean())
            summary["local_var"] = float(stats.local_var.float().mean())
            summary["global_var"] = float(stats.global_var.float().mean())
            out[name] = summary
        return out

    def _globalize(
        self, captured: dict[str, tuple[torch.Tensor, torch.Tensor, int]]
    ) -> dict[str, LayerStats]:
        names = [n for n in self._local_layers if n in captured]
        if not names:
            return {}
        packed = torch.cat(
            [torch.cat([s1, s2, s1.new_tensor([n])]) for s1, s2, n in (captured[k] for k in names)]
        )
        local = packed.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(packed)
        out, offset = {}, 0
        for name in names:
            channels = captured[name][0].numel()
            width = 2 * channels + 1
            lm, lv, ln = _moments(local[offset : offset + width], channels)
            gm, gv, gn = _moments(packed[offset : offset + width], channels)
            out[name] = LayerStats(lm, lv, ln, gm, gv, gn)
            offset += width
        return out


def running_stats_digest(model: nn.Module) -> dict[str, dict[str, float | str]]:
    """Per BN layer: a hash of the running mean/var bytes and two plain summaries.

    Equal hashes on two ranks mean bit-identical running statistics.
    """
    out: dict[str, dict[str, float | str]] = {}
    for name, layer in model.named_modules():
        if isinstance(layer, _BatchNorm) and layer.running_mean is not None:
            mean = layer.running_mean.detach().float().cpu().contiguous()
            var = layer.running_var.detach().float().cpu().contiguous()
            digest = hashlib.sha256(mean.numpy().tobytes() + var.numpy().tobytes()).hexdigest()
            out[name] = {
                "sha256": digest[:16],
                "mean_abs": float(mean.abs().mean()),
                "var_mean": float(var.mean()),
            }
    return out
