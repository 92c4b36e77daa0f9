"""Functional synchronized batch norm (the module's engine)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from syncbn._functions import SyncBatchNormFunction
from syncbn._ops import traceable_sync_batch_norm
from syncbn.groups import group_world_size
from syncbn.stats import active_recorder


def check_input(input: torch.Tensor, num_features: int | None) -> None:
    """Raise ValueError for inputs a batch norm over ``num_features`` channels cannot take."""
    if input.dim() < 2:
        raise ValueError(
            f"expected an input of at least 2 dims (N, C, ...), got {input.dim()}D input "
            f"of shape {tuple(input.shape)}"
        )
    if num_features is not None and input.size(1) != num_features:
        raise ValueError(
            f"expected {num_features} channels in dim 1, got input of shape {tuple(input.shape)} "
            f"with {input.size(1)} channels"
        )


def sync_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float | torch.Tensor = 0.1,
    eps: float = 1e-5,
    process_group: dist.ProcessGroup | None = None,
    layer: object | None = None,
) -> torch.Tensor:
    """Batch norm whose training statistics are those of the global batch in ``process_group``.

    Same contract as ``torch.nn.functional.batch_norm`` (running stats are updated in place
    when given and ``training``), plus: ``momentum`` may be a tensor (a cumulative average
    without a host sync), and ``layer`` names this call for ``syncbn.record_stats``.
    Without training, or with a group of one rank, it is exactly ``F.batch_norm``. Under
    ``torch.compile`` it traces with no graph break (``syncbn._ops``); nothing is recorded.
    """
    check_input(input, next((t.numel() for t in (running_mean, weight) if t is not None), None))
    if torch.compiler.is_compiling():  # custom ops: no graph break (and nothing recorded)
        return traceable_sync_batch_norm(
            input, running_mean, running_var, weight, bias, training, momentum, eps, process_group
        )
    if not training:
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, eps)
    world_size = group_world_size(process_group)
    if world_size == 1 and active_recorder() is None:
        factor = float(momentum) if isinstance(momentum, torch.Tensor) else momentum
        return F.batch_norm(input, running_mean, running_var, weight, bias, True, factor, eps)
    return SyncBatchNormFunction.apply(
        input,
        weight,
        bias,
        running_mean,
        running_var,
        momentum,
        eps,
        process_group,
        world_size,
        active_recorder(),
        layer,
    )
