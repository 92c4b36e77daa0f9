"""BatchNorm statistics of a training step, for ``norm="sync"`` and ``norm="local"`` alike.

The one place that knows how to get, per BN layer, this rank's batch mean/var against the
global (all ranks) ones, and the time spent inside syncbn collectives:

- synchronized models: ``syncbn.record_stats`` sees every ``syncbn.SyncBatchNorm`` (global
  = the layer's sync group) and times its all_reduces;
- local models: forward pre-hooks on torch's BatchNorm layers capture the local sums (syncbn's
  ``local_moments``) on the steps that are reported, and one packed all_reduce over the world
  at report time gives the global statistics for comparison. Training never uses them, and
  ``sync_time_s`` is 0.
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
from contract.protocol import LayerSummary, RunningDigest
from syncbn import LayerStats
from syncbn._functions import local_moments, moments_to_mean_var


def _layer_stats(local: torch.Tensor, synced: torch.Tensor) -> LayerStats:
    """``LayerStats`` from this rank's packed moments and the all-reduced ones."""
    local_mean, local_var, local_count = moments_to_mean_var(local)
    global_mean, global_var, global_count = moments_to_mean_var(synced)
    return LayerStats(
        local_mean, local_var, int(local_count), global_mean, global_var, int(global_count)
    )


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
        self.allreduce_bytes_per_step = 0
        """Bytes this rank all-reduced for BatchNorm in one optimizer step (the same every
        step: one all_reduce per SyncBatchNorm layer forward and one backward)."""
        self._layers: dict[str, LayerStats] = {}
        self._captured: dict[str, torch.Tensor] = {}

    @contextmanager
    def step(self, detailed: bool) -> Iterator[None]:
        """Wrap forward + backward of one step; ``detailed`` keeps its per-layer statistics."""
        if self.synchronized:
            with syncbn.record_stats(self.model) as rec:
                yield
            self.sync_time_s += rec.sync_time_s
            self.allreduce_bytes_per_step = max(self.allreduce_bytes_per_step, rec.allreduce_bytes)
            if detailed:
                self._layers = dict(rec.layers)
            return
        if not detailed:
            yield
            return
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name, layer in self._local_layers.items():

            def hook(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                if module.training:
                    captured[name] = local_moments(args[0].detach())

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

    def layer_summaries(self) -> dict[str, LayerSummary]:
        """Per BN layer, the last detailed step: local vs global mean/var.

        For a local model this runs ONE all_reduce over the world: every rank must call it
        at the same point (it is called on report steps, which all ranks share).
        """
        if not self.synchronized and self._local_layers:
            self._layers = self._globalize(self._captured)
        return {
            name: LayerSummary(
                **stats.summary(),
                local_mean=float(stats.local_mean.float().mean()),
                global_mean=float(stats.global_mean.float().mean()),
                local_var=float(stats.local_var.float().mean()),
                global_var=float(stats.global_var.float().mean()),
            )
            for name, stats in self._layers.items()
        }

    def _globalize(self, captured: dict[str, torch.Tensor]) -> dict[str, LayerStats]:
        """Each captured layer's local moments against the world's: one packed all_reduce."""
        names = [n for n in self._local_layers if n in captured]
        if not names:
            return {}
        local = [captured[name] for name in names]
        packed = torch.cat(local)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(packed)
        synced = packed.split([vec.numel() for vec in local])
        return {
            name: _layer_stats(mine, world)
            for name, mine, world in zip(names, local, synced, strict=True)
        }


def running_stats_digest(model: nn.Module) -> dict[str, RunningDigest]:
    """Per BN layer: a hash of the running mean/var bytes and two plain summaries.

    Equal hashes on two ranks mean bit-identical running statistics.
    """
    out: dict[str, RunningDigest] = {}
    for name, layer in model.named_modules():
        if isinstance(layer, _BatchNorm) and layer.running_mean is not None:
            mean = layer.running_mean.detach().float().cpu().contiguous()
            var = layer.running_var.detach().float().cpu().contiguous()
            digest = hashlib.sha256(mean.numpy().tobytes() + var.numpy().tobytes()).hexdigest()
            out[name] = RunningDigest(
                sha256=digest[:16], mean_abs=float(mean.abs().mean()), var_mean=float(var.mean())
            )
    return out
