"""The SyncBatchNorm module, a drop-in for torch.nn.BatchNorm1d/2d/3d and torch.nn.SyncBatchNorm,
and SyncBatchNormAct, the same followed by a drop and an activation layer (what converters of
"batch norm + activation" subclasses build)."""

from __future__ import annotations

from typing import Any, Self, TypeVar

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from syncbn.functional import check_input, sync_batch_norm

# Input dims -> the torch class a reverted layer becomes.
TORCH_CLASS_BY_DIM: dict[int, type[_BatchNorm]] = {
    2: torch.nn.BatchNorm1d,
    3: torch.nn.BatchNorm1d,
    4: torch.nn.BatchNorm2d,
    5: torch.nn.BatchNorm3d,
}
BN = TypeVar("BN", bound=_BatchNorm)


class SyncBatchNorm(_BatchNorm):
    """Batch norm over the global batch of all ranks in ``process_group`` (the world if None).

    Accepts (N, C), (N, C, L), (N, C, H, W) and (N, C, D, H, W) inputs on any device and
    backend (gloo on CPU, NCCL on CUDA). Parameters, buffers and ``state_dict`` keys are those
    of ``torch.nn.BatchNorm*d``. Ranks may hold different batch sizes, including zero. In eval
    mode with running statistics no collective is issued; without torch.distributed, or with
    a group of one rank, it computes exactly what ``torch.nn.BatchNorm*d`` does.

    ``torch.compile`` (``fullgraph=True`` included) traces it without a graph break, through
    the custom operators of ``syncbn._ops``; ``syncbn.record_stats`` records eager calls only.
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
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.process_group = process_group
        # The torch class to revert to; set by convert_sync_batchnorm or the last input seen.
        self.torch_class: type[_BatchNorm] | None = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if not 2 <= input.dim() <= 5:
            raise ValueError(
                f"expected 2D to 5D input (N, C, ...), got {input.dim()}D input "
                f"of shape {tuple(input.shape)}"
            )
        check_input(input, self.num_features)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if self.torch_class is None:
            self.torch_class = TORCH_CLASS_BY_DIM[input.dim()]
        momentum: float | torch.Tensor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, kept on the device
                momentum = 1.0 / self.num_batches_tracked
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return sync_batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
            self.process_group,
            layer=self,
        )


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


def sync_batchnorm_like(
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
        return share_batchnorm_state(
            bn, sync_batchnorm_like(bn, process_group, cls, act=act, drop=drop)
        )
