"""Swap BatchNorm layers for SyncBatchNorm and back, sharing parameters and buffers.

The exact torch classes (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``) convert built in. A subclass
of them may add behaviour (timm's ``BatchNormAct2d`` adds an activation) that a plain
SyncBatchNorm would silently drop, so a subclass converts only through a converter registered
with :func:`register_converter` (the registry is :mod:`syncbn.converters`); any other subclass
raises :class:`UnsupportedBatchNormError`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parallel import DataParallel, DistributedDataParallel

from syncbn.batchnorm import (
    SyncBatchNorm,
    SyncBatchNormAct,
    share_batchnorm_state,
    sync_batchnorm_like,
)
from syncbn.converters import (
    CONVERTIBLE,
    LAZY_CONVERTIBLE,
    Converter,
    find_converter,
    qualified_name,
    register_converter,
    registered_converter,
    unregister_converter,
)

# Also the names this module re-exports from syncbn.batchnorm and syncbn.converters, where they
# are defined: ``syncbn.convert.<name>`` keeps working.
__all__ = [
    "CONVERTED_FROM",
    "CONVERTIBLE",
    "SyncBatchNormAct",
    "UnsupportedBatchNormError",
    "convert_sync_batchnorm",
    "register_converter",
    "registered_converter",
    "revert_sync_batchnorm",
    "share_batchnorm_state",
    "unregister_converter",
]

# Set on a module made by a registered converter: the class it was converted from.
CONVERTED_FROM = "syncbn_converted_from"


class UnsupportedBatchNormError(TypeError):
    """A batch norm subclass has no registered converter (see :func:`register_converter`)."""


def _builtin_class(module: _BatchNorm) -> type[_BatchNorm] | None:
    """The torch class ``module`` converts as built in, or None if it is a subclass."""
    cls = type(module)
    if cls in LAZY_CONVERTIBLE and not module.has_uninitialized_params():
        cls = cls.cls_to_become
    return cls if cls in CONVERTIBLE else None


def _unsupported(cls: type) -> UnsupportedBatchNormError:
    base = next(b for b in cls.__mro__[1:] if b in CONVERTIBLE or b is _BatchNorm)
    return UnsupportedBatchNormError(
        f"cannot convert {qualified_name(cls)}: it subclasses {qualified_name(base)} and a plain "
        "SyncBatchNorm would silently drop whatever it adds; register a converter for it with "
        f"syncbn.register_converter({cls.__qualname__}, convert_fn, revert_fn)"
    )


def _synchronized(module: torch.nn.Module) -> bool:
    """Whether ``module`` is no batch norm or is synchronized already (to be left alone)."""
    return (
        not isinstance(module, _BatchNorm)
        or isinstance(module, SyncBatchNorm)
        or hasattr(module, CONVERTED_FROM)
    )


def _plan(module: torch.nn.Module) -> Converter | None:
    """The registered converter of ``module``, or None if built in or to be left alone.

    Raises for an uninitialized lazy batch norm and for an unregistered subclass.
    """
    if _synchronized(module):
        return None
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError("cannot convert an uninitialized lazy batch norm: run a forward first")
    if _builtin_class(module) is not None:
        return None
    converter = find_converter(type(module))
    if converter is None:
        raise _unsupported(type(module))
    return converter


def _convert(module: torch.nn.Module, process_group: dist.ProcessGroup | None) -> torch.nn.Module:
    out = source = module
    converter = _plan(module)
    if converter is not None:
        out = source = converter.convert(module, process_group)
        if not isinstance(out, torch.nn.Module):
            raise TypeError(
                f"the converter for {qualified_name(type(module))} returned "
                f"{type(out).__name__}, not a torch.nn.Module"
            )
        setattr(out, CONVERTED_FROM, type(module))
    elif not _synchronized(module):  # an exact torch class
        torch_class = _builtin_class(module)
        out = share_batchnorm_state(module, sync_batchnorm_like(module, process_group))
        if torch_class is not torch.nn.SyncBatchNorm:
            out.torch_class = torch_class
    for name, child in source.named_children():
        out.add_module(name, _convert(child, process_group))
    return out


def convert_sync_batchnorm(
    module: torch.nn.Module, process_group: dist.ProcessGroup | None = None
) -> torch.nn.Module:
    """Replace every batch norm in ``module`` by a synchronized one.

    ``torch.nn.BatchNorm1d/2d/3d`` and ``torch.nn.SyncBatchNorm`` become :class:`SyncBatchNorm`;
    a subclass of them converts through its converter registered with
    :func:`register_converter` (syncbn registers one for timm's ``BatchNormAct2d`` and
    ``SyncBatchNormAct`` when it meets them). The new layers share the old ones' parameters and
    buffers and keep their train/eval mode, so optimizers and checkpoints keep working.
    Layers that are synchronized already are left alone, so converting twice changes nothing.

    Every layer is checked before any is replaced: an unregistered subclass raises
    :class:`UnsupportedBatchNormError` (naming it) and an uninitialized lazy batch norm
    ``ValueError``, with ``module`` unchanged. Returns the converted module (the same object
    unless ``module`` itself is a batch norm).
    """
    for submodule in module.modules():
        _plan(submodule)
    return _convert(module, process_group)


def revert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`convert_sync_batchnorm` (for export): give back the original classes.

    A plain :class:`SyncBatchNorm` becomes the torch ``BatchNorm*d`` it came from; a layer made
    by a registered converter goes through that converter's ``revert_fn``. A subclass of
    :class:`SyncBatchNorm` that was not made by a converter raises
    :class:`UnsupportedBatchNormError` rather than losing what it adds.
    """
    out = module
    converted_from: type | None = getattr(module, CONVERTED_FROM, None)
    if converted_from is not None:
        converter = find_converter(converted_from)
        if converter is None:
            raise UnsupportedBatchNormError(
                f"cannot revert a layer converted from {qualified_name(converted_from)}: no "
                "converter is registered for it any more; register one with "
                "syncbn.register_converter("
                f"{converted_from.__qualname__}, convert_fn, revert_fn)"
            )
        out = converter.revert(module)
        if not isinstance(out, converted_from):
            raise TypeError(
                f"the revert function for {qualified_name(converted_from)} returned "
                f"{type(out).__name__}, not an instance of {converted_from.__qualname__}"
            )
        if CONVERTED_FROM in vars(out):
            delattr(out, CONVERTED_FROM)
    elif isinstance(module, SyncBatchNorm):
        if type(module) is not SyncBatchNorm:
            raise UnsupportedBatchNormError(
                f"cannot revert {qualified_name(type(module))}: it subclasses syncbn.SyncBatchNorm "
                "and was not made by a registered converter, so a torch batch norm would drop "
                "whatever it adds; replace it yourself"
            )
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
        share_batchnorm_state(module, out)
    source = module if converted_from is None else out
    for name, child in source.named_children():
        out.add_module(name, revert_sync_batchnorm(child))
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under ``DistributedDataParallel``, ``DataParallel`` and ``torch.compile``
    wrappers; ``model`` itself if it is none of them (its ``state_dict`` has no ``module.``
    prefix)."""
    while True:
        if isinstance(model, DistributedDataParallel | DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model
