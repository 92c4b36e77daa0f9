"""Swap BatchNorm layers for SyncBatchNorm and back, sharing parameters and buffers.

The exact torch classes (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``) convert built in. A subclass
of them may add behaviour (timm's ``BatchNormAct2d`` adds an activation) that a plain
SyncBatchNorm would silently drop, so a subclass converts only through a converter registered
with :func:`register_converter`; any other subclass raises :class:`UnsupportedBatchNormError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self, TypeVar

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
# Lazy batch norms become BatchNorm*d on their first forward (``cls_to_become``).
_LAZY = (torch.nn.LazyBatchNorm1d, torch.nn.LazyBatchNorm2d, torch.nn.LazyBatchNorm3d)
# Set on a module made by a registered converter: the class it was converted from.
CONVERTED_FROM = "syncbn_converted_from"

ConvertFn = Callable[[Any, dist.ProcessGroup | None], torch.nn.Module]
RevertFn = Callable[[Any], torch.nn.Module]
BN = TypeVar("BN", bound=_BatchNorm)


class UnsupportedBatchNormError(TypeError):
    """A batch norm subclass has no registered converter (see :func:`register_converter`)."""


@dataclass(frozen=True)
class _Converter:
    convert: ConvertFn
    revert: RevertFn


_REGISTRY: dict[type[torch.nn.Module], _Converter] = {}


def _name(cls: type) -> str:
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
    if cls in CONVERTIBLE or cls in _LAZY:
        raise TypeError(f"{_name(cls)} is converted built in; it cannot be registered")
    if issubclass(cls, SyncBatchNorm):
        raise TypeError(f"{_name(cls)} is a syncbn.SyncBatchNorm already: nothing to convert")
    if not callable(convert_fn) or not callable(revert_fn):
        raise TypeError("convert_fn and revert_fn must be callable")
    if cls in _REGISTRY and not replace:
        raise ValueError(f"a converter for {_name(cls)} is already registered (use replace=True)")
    _REGISTRY[cls] = _Converter(convert_fn, revert_fn)


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


def share_batchnorm_state(source: _BatchNorm, target: BN) -> BN:
    """Give ``target`` ``source``'s parameters, buffers (shared), mode and ``qconfig``.

    Returns ``target``. Meant for converters: both directions keep optimizers and checkpoints
    pointing at the same tensors.
    """
    target.weight, target.bias = source.weight, source.bias
    target.running_mean = source.running_mean
    target.running_var = source.running_var
    target.num_batches_tracked = source.num_batches_tracked
    target.train(source.training)
    if hasattr(source, "qconfig"):
        target.qconfig = source.qconfig
    return target


class SyncBatchNormAct(SyncBatchNorm):
    """SyncBatchNorm followed by ``drop`` and then ``act`` (each the identity when None).

    The building block for converters of "batch norm + activation" subclasses such as timm's
    ``BatchNormAct2d``: the ``drop`` and ``act`` children keep their names, so ``state_dict``
    keys do not change.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        act: torch.nn.Module | None = None,
        drop: torch.nn.Module | None = None,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            process_group,
            device,
            dtype,
            bias=bias,
        )
        self.drop = torch.nn.Identity() if drop is None else drop
        self.act = torch.nn.Identity() if act is None else act

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(input)))

    @classmethod
    def from_batchnorm(
        cls,
        bn: _BatchNorm,
        process_group: dist.ProcessGroup | None = None,
        *,
        act: torch.nn.Module | None = None,
        drop: torch.nn.Module | None = None,
    ) -> Self:
        """A new layer sharing ``bn``'s parameters, buffers and mode, then ``drop`` and ``act``."""
        return share_batchnorm_state(bn, _synced(bn, process_group, cls, act=act, drop=drop))


def _synced(
    bn: _BatchNorm,
    process_group: dist.ProcessGroup | None,
    cls: type[SyncBatchNorm] = SyncBatchNorm,
    **kwargs: Any,
) -> Any:
    """A new ``cls`` with ``bn``'s hyperparameters (its state is not shared yet)."""
    return cls(
        bn.num_features,
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        process_group,
        bias=bn.bias is not None,
        **kwargs,
    )


def _builtin_class(module: _BatchNorm) -> type[_BatchNorm] | None:
    """The torch class ``module`` converts as built in, or None if it is a subclass."""
    cls = type(module)
    if cls in _LAZY and not module.has_uninitialized_params():
        cls = cls.cls_to_become
    return cls if cls in CONVERTIBLE else None


def _autoregister(cls: type) -> None:
    """Register syncbn's converters for timm's classes when meeting one (timm is imported then)."""
    if cls.__module__.startswith("timm.") and cls not in _REGISTRY:
        from syncbn import _timm

        _timm.register_timm_converters()


def _unsupported(cls: type) -> UnsupportedBatchNormError:
    base = next(b for b in cls.__mro__[1:] if b in CONVERTIBLE or b is _BatchNorm)
    return UnsupportedBatchNormError(
        f"cannot convert {_name(cls)}: it subclasses {_name(base)} and a plain SyncBatchNorm "
        "would silently drop whatever it adds; register a converter for it with "
        f"syncbn.register_converter({cls.__qualname__}, convert_fn, revert_fn)"
    )


def _synchronized(module: torch.nn.Module) -> bool:
    """Whether ``module`` is no batch norm or is synchronized already (to be left alone)."""
    return (
        not isinstance(module, _BatchNorm)
        or isinstance(module, SyncBatchNorm)
        or hasattr(module, CONVERTED_FROM)
    )


def _plan(module: torch.nn.Module) -> _Converter | None:
    """The registered converter of ``module``, or None if built in or to be left alone.

    Raises for an uninitialized lazy batch norm and for an unregistered subclass.
    """
    if _synchronized(module):
        return None
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError("cannot convert an uninitialized lazy batch norm: run a forward first")
    if _builtin_class(module) is not None:
        return None
    _autoregister(type(module))
    converter = _REGISTRY.get(type(module))
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
                f"the converter for {_name(type(module))} returned {type(out).__name__}, "
                "not a torch.nn.Module"
            )
        setattr(out, CONVERTED_FROM, type(module))
    elif not _synchronized(module):  # an exact torch class
        torch_class = _builtin_class(module)
        out = share_batchnorm_state(module, _synced(module, process_group))
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
        _autoregister(converted_from)
        converter = _REGISTRY.get(converted_from)
        if converter is None:
            raise UnsupportedBatchNormError(
                f"cannot revert a layer converted from {_name(converted_from)}: no converter is "
                "registered for it any more; register one with syncbn.register_converter("
                f"{converted_from.__qualname__}, convert_fn, revert_fn)"
            )
        out = converter.revert(module)
        if not isinstance(out, converted_from):
            raise TypeError(
                f"the revert function for {_name(converted_from)} returned "
                f"{type(out).__name__}, not an instance of {converted_from.__qualname__}"
            )
        if CONVERTED_FROM in vars(out):
            delattr(out, CONVERTED_FROM)
    elif isinstance(module, SyncBatchNorm):
        if type(module) is not SyncBatchNorm:
            raise UnsupportedBatchNormError(
                f"cannot revert {_name(type(module))}: it subclasses syncbn.SyncBatchNorm and was "
                "not made by a registered converter, so a torch batch norm would drop whatever "
                "it adds; replace it yourself"
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
