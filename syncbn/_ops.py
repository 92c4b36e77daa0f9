"""syncbn for ``torch.compile``: the same math as ``syncbn._functions``, as custom operators.

torch's own SyncBatchNorm breaks the graph (pytorch#161302, #156680, #107372): it hands a
ProcessGroup object to an autograd.Function and masks empty ranks with data-dependent Python.
Here the synchronized part is two ``torch.library.custom_op`` s, opaque to dynamo:

- ``syncbn::batch_norm(input, weight, bias, eps, group_name, world_size)`` -> output and the
  global float64 mean, biased variance and count: local moments, ONE all_reduce(SUM), one
  eval-form ``F.batch_norm`` pass. Its autograd formula calls
- ``syncbn::batch_norm_backward(...)`` -> grad_input and the local [sum dy*xhat, sum dy]:
  ONE all_reduce(SUM).

Inside the operators everything runs eagerly: the process group is resolved from its name (a
string is a constant to dynamo; a ProcessGroup object is what breaks torch's graphs), an empty
rank joins both collectives with zeros, and a group holding a single value per channel raises
ValueError. Nothing in the traced code branches on tensor values. The running statistics are
updated outside the operators with plain tensor ops (a custom op with an autograd formula must
not mutate its inputs), so ``num_batches_tracked`` and ``momentum=None`` compile as well.

``syncbn.record_stats`` is eager-only: under ``torch.compile`` nothing is recorded.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from syncbn._functions import (
    batch_norm_backward,
    global_moments,
    normalize,
    stat_dtype,
    update_running_stats,
)
from syncbn._moments import reduce_dims
from syncbn.groups import group_world_size


def group_key(process_group: dist.ProcessGroup | None) -> tuple[str, int]:
    """(name, size) of ``process_group`` (the world when None); ("", 1) without
    torch.distributed. Traceable: dynamo folds both to constants."""
    world_size = group_world_size(process_group)
    if world_size == 1:
        return "", 1
    group = dist.group.WORLD if process_group is None else process_group
    return group.group_name, world_size


def _resolve(group_name: str) -> dist.ProcessGroup:
    return dist.distributed_c10d._resolve_process_group(group_name)


def _strided_like(tensor: Tensor, input: Tensor) -> Tensor:
    """``tensor`` with the strides of ``torch.empty_like(input)``, what the fake kernels say
    (a copy only for layouts F.batch_norm does not preserve)."""
    if tensor.stride() == input.stride():  # dense inputs: contiguous, channels_last, ...
        return tensor
    like = torch.empty_like(input)
    return tensor if tensor.stride() == like.stride() else like.copy_(tensor)


@torch.library.custom_op("syncbn::batch_norm", mutates_args=())
def batch_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    group_name: str,
    world_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training-mode synchronized batch norm: (output, mean64, var64, count64)."""
    group = _resolve(group_name) if world_size > 1 else None
    mean64, var64, count = global_moments(input, group, world_size)
    output, _, _ = normalize(input, mean64, var64, weight, bias, eps)
    return _strided_like(output, input), mean64, var64, count.clone()


@batch_norm.register_fake
def _batch_norm_fake(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    group_name: str,
    world_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    channels = input.size(1)
    stats = {"dtype": torch.float64, "device": input.device}
    return (
        torch.empty_like(input),
        torch.empty(channels, **stats),
        torch.empty(channels, **stats),
        torch.empty((), **stats),
    )


@torch.library.custom_op("syncbn::batch_norm_backward", mutates_args=())
def batch_norm_backward_op(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor | None,
    mean64: Tensor,
    var64: Tensor,
    count: Tensor,
    eps: float,
    group_name: str,
    world_size: int,
    need_input: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_input, or an empty tensor without ``need_input``; sum dy*xhat; sum dy), the
    sums local and in the statistics dtype."""
    dtype = stat_dtype(input)
    group = _resolve(group_name) if world_size > 1 else None
    grad_input, sum_dy_xhat, sum_dy = batch_norm_backward(
        grad_output,
        input,
        weight,
        mean64.to(dtype),
        var64.to(dtype),
        count,
        eps,
        group,
        world_size,
        need_input,
    )
    grad_input = input.new_empty(0) if grad_input is None else _strided_like(grad_input, input)
    return grad_input, sum_dy_xhat.to(dtype), sum_dy.to(dtype)


@batch_norm_backward_op.register_fake
def _batch_norm_backward_fake(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor | None,
    mean64: Tensor,
    var64: Tensor,
    count: Tensor,
    eps: float,
    group_name: str,
    world_size: int,
    need_input: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    channels = input.size(1)
    stats = {"dtype": stat_dtype(input), "device": input.device}
    grad_input = torch.empty_like(input) if need_input else input.new_empty(0)
    return grad_input, torch.empty(channels, **stats), torch.empty(channels, **stats)


def _setup_context(ctx, inputs, output) -> None:
    input, weight, bias, eps, group_name, world_size = inputs
    _, mean64, var64, count = output
    ctx.save_for_backward(input, weight, mean64, var64, count)
    ctx.mark_non_differentiable(mean64, var64, count)
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.eps, ctx.group_name, ctx.world_size = eps, group_name, world_size


def _backward(ctx, grad_output: Tensor, *_stats_grads: Tensor):
    input, weight, mean64, var64, count = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_input, sum_dy_xhat, sum_dy = batch_norm_backward_op(
        grad_output,
        input,
        weight,
        mean64,
        var64,
        count,
        ctx.eps,
        ctx.group_name,
        ctx.world_size,
        need_input,
    )
    return (
        grad_input if need_input else None,
        sum_dy_xhat.to(weight.dtype) if need_weight and weight is not None else None,
        sum_dy.to(ctx.bias_dtype) if need_bias and ctx.bias_dtype is not None else None,
        None,
        None,
        None,
    )


batch_norm.register_autograd(_backward, setup_context=_setup_context)


def traceable_sync_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    process_group: dist.ProcessGroup | None = None,
) -> Tensor:
    """``syncbn.functional.sync_batch_norm`` (without ``layer``: no recording) for
    ``torch.compile``: no graph break, the same results as eager within rounding."""
    if not training:
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, eps)
    group_name, world_size = group_key(process_group)
    if world_size == 1:
        if not isinstance(momentum, Tensor) or running_mean is None or running_var is None:
            return F.batch_norm(input, running_mean, running_var, weight, bias, True, momentum, eps)
        # A tensor momentum (momentum=None) would need a host sync to become F.batch_norm's
        # float: update the running statistics with tensor ops instead.
        output = F.batch_norm(input, None, None, weight, bias, True, 0.0, eps)
        with torch.no_grad():
            var, mean = torch.var_mean(input.to(stat_dtype(input)), reduce_dims(input))
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype) * momentum)
            running_var.mul_(1 - momentum).add_(var.to(running_var.dtype) * momentum)
        return output
    output, mean64, var64, count = batch_norm(input, weight, bias, eps, group_name, world_size)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            update_running_stats(running_mean, running_var, mean64, var64, count, momentum)
    return output
