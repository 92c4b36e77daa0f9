"""Converters for timm's batch norm + activation layers (``timm.layers.norm_act``).

Imported by :mod:`syncbn.converters` only when it meets a class from timm, so ``import syncbn``
never imports timm; the registry registers what :func:`timm_converters` returns (this module
registers nothing itself). timm's ``BatchNormAct2d`` (a ``torch.nn.BatchNorm2d`` subclass) and
``SyncBatchNormAct`` (a ``torch.nn.SyncBatchNorm`` subclass, what timm's own converter makes)
run batch norm, then their ``drop`` child, then their ``act`` child; both become
:class:`syncbn.SyncBatchNormAct` with the same ``drop`` and ``act`` modules.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch.distributed as dist

from syncbn.batchnorm import SyncBatchNormAct, share_batchnorm_state


def _norm_act() -> ModuleType | None:
    try:
        from timm.layers import norm_act
    except ImportError:
        try:  # timm < 0.9
            from timm.models.layers import norm_act
        except ImportError:
            return None
    return norm_act


def _convert(module: Any, process_group: dist.ProcessGroup | None) -> SyncBatchNormAct:
    # timm's SyncBatchNormAct applies drop and act only if present (hasattr).
    return SyncBatchNormAct.from_batchnorm(
        module, process_group, act=getattr(module, "act", None), drop=getattr(module, "drop", None)
    )


def timm_converters() -> list[tuple[type, Callable[..., Any], Callable[..., Any]]]:
    """(class, convert_fn, revert_fn) for timm's BatchNormAct2d and SyncBatchNormAct, those of
    them that the installed timm has; none if timm does not import."""
    norm_act = _norm_act()
    if norm_act is None:
        return []
    bn_act = getattr(norm_act, "BatchNormAct2d", None)
    sync_bn_act = getattr(norm_act, "SyncBatchNormAct", None)

    def revert_bn_act(converted: SyncBatchNormAct) -> Any:
        out = bn_act(
            converted.num_features,
            eps=converted.eps,
            momentum=converted.momentum,
            affine=converted.affine,
            track_running_stats=converted.track_running_stats,
            apply_act=False,
        )
        share_batchnorm_state(converted, out)
        out.drop, out.act = converted.drop, converted.act
        return out

    def revert_sync_bn_act(converted: SyncBatchNormAct) -> Any:
        out = sync_bn_act(
            converted.num_features,
            converted.eps,
            converted.momentum,
            converted.affine,
            converted.track_running_stats,
            process_group=converted.process_group,
        )
        share_batchnorm_state(converted, out)
        out.drop, out.act = converted.drop, converted.act
        return out

    return [
        (cls, _convert, revert)
        for cls, revert in ((bn_act, revert_bn_act), (sync_bn_act, revert_sync_bn_act))
        if cls is not None
    ]
