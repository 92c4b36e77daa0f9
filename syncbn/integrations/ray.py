"""syncbn in Ray Train: ``prepare_model`` with synchronized BatchNorm, and the way back for
saving (needs ``ray[train]``; ``import syncbn`` never imports Ray, and this module imports it
only when :func:`prepare_model` is called).

In ``train_loop_per_worker`` of a ``ray.train.torch.TorchTrainer``::

    from syncbn.integrations.ray import plain_state_dict, prepare_model

    model = prepare_model(MyNet())  # BatchNorm*d -> syncbn.SyncBatchNorm, then Ray's DDP
    ...  # train as usual
    torch.save(plain_state_dict(model), path)  # loads into a plain MyNet, no DDP, no syncbn

:func:`unwrap` gives the module under DDP, :func:`revert` turns the layers back into torch
batch norms for good (after training), and :func:`plain_state_dict` gives that state without
changing the model (for checkpoints during training).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from syncbn.batchnorm import SyncBatchNorm
from syncbn.convert import (
    CONVERTED_FROM,
    convert_sync_batchnorm,
    revert_sync_batchnorm,
    unwrap,
)
from syncbn.groups import new_sync_groups

__all__ = ["plain_state_dict", "prepare_model", "revert", "unwrap"]


def prepare_model(
    model: torch.nn.Module,
    *,
    sync_group_size: int | None = None,
    process_group: dist.ProcessGroup | None = None,
    **ray_kwargs: Any,
) -> torch.nn.Module:
    """:func:`syncbn.convert_sync_batchnorm`, then ``ray.train.torch.prepare_model``.

    Call it in ``train_loop_per_worker``, on every worker, where Ray Train has set up
    torch.distributed. Every ``torch.nn.BatchNorm1d/2d/3d``, ``torch.nn.SyncBatchNorm``,
    initialized lazy batch norm and registered subclass (:func:`syncbn.register_converter`)
    becomes a synchronized layer normalizing with the statistics of all workers' batches (an
    unregistered subclass raises :class:`syncbn.UnsupportedBatchNormError`, changing nothing);
    then Ray moves the model to the worker's device and wraps it (DDP by default).

    - ``sync_group_size=k``: synchronize within consecutive groups of ``k`` workers
      (:func:`syncbn.new_sync_groups`, called here on every worker); or pass a
      ``process_group`` of your own. Default: all workers.
    - ``ray_kwargs`` go to ``ray.train.torch.prepare_model`` as they are (``move_to_device``,
      ``parallel_strategy``, ``parallel_strategy_kwargs``). With DDP (Ray's default), unless
      ``parallel_strategy_kwargs`` sets ``forward_sync_buffers`` (``broadcast_buffers``
      before torch 2.13), it is set to ``False``: synchronized layers hold the same running
      statistics on every worker of a group, so DDP's broadcast of rank 0's buffers before each
      forward is redundant, and with sync groups it would overwrite the other groups'
      statistics with group 0's. Tested with DDP and with ``parallel_strategy=None``.

    Returns what Ray returns: the ``DistributedDataParallel`` (or, without a parallel
    strategy, the converted model itself).
    """
    from ray.train.torch import prepare_model as ray_prepare_model

    if sync_group_size is not None:
        if process_group is not None:
            raise ValueError("pass sync_group_size or process_group, not both")
        process_group = new_sync_groups(sync_group_size)
    model = convert_sync_batchnorm(model, process_group=process_group)
    if ray_kwargs.get("parallel_strategy", "ddp") == "ddp":
        ddp_kwargs = dict(ray_kwargs.get("parallel_strategy_kwargs") or {})
        flag = _buffer_sync_flag()
        if not {"forward_sync_buffers", "broadcast_buffers"} & ddp_kwargs.keys():
            ddp_kwargs[flag] = False
        ray_kwargs["parallel_strategy_kwargs"] = ddp_kwargs
    return ray_prepare_model(model, **ray_kwargs)


def _buffer_sync_flag() -> str:
    """DDP's flag for broadcasting buffers before each forward in this torch."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"


def revert(model: torch.nn.Module) -> torch.nn.Module:
    """The unwrapped model with torch batch norms again, for good: at the end of training.

    :func:`unwrap`, then :func:`syncbn.revert_sync_batchnorm`: each synchronized layer becomes
    the class it came from, sharing its parameters and buffers. The layers are swapped in
    place, so a DDP model still wrapping them no longer synchronizes BatchNorm; to save during
    training, use :func:`plain_state_dict`.
    """
    return revert_sync_batchnorm(unwrap(model))


def plain_state_dict(model: torch.nn.Module) -> dict[str, Any]:
    """The ``state_dict`` of the unwrapped model as it would be with torch batch norms: it loads
    strictly into the original model (no ``module.`` prefix, no syncbn needed). The model is
    left as it is, so it can be called at any point of training (on rank 0, say).

    Plain :class:`syncbn.SyncBatchNorm` layers have ``BatchNorm*d``'s exact keys; a layer made
    by a registered converter is reverted through its converter for the call and then put
    back, so whatever its original class stores is what comes out. The tensors are the
    model's own (detached, as ``state_dict`` gives them): copy them to keep a snapshot.
    """
    module = unwrap(model)
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    try:
        return _revert_for_now(module, swapped).state_dict()
    finally:
        for parent, name, layer in reversed(swapped):
            parent.add_module(name, layer)


def _synchronized(module: torch.nn.Module) -> bool:
    return isinstance(module, SyncBatchNorm) or hasattr(module, CONVERTED_FROM)


def _revert_for_now(
    module: torch.nn.Module, swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]]
) -> torch.nn.Module:
    """``module`` with its synchronized layers replaced by reverted ones (new objects sharing
    the tensors); each replacement is recorded in ``swapped`` to be undone."""
    if _synchronized(module):
        return revert_sync_batchnorm(module)  # a new module: ``module`` is not changed
    for name, child in list(module.named_children()):
        plain = _revert_for_now(child, swapped)
        if plain is not child:
            swapped.append((module, name, child))
            module.add_module(name, plain)
    return module
