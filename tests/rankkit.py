"""Shared pieces of the distributed syncbn tests: cases, deterministic data, reference BN.

Functions here run inside spawned ranks (syncbn.launch.run_on_ranks), so they live at
module level in an importable module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import syncbn

CHANNELS = 6
SPATIAL = {2: (), 3: (7,), 4: (5, 4), 5: (3, 4, 2)}
TORCH_BN = {
    2: torch.nn.BatchNorm1d,
    3: torch.nn.BatchNorm1d,
    4: torch.nn.BatchNorm2d,
    5: torch.nn.BatchNorm3d,
}
# Uneven local batches per world size; 3 and 4 include an empty rank.
LOCAL_SIZES = {1: [6], 2: [2, 5], 3: [4, 0, 3], 4: [1, 3, 0, 5]}


@dataclass(frozen=True)
class Case:
    dims: int = 4
    affine: bool = True
    bias: bool = True
    momentum: float | None = 0.1
    track_running_stats: bool = True
    layout: str = "contiguous"  # or "channels_last", "permuted"
    dtype: torch.dtype = torch.float32
    steps: int = 2


def batch(case: Case, sizes: list[int], step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch and upstream gradient of one step (same on every rank)."""
    gen = torch.Generator().manual_seed(1000 * step + case.dims)
    shape = (sum(sizes), CHANNELS, *SPATIAL[case.dims])
    x = torch.randn(shape, generator=gen) * 3 + torch.linspace(-2, 5, CHANNELS).view(
        1, CHANNELS, *[1] * (case.dims - 2)
    )
    return x.to(case.dtype), torch.randn(shape, generator=gen).to(case.dtype)


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    if layout == "permuted":  # same values, non-contiguous strides
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    return x


def init_params(bn: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.copy_(torch.rand(CHANNELS, generator=gen) + 0.5)
        if bn.bias is not None:
            bn.bias.copy_(torch.randn(CHANNELS, generator=gen))


def run_steps(bn: torch.nn.Module, case: Case, inputs: list[tuple[torch.Tensor, torch.Tensor]]):
    """Train-mode steps then one eval forward; everything a test compares, per step."""
    init_params(bn)
    steps = []
    for x, grad in inputs:
        x = with_layout(x, case.layout).requires_grad_()
        bn.zero_grad()
        out = bn(x)
        out.backward(grad)
        steps.append(
            {
                "out": out.detach(),
                "dx": x.grad,
                "channels_last": out.is_contiguous(memory_format=torch.channels_last)
                if out.dim() == 4
                else out.is_contiguous(memory_format=torch.channels_last_3d)
                if out.dim() == 5
                else None,
                "grad_weight": None if bn.weight is None else bn.weight.grad.clone(),
                "grad_bias": None if bn.bias is None else bn.bias.grad.clone(),
                "running_mean": None if bn.running_mean is None else bn.running_mean.clone(),
                "running_var": None if bn.running_var is None else bn.running_var.clone(),
            }
        )
    bn.eval()
    with torch.no_grad():
        steps.append({"eval_out": bn(with_layout(inputs[-1][0], case.layout))})
    return steps


def make_bn(cls, case: Case, **kwargs) -> torch.nn.Module:
    return cls(
        CHANNELS,
        momentum=case.momentum,
        affine=case.affine,
        track_running_stats=case.track_running_stats,
        bias=case.bias,
        **kwargs,
    )


def syncbn_rank(
    rank: int, world_size: int, cases: dict[str, Case], device: str = "cpu"
) -> dict[str, list[dict]]:
    """Run every case on this rank's slice of the global batches with syncbn.SyncBatchNorm
    on ``device`` (results come back on the CPU)."""
    sizes = LOCAL_SIZES[world_size]
    start = sum(sizes[:rank])
    results = {}
    for name, case in cases.items():
        inputs = [
            tuple(t[start : start + sizes[rank]].to(device) for t in batch(case, sizes, step))
            for step in range(case.steps)
        ]
        bn = make_bn(syncbn.SyncBatchNorm, case).to(device)
        results[name] = [_on_cpu(step) for step in run_steps(bn, case, inputs)]
    return results


def _on_cpu(step: dict) -> dict:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in step.items()}


def reference(case: Case, sizes: list[int]) -> list[dict]:
    """The same steps with torch's BatchNorm*d on the concatenated batch, in float32."""
    inputs = [tuple(t.float() for t in batch(case, sizes, step)) for step in range(case.steps)]
    return run_steps(make_bn(TORCH_BN[case.dims], case), case, inputs)


OTHER_COLLECTIVES = (
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "broadcast",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "barrier",
)


def count_all_reduces(unit: str = "values") -> list[int]:
    """From now on in this rank: record the size of every ``all_reduce`` in the returned list,
    in values or (``unit="bytes"``) bytes; any other collective fails the rank."""
    import torch.distributed as dist

    calls: list[int] = []
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        calls.append(tensor.numel() * (tensor.element_size() if unit == "bytes" else 1))
        return real(tensor, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("a collective other than all_reduce was issued")

    dist.all_reduce = counting
    for name in OTHER_COLLECTIVES:
        setattr(dist, name, forbidden)
    return calls
