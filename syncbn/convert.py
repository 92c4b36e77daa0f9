"""Swap torch's BatchNorm layers for SyncBatchNorm and back, sharing parameters and buffers."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from syncbn.batchnorm import SyncBatchNorm

CONVERTIBLE = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
)


def _moved(source: _BatchNorm, target: _BatchNorm) -> _BatchNorm:
    """``target`` with ``source``'s parameters, buffers, mode and extra attributes (shared)."""
    target.weight, target.bias = source.weight, source.bias
    target.running_mean = source.running_mean
    target.running_var = source.running_var
    target.num_batches_tracked = source.num_batches_tracked
    target.train(source.training)
    if hasattr(source, "qconfig"):
        target.qconfig = source.qconfig
    return target


def _with_children(module: torch.nn.Module, out: torch.nn.Module, fn) -> torch.nn.Module:
    for name, child in module.named_children():
        out.add_module(name, fn(child))
    return out


def convert_sync_batchnorm(
    module: torch.nn.Module, process_group: dist.ProcessGroup | None = None
) -> torch.nn.Module:
    """Replace every BatchNorm1d/2d/3d and torch.nn.SyncBatchNorm in ``module`` by SyncBatchNorm.

    The new layers share the old ones' parameters and buffers and keep their train/eval
    mode, so optimizers and checkpoints keep working. Returns the converted module (the
    same object unless ``module`` itself is a batch norm).
    """
    out = module
    if isinstance(module, CONVERTIBLE) and not isinstance(module, SyncBatchNorm):
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            raise ValueError("cannot convert an uninitialized lazy batch norm: run a forward first")
        out = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
            bias=module.bias is not None,
        )
        _moved(module, out)
        if not isinstance(module, torch.nn.SyncBatchNorm):
            out.torch_class = type(module)
    return _with_children(module, out, lambda child: convert_sync_batchnorm(child, process_group))


def revert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every syncbn.SyncBatchNorm by the torch BatchNorm*d it came from (for export)."""
    out = module
    if isinstance(module, SyncBatchNorm):
        if module.torch_class is None:
            raise ValueError(
                "cannot tell whether this SyncBatchNorm is 1d, 2d or 3d: it was not converted "
                "from a torch batch norm and has seen no input; run one forward pass first"
            )
        out = module.torch_class(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            bias=module.bias is not None,
        )
        _moved(module, out)
    return _with_children(module, out, revert_sync_batchnorm)
