"""Precise BatchNorm statistics: recompute ``running_mean``/``running_var`` with the final weights.

Running averages lag the weights they were collected under, and with per-device ("local") batch
norm on tiny batches they are noisy too. :func:`precise_bn` replaces them with the exact
population statistics of the inputs each layer sees over a pass of ``num_batches`` batches on
every rank (PreciseBN of fvcore/detectron2; Wu & Johnson, "Rethinking 'Batch' in BatchNorm",
2021), for one all_reduce for the whole pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from syncbn._functions import moments_to_mean_var
from syncbn._moments import mean_var, shifted_sums, unbiased_var, unshifted_sums
from syncbn.convert import unwrap
from syncbn.functional import check_input
from syncbn.groups import group_world_size


def precise_bn(
    model: torch.nn.Module,
    batches: Iterable[Any],
    num_batches: int,
    process_group: dist.ProcessGroup | None = None,
) -> int:
    """Set every batch norm layer's running statistics to the exact population statistics of
    the inputs it sees over up to ``num_batches`` batches on every rank; return the number of
    batches this rank used.

    ``batches`` yields model inputs: a tensor, a tuple or list whose first element is the
    input, or a mapping whose ``"x"`` item is the input (so a ``DataLoader`` of ``(x, y)``
    pairs works as is). Tensors are moved to the model's device. At most ``num_batches`` are
    taken, fewer when ``batches`` runs out.

    Layers: every ``torch.nn.modules.batchnorm._BatchNorm`` in ``model`` (``BatchNorm1d/2d/3d``,
    ``torch.nn.SyncBatchNorm``, ``syncbn.SyncBatchNorm`` and its subclasses), whatever its
    mode. Afterwards ``running_mean`` is the mean and ``running_var`` the UNBIASED variance
    (N/(N-1), BatchNorm's convention) over all ranks' samples; ``num_batches_tracked``,
    ``momentum``, the weights and every module's train/eval mode are unchanged. A layer without
    running statistics (``track_running_stats=False``) is not updated; a layer that saw no
    input on any rank keeps its statistics.

    Semantics: as fvcore's ``update_bn_stats``, every batch norm layer normalizes with the
    statistics of the LOCAL batch during the pass, as in training, so a layer's statistics are
    those of the inputs it sees when the layers before it normalize with batch statistics
    (large batches help: the pass needs no gradients). Unlike fvcore, which averages per-batch
    means and variances, the result is the exact mean and variance of all samples: each rank
    accumulates per-channel float64 [sum x, sum x^2, count] (around the layer's current
    running_mean), and ONE all_reduce(SUM) over ``process_group`` (the world when None)
    carries every layer's sums, packed, for the whole pass. So a model trained with local
    batch norm (``norm="local"``) gets GLOBAL statistics; a ``process_group`` restricts them
    to its ranks. Without torch.distributed, or in a group of one rank, no collective is
    issued. The sums meet as float64 raw moments, as in SyncBatchNorm's forward: the variance
    is accurate to about 1e-16 * (mean / std)^2 relative.

    No layer issues a collective of its own during the pass (``SyncBatchNorm`` layers run
    their collective-free eval form with the local batch statistics), so ranks may run
    different numbers of batches, or none: each joins the one all_reduce, contributing zeros.
    The model's forward must not issue collectives itself: ``DistributedDataParallel``,
    ``DataParallel`` and ``torch.compile`` wrappers are unwrapped. Other modules (dropout, ...)
    run in the mode they are in. No gradients are recorded.

    Errors: an input with one value per channel raises ValueError, as training-mode batch norm
    does. If the pass fails on any rank, that rank still joins the all_reduce, every rank
    raises (that rank its own error, the others RuntimeError) and no statistics change.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"precise_bn expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0:
        raise ValueError(f"num_batches must be a non-negative integer, got {num_batches!r}")
    model = unwrap(model)
    layers = [_Layer(m) for m in model.modules() if isinstance(m, _BatchNorm)]
    device = _device(model)

    used = 0
    error: Exception | None = None
    handles = []
    try:
        for layer in layers:
            layer.enter()
            handles.append(layer.module.register_forward_pre_hook(layer.record, with_kwargs=True))
        with torch.no_grad():
            for item in itertools.islice(batches, num_batches):
                model(_model_input(item, device))
                used += 1
    except Exception as exc:  # every rank must still join the all_reduce below
        error = exc
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers:
            layer.exit()

    updated = [layer for layer in layers if layer.update]
    packed = torch.cat(
        [layer.moments().to(device) for layer in updated]
        + [torch.tensor([float(error is not None)], dtype=torch.float64, device=device)]
    )
    if group_world_size(process_group) > 1:
        dist.all_reduce(packed, group=process_group)
    failed = int(packed[-1].item())
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(
            f"precise_bn failed on {failed} other rank(s) of the process group; "
            "running statistics are unchanged"
        )

    offset = 0
    for layer in updated:
        size = 2 * layer.channels + 1
        layer.set_population_stats(packed[offset : offset + size])
        offset += size
    return used


class _Layer:
    """One batch norm layer during the pass: its saved state and its float64 accumulators."""

    def __init__(self, module: _BatchNorm) -> None:
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            raise ValueError(
                f"{type(module).__name__} is uninitialized: run one forward before precise_bn"
            )
        self.module = module
        self.channels = module.num_features
        self.training = module.training
        self.running_mean: torch.Tensor | None = module.running_mean
        self.running_var: torch.Tensor | None = module.running_var
        self.update = self.running_mean is not None and self.running_var is not None
        if self.running_mean is not None and self.running_var is not None:
            device = self.running_mean.device
            self.stats_dtype: torch.dtype | None = self.running_mean.dtype
            # Sums around the current running mean: the centred values are O(std).
            self.shift = self.running_mean.detach().to(torch.float64)
        else:
            device = module.weight.device if module.weight is not None else None
            self.stats_dtype = module.weight.dtype if module.weight is not None else None
            self.shift = torch.zeros(self.channels, dtype=torch.float64, device=device)
        # [sum (x - shift) (C), sum (x - shift)^2 (C), count (1)] over the whole pass.
        self.sums = torch.zeros(2 * self.channels + 1, dtype=torch.float64, device=device)

    def enter(self) -> None:
        # Eval form (no collective, no running-stat update, num_batches_tracked unchanged) with
        # the local batch statistics in the running-stat slots, set by `record` per call.
        self.module.training = False

    def exit(self) -> None:
        self.module.training = self.training
        self.module.running_mean = self.running_mean
        self.module.running_var = self.running_var

    def record(self, module: _BatchNorm, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: accumulate this input's sums, normalize with its statistics."""
        input = args[0] if args else kwargs["input"]
        check_input(input, self.channels)
        count = input.numel() // self.channels
        if count == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got input size "
                f"{tuple(input.shape)} in precise_bn"
            )
        shift = self.shift.to(input.device)
        if count == 0:
            mean, var = shift, torch.ones_like(shift)
        else:
            s1, s2 = shifted_sums(input.detach(), shift, torch.float64)
            if self.update:
                sums = self.sums
                sums[: self.channels] += s1.to(sums.device)
                sums[self.channels : -1] += s2.to(sums.device)
                sums[-1] += count
            mean, var = mean_var(s1, s2, count, shift)
        dtype = self.stats_dtype or (input.dtype if input.dtype == torch.float64 else torch.float32)
        module.running_mean = mean.to(dtype)
        module.running_var = var.to(dtype)

    def moments(self) -> torch.Tensor:
        """This rank's [sum x, sum x^2, count] in float64, for the all_reduce. Shifts may differ
        between ranks (local running means), so the sums are taken back to the origin."""
        channels = self.channels
        s1, s2, count = self.sums[:channels], self.sums[channels:-1], self.sums[-1]
        return torch.cat([*unshifted_sums(s1, s2, count, self.shift), count.view(1)])

    def set_population_stats(self, packed: torch.Tensor) -> None:
        """running_mean := mean, running_var := unbiased variance of all ranks' samples."""
        assert self.running_mean is not None and self.running_var is not None
        mean, var, count = moments_to_mean_var(packed)
        seen = count > 0
        unbiased = unbiased_var(var, count)
        with torch.no_grad():
            rm, rv = self.running_mean, self.running_var
            rm.copy_(torch.where(seen, mean.to(rm.device), rm.double()).to(rm.dtype))
            rv.copy_(torch.where(seen, unbiased.to(rv.device), rv.double()).to(rv.dtype))


def _device(model: torch.nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _model_input(item: Any, device: torch.device) -> Any:
    if isinstance(item, Mapping):
        if "x" not in item:
            raise TypeError(
                f"precise_bn: a mapping batch needs an 'x' item, got keys {sorted(item)}"
            )
        item = item["x"]
    elif isinstance(item, tuple | list):
        if not item:
            raise TypeError("precise_bn: got an empty tuple/list as a batch")
        item = item[0]
    return item.to(device, non_blocking=True) if isinstance(item, torch.Tensor) else item
