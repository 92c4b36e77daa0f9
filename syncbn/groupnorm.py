"""Swap BatchNorm layers for GroupNorm: normalization that does not depend on the batch.

GroupNorm (Wu & He, 2018) normalizes each sample over groups of channels, so it needs no
batch statistics, no running averages and no communication; with 2 images per GPU it keeps
the accuracy BatchNorm loses (ResNet-50 on ImageNet: about 24 % error at any batch size, BN 34.7 %
at 2 per GPU). The price is another inductive bias and per-sample statistics over C x H x W
instead of per-channel statistics over the batch. :func:`convert_group_norm` is how a job with
``norm="group"`` gets it, for built-in models and users' models alike.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from syncbn.batchnorm import SyncBatchNorm
from syncbn.converters import qualified_name

MAX_GROUPS = 32
"""The GN paper's default group count, where the channels allow it."""

GROUP_NORMABLE = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    SyncBatchNorm,
)
"""The exact classes :func:`convert_group_norm` replaces (a subclass may add behaviour that a
GroupNorm would silently drop, so it raises instead)."""


def group_count(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """The largest divisor of ``channels`` that is at most ``max_groups``."""
    if channels < 1 or max_groups < 1:
        raise ValueError(f"channels and max_groups must be positive, got {channels}, {max_groups}")
    return max(d for d in range(1, min(channels, max_groups) + 1) if channels % d == 0)


def _groups_for(name: str, module: torch.nn.Module, num_groups: int | None) -> int | None:
    """The group count of ``module`` if it is to be replaced, None if it is no batch norm;
    raises for what cannot be replaced faithfully."""
    if not isinstance(module, _BatchNorm):
        return None
    where = f"layer {name!r}" if name else "the module"
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(f"{where}: an uninitialized lazy batch norm: run a forward first")
    cls = type(module)
    lazy_done = getattr(cls, "cls_to_become", None)
    if cls not in GROUP_NORMABLE and lazy_done not in GROUP_NORMABLE:
        raise TypeError(
            f"{where}: cannot replace {qualified_name(cls)} by GroupNorm: it subclasses a batch "
            "norm and a GroupNorm would silently drop whatever it adds"
        )
    channels = module.num_features
    if num_groups is None:
        return group_count(channels)
    if channels % num_groups:
        raise ValueError(
            f"{where}: {num_groups} groups do not divide its {channels} channels; choose a "
            f"divisor of every layer's channels, or leave the group count out (then each layer "
            f"gets the largest divisor of its channels up to {MAX_GROUPS})"
        )
    return num_groups


def _group_norm_like(module: _BatchNorm, groups: int) -> torch.nn.GroupNorm:
    weight = module.weight if module.affine else None
    out = torch.nn.GroupNorm(
        groups,
        module.num_features,
        eps=module.eps,
        affine=module.affine,
        bias=module.bias is not None if module.affine else True,
        device=None if weight is None else weight.device,
        dtype=None if weight is None else weight.dtype,
    )
    if module.affine:
        with torch.no_grad():
            out.weight.copy_(module.weight)
            if module.bias is not None:
                out.bias.copy_(module.bias)
    return out.train(module.training)


def convert_group_norm(module: torch.nn.Module, num_groups: int | None = None) -> torch.nn.Module:
    """Replace every batch norm in ``module`` by ``torch.nn.GroupNorm`` over the same channels.

    Each layer gets ``num_groups`` groups, or by default the largest divisor of its channel
    count up to 32. ``eps`` and the affine weight and bias carry over (as new parameters: build
    the optimizer afterwards); the running statistics are dropped, since GroupNorm has none.
    ``BatchNorm1d`` on ``(N, C)`` works: GroupNorm takes ``(N, C, *)``.

    Every layer is checked before any is replaced: a batch norm subclass raises ``TypeError``
    and a group count that does not divide a layer's channels ``ValueError``, both naming the
    layer, with ``module`` unchanged. Returns the converted module (a new one only if
    ``module`` itself is a batch norm).
    """
    plan = {
        name: (sub, groups)
        for name, sub in module.named_modules(remove_duplicate=False)
        if (groups := _groups_for(name, sub, num_groups)) is not None
    }
    made: dict[int, torch.nn.GroupNorm] = {}  # a layer used in two places stays one layer
    for name, (sub, groups) in plan.items():
        if id(sub) not in made:
            made[id(sub)] = _group_norm_like(sub, groups)  # type: ignore[arg-type]
        if not name:
            return made[id(sub)]
        parent_name, _, child = name.rpartition(".")
        module.get_submodule(parent_name).add_module(child, made[id(sub)])
    return module
