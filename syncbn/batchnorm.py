"""The SyncBatchNorm module: a drop-in for torch.nn.BatchNorm1d/2d/3d and torch.nn.SyncBatchNorm."""

from __future__ import annotations

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
