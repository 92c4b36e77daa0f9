"""syncbn in PyTorch Lightning: a ``LayerSync`` plugin (needs ``lightning``, the ``lightning``
extra; ``import syncbn`` never imports it).

    from lightning.pytorch import Trainer
    from syncbn.integrations.lightning import SyncBNLayerSync

    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", plugins=[SyncBNLayerSync()])

Lightning's DDP strategies (``ddp``, ``ddp_spawn``, ...; FSDP too, untested here) call
:meth:`SyncBNLayerSync.apply` when ``fit`` sets up the model, before wrapping it in DDP and
building the optimizers, and :meth:`SyncBNLayerSync.revert` when ``fit`` tears down (also after
an error): the model is plain BatchNorm again after ``fit``, and ``validate``, ``test`` and
``predict`` never convert. Checkpoints saved during ``fit`` are taken from the synchronized
layers and hold plain BatchNorm state all the same: syncbn's layers have ``BatchNorm*d``'s
exact ``state_dict`` keys and tensors. Unlike ``Trainer(sync_batchnorm=True)``
(``torch.nn.SyncBatchNorm``, GPU only), this runs on CPU with gloo.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins import LayerSync

from syncbn.convert import convert_sync_batchnorm, revert_sync_batchnorm
from syncbn.groups import new_sync_groups

__all__ = ["SyncBNLayerSync"]


class SyncBNLayerSync(LayerSync):
    """Convert every batch norm to :class:`syncbn.SyncBatchNorm` for ``fit``, and back after.

    ``Trainer(strategy="ddp", plugins=[SyncBNLayerSync()])``. ``apply`` is
    :func:`syncbn.convert_sync_batchnorm`: ``torch.nn.BatchNorm1d/2d/3d``,
    ``torch.nn.SyncBatchNorm``, initialized lazy batch norms and subclasses with a converter
    registered (:func:`syncbn.register_converter`, in every process: at import of the module
    that defines the LightningModule, say) become synchronized layers sharing the original
    parameters and buffers; an unregistered subclass raises
    :class:`syncbn.UnsupportedBatchNormError` before anything changes. ``revert`` is
    :func:`syncbn.revert_sync_batchnorm`: each layer becomes the class it came from (a
    ``torch.nn.SyncBatchNorm`` the ``BatchNorm*d`` of its last input), sharing the trained
    tensors.

    Args:
        sync_group_size: synchronize within consecutive groups of this many ranks
            (:func:`syncbn.new_sync_groups`, created once per process group on the first
            ``apply``) instead of the whole world. Use it with
            ``DDPStrategy(forward_sync_buffers=False)``: DDP's default broadcast of rank 0's
            buffers before every forward would overwrite the other groups' statistics.
        process_group: an existing process group to synchronize within (exclusive with
            ``sync_group_size``). It cannot travel to processes that Lightning spawns
            (``ddp_spawn``); prefer ``sync_group_size`` there.
    """

    def __init__(
        self,
        *,
        sync_group_size: int | None = None,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        if sync_group_size is not None and process_group is not None:
            raise ValueError("pass sync_group_size or process_group, not both")
        size = sync_group_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"sync_group_size must be a positive integer, got {sync_group_size!r}")
        self.sync_group_size = sync_group_size
        self.process_group = process_group
        # (the default group it was made in, this rank's sync group), for sync_group_size.
        self._groups: tuple[object, dist.ProcessGroup] | None = None

    def sync_group(self) -> dist.ProcessGroup | None:
        """The group the layers synchronize within (None: the whole world)."""
        if self.sync_group_size is None:
            return self.process_group
        world = dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
        if self._groups is None or self._groups[0] is not world:
            # new_sync_groups is collective: every rank gets here in the same order, in apply.
            self._groups = (world, new_sync_groups(self.sync_group_size))
        return self._groups[1]

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """Replace every batch norm in ``model`` with a synchronized one (in place)."""
        return convert_sync_batchnorm(model, process_group=self.sync_group())

    def revert(self, model: torch.nn.Module) -> torch.nn.Module:
        """Turn every synchronized layer back into the class it was converted from."""
        return revert_sync_batchnorm(model)

    def __getstate__(self) -> dict[str, object]:
        # ddp_spawn pickles the Trainer and its plugins; groups are per process.
        return {**self.__dict__, "_groups": None}

    def __repr__(self) -> str:
        args = []
        if self.sync_group_size is not None:
            args.append(f"sync_group_size={self.sync_group_size}")
        if self.process_group is not None:
            args.append(f"process_group={self.process_group!r}")
        return f"{type(self).__name__}({', '.join(args)})"
