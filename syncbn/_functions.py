"""The synchronized batch-norm autograd function: one all_reduce forward, one backward.

Forward: each rank packs per-channel [sum x, sum x^2, n] in float64 (local sums are taken
around a per-channel shift, so float32 inputs with |mean| >> std stay accurate), ONE
all_reduce(SUM) gives the global batch moments, and the eval form of ``F.batch_norm``
normalizes with them in one fused pass.

Backward: local [sum dy, sum dy*xhat] from ``native_batch_norm_backward`` (reduce only), ONE
all_reduce(SUM), then dx = w*invstd*(dy - sum_dy/N - xhat*sum_dy_xhat/N), computed as an
eval-form batch_norm of x (the per-channel affine part) plus w*invstd*dy. The weight and
bias gradients are the LOCAL sums; DDP averages them across ranks, as with
``torch.nn.SyncBatchNorm``.

The math lives in plain functions (``global_moments``, ``normalize``, ``update_running_stats``,
``batch_norm_backward``; the moments formula, shared with ``precise_bn``, in
``syncbn._moments``): ``SyncBatchNormFunction`` runs them in eager mode, and the custom
operators of ``syncbn._ops`` run the same functions under ``torch.compile``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from syncbn._moments import broadcast_shape, mean_var, shifted_sums, unbiased_var, unshifted_sums
from syncbn.stats import LayerStats, StatsRecorder


def stat_dtype(input: torch.Tensor) -> torch.dtype:
    """Statistics are float32 for float32/float16/bfloat16 inputs, float64 for float64."""
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def local_moments(input: torch.Tensor) -> torch.Tensor:
    """Float64 [sum x (C), sum x^2 (C), n (1)] of this rank's batch, accurate for |mean| >> std."""
    channels = input.size(1)
    count = input.numel() // channels if channels else 0
    packed = torch.zeros(2 * channels + 1, dtype=torch.float64, device=input.device)
    packed[-1] = count
    if count == 0:
        return packed
    # Shift by one sample per channel: the shifted values are O(std), so float32 sums of
    # them and of their squares lose nothing to cancellation; the shift is added back in
    # float64 (O(C) work).
    shift = input[(0, slice(None), *([0] * (input.dim() - 2)))]
    s1, s2 = shifted_sums(input, shift, stat_dtype(input))
    sum_x, sum_x2 = unshifted_sums(s1.double(), s2.double(), count, shift.double())
    packed[:channels] = sum_x
    packed[channels:-1] = sum_x2
    return packed


def all_reduce(tensor: torch.Tensor, group: Any, recorder: StatsRecorder | None) -> None:
    """The only collective syncbn issues: all_reduce(SUM), in place."""
    if recorder is None:
        dist.all_reduce(tensor, group=group)
    else:
        recorder.timed_all_reduce(tensor, group)


def moments_to_mean_var(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, biased variance (both (C,)) and count (a 0-d tensor) from a packed
    ``local_moments`` vector, local or all-reduced."""
    channels = (packed.numel() - 1) // 2
    count = packed[-1]
    mean, var = mean_var(packed[:channels], packed[channels:-1], count)
    return mean, var, count


def global_moments(
    input: torch.Tensor,
    process_group: Any,
    world_size: int,
    recorder: StatsRecorder | None = None,
    layer: object = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 mean and biased variance ((C,) each) and count (0-d) of the global batch.

    Local moments, then ONE all_reduce(SUM) over ``process_group`` when ``world_size > 1``; an
    empty rank joins it with zeros. Raises ValueError when the whole group holds at most one
    value per channel (the global count is only read on the host when this rank alone cannot
    tell). With a ``recorder``, the collective is timed and ``layer``'s statistics recorded.
    """
    local = local_moments(input)
    # This rank's own statistics, only when recording (the all_reduce below is in place).
    local_stats = moments_to_mean_var(local)[:2] if recorder is not None else None
    if world_size > 1:
        all_reduce(local, process_group, recorder)
    mean64, var64, count = moments_to_mean_var(local)

    local_count = input.numel() // input.size(1)
    if local_count <= 1 and count.item() <= 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, got input size "
            f"{tuple(input.shape)} on this rank and {int(count.item())} value(s) per "
            "channel over the whole process group"
        )
    if recorder is not None and local_stats is not None:
        local_mean, local_var = local_stats
        recorder.record_layer(
            layer,
            LayerStats(
                local_mean=local_mean,
                local_var=local_var,
                local_count=local_count,
                global_mean=mean64,
                global_var=var64,
                global_count=int(count.item()),
            ),
        )
    return mean64, var64, count


def normalize(
    input: torch.Tensor,
    mean64: torch.Tensor,
    var64: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The output (one fused eval-form ``F.batch_norm`` pass), and mean and var in the
    statistics dtype (what the backward needs)."""
    dtype = stat_dtype(input)
    mean, var = mean64.to(dtype), var64.to(dtype)
    return F.batch_norm(input, mean, var, weight, bias, False, 0.0, eps), mean, var


def update_running_stats(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    mean64: torch.Tensor,
    var64: torch.Tensor,
    count: torch.Tensor,
    momentum: float | torch.Tensor,
) -> None:
    """In place: running = (1 - momentum) * running + momentum * batch statistic, with the
    unbiased variance N/(N-1); plain tensor ops, no host sync (``momentum`` may be a tensor)."""
    unbiased = unbiased_var(var64, count)
    running_mean.mul_(1 - momentum).add_(mean64.to(running_mean.dtype) * momentum)
    running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype) * momentum)


def batch_norm_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    count: torch.Tensor,
    eps: float,
    process_group: Any,
    world_size: int,
    need_input: bool,
    recorder: StatsRecorder | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """grad_input (None unless ``need_input``) and this rank's sum dy*xhat and sum dy ((C,)
    each). Only grad_input needs the global sums: ONE all_reduce, when ``need_input`` and
    ``world_size > 1``."""
    channels = input.size(1)
    invstd = (var + eps).rsqrt()

    if input.numel() > 0:
        # Reduce-only call: its weight/bias outputs are exactly sum dy*xhat and sum dy.
        _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            grad_output,
            input,
            weight,
            None,
            None,
            mean,
            invstd,
            True,
            eps,
            [False, True, True],
        )
    else:  # an empty rank contributes zeros (the kernel divides by the local count)
        sum_dy_xhat = torch.zeros(channels, dtype=mean.dtype, device=input.device)
        sum_dy = torch.zeros_like(sum_dy_xhat)

    grad_input = None
    if need_input:
        packed = torch.cat([sum_dy, sum_dy_xhat])
        if world_size > 1:
            all_reduce(packed, process_group, recorder)
        total = count.to(mean.dtype)
        w = weight.to(mean.dtype) if weight is not None else torch.ones_like(mean)
        scale = w * invstd
        # dx = scale*dy + (xhat*(-scale*sum_dy_xhat/N) + (-scale*sum_dy/N)): the affine part
        # in xhat is one eval-form batch_norm pass over x, then one fused multiply-add.
        grad_input = F.batch_norm(
            input,
            mean,
            var,
            -scale * packed[channels:] / total,
            -scale * packed[:channels] / total,
            False,
            0.0,
            eps,
        )
        grad_input.addcmul_(grad_output, scale.view(broadcast_shape(input)))
    return grad_input, sum_dy_xhat, sum_dy


class SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm over the union of all ranks' batches in ``process_group`` (eager mode).

    ``torch.compile`` traces ``syncbn._ops`` instead, the same math as custom operators.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        momentum: float | torch.Tensor,
        eps: float,
        process_group: Any,
        world_size: int,
        recorder: StatsRecorder | None,
        layer: object,
    ) -> torch.Tensor:
        mean64, var64, count = global_moments(input, process_group, world_size, recorder, layer)
        if running_mean is not None and running_var is not None:
            update_running_stats(running_mean, running_var, mean64, var64, count, momentum)
        output, mean, var = normalize(input, mean64, var64, weight, bias, eps)
        ctx.save_for_backward(input, weight, mean, var, count)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.eps, ctx.process_group, ctx.world_size, ctx.recorder = (
            eps,
            process_group,
            world_size,
            recorder,
        )
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        input, weight, mean, var, count = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_input, sum_dy_xhat, sum_dy = batch_norm_backward(
            grad_output,
            input,
            weight,
            mean,
            var,
            count,
            ctx.eps,
            ctx.process_group,
            ctx.world_size,
            need_input,
            ctx.recorder,
        )
        grad_weight = sum_dy_xhat.to(weight.dtype) if need_weight and weight is not None else None
        grad_bias = sum_dy.to(ctx.bias_dtype) if need_bias and ctx.bias_dtype is not None else None
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, None, None
