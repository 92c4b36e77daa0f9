"""The converter registry: how :func:`syncbn.convert_sync_batchnorm` converts a batch norm subclass.

The exact torch classes (``BatchNorm1d/2d/3d``, ``SyncBatchNorm`` and the lazy batch norms once
initialized) convert built in. A subclass of them may add behaviour (timm's ``BatchNormAct2d``
adds an activation) that a plain SyncBatchNorm would silently drop, so a subclass converts only
through a converter registered here with :func:`register_converter`, looked up by exact type
with :func:`find_converter`. syncbn's own converters for timm's layers (``syncbn._timm``) are
registered on first sight of a class from timm, so ``import syncbn`` never imports timm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from syncbn.batchnorm import SyncBatchNorm

# The torch classes converted built in.
CONVERTIBLE = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
)
# Lazy batch norms become BatchNorm*d on their first forward (``cls_to_become``).
LAZY_CONVERTIBLE = (torch.nn.LazyBatchNorm1d, torch.nn.LazyBatchNorm2d, torch.nn.LazyBatchNorm3d)

ConvertFn = Callable[[Any, dist.ProcessGroup | None], torch.nn.Module]
RevertFn = Callable[[Any], torch.nn.Module]


@dataclass(frozen=True)
class Converter:
    """A registered pair: ``convert(module, process_group)`` and ``revert(converted)``."""

    convert: ConvertFn
    revert: RevertFn


_REGISTRY: dict[type[torch.nn.Module], Converter] = {}


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, for messages."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_converter(
    cls: type[_BatchNorm],
    convert_fn: ConvertFn,
    revert_fn: RevertFn,
    *,
    replace: bool = False,
) -> None:
    """Teach :func:`convert_sync_batchnorm` to convert instances of the batch norm subclass ``cls``.

    ``convert_fn(module, process_group)`` returns the synchronized replacement of ``module``; it
    should share ``module``'s parameters and buffers and keep everything ``cls`` adds (see
    :class:`SyncBatchNormAct` and :func:`share_batchnorm_state`). ``revert_fn(converted)``
    returns an instance of ``cls`` again, for :func:`revert_sync_batchnorm`. Matching is by
    exact type: a subclass of ``cls`` needs its own converter. Registering a class twice raises
    ``ValueError`` unless ``replace`` is true.
    """
    if not isinstance(cls, type) or not issubclass(cls, _BatchNorm):
        raise TypeError(f"register_converter expects a batch norm class, got {cls!r}")
    if cls in CONVERTIBLE or cls in LAZY_CONVERTIBLE:
        raise TypeError(f"{qualified_name(cls)} is converted built in; it cannot be registered")
    if issubclass(cls, SyncBatchNorm):
        raise TypeError(
            f"{qualified_name(cls)} is a syncbn.SyncBatchNorm already: nothing to convert"
        )
    if not callable(convert_fn) or not callable(revert_fn):
        raise TypeError("convert_fn and revert_fn must be callable")
    if cls in _REGISTRY and not replace:
        raise ValueError(
            f"a converter for {qualified_name(cls)} is already registered (use replace=True)"
        )
    _REGISTRY[cls] = Converter(convert_fn, revert_fn)


def unregister_converter(cls: type[_BatchNorm]) -> None:
    """Forget the converter registered for ``cls`` (no error if there is none)."""
    _REGISTRY.pop(cls, None)


@contextmanager
def registered_converter(
    cls: type[_BatchNorm], convert_fn: ConvertFn, revert_fn: RevertFn
) -> Iterator[None]:
    """Register a converter for ``cls`` for the duration of a ``with`` block.

    Whatever was registered for ``cls`` before is restored on exit.
    """
    previous = _REGISTRY.get(cls)
    register_converter(cls, convert_fn, revert_fn, replace=True)
    try:
        yield
    finally:
        if previous is None:
            _REGISTRY.pop(cls, None)
        else:
            _REGISTRY[cls] = previous


def find_converter(cls: type) -> Converter | None:
    """The converter registered for exactly ``cls``, or None.

    On first sight of an unregistered class from timm (timm is imported then), syncbn's
    converters for timm's layers are registered first; converters registered before (by the
    user) are kept.
    """
    if cls.__module__.startswith("timm.") and cls not in _REGISTRY:
        from syncbn import _timm

        for timm_cls, convert_fn, revert_fn in _timm.timm_converters():
            if timm_cls not in _REGISTRY:
                register_converter(timm_cls, convert_fn, revert_fn)
    return _REGISTRY.get(cls)
