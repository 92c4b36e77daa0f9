"""The model and steps of the torch.compile tests (``tests/ranks/test_syncbn_compile.py`` on gloo
ranks, ``tests/unit/test_syncbn_compile_ops.py`` without torch.distributed): a tiny converted
CNN, deterministic batches, training steps then an eval forward with the all_reduces of each
counted, and the comparison of compiled against eager steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

import syncbn

STEPS = 2
TOL = {"atol": 1e-5, "rtol": 1e-5}


class SmallCNN(nn.Module):
    """Conv-BN-ReLU x2, pooling, and a Linear-BatchNorm1d-Linear head whose BatchNorm1d keeps a
    cumulative average (momentum=None, a tensor momentum from num_batches_tracked)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(4, 4), nn.BatchNorm1d(4, momentum=None), nn.Linear(4, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_model(process_group: dist.ProcessGroup | None = None) -> nn.Module:
    torch.manual_seed(0)
    return syncbn.convert_sync_batchnorm(SmallCNN(), process_group)


def global_batch(step: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input (offset mean, so the shifted statistics matter) and upstream gradient."""
    gen = torch.Generator().manual_seed(10 + step)
    return torch.randn(total, 3, 6, 6, generator=gen) * 2 + 1, torch.randn(total, 3, generator=gen)


def local_batches(rank: int, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    start = sum(sizes[:rank])
    return [
        tuple(t[start : start + sizes[rank]] for t in global_batch(step, sum(sizes)))
        for step in range(STEPS)
    ]


@contextmanager
def counted_all_reduces() -> Iterator[list[int]]:
    """Sizes of the all_reduces issued inside (the custom ops call dist.all_reduce at run time,
    so this sees compiled code too)."""
    sizes: list[int] = []
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        sizes.append(tensor.numel())
        return real(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        yield sizes
    finally:
        dist.all_reduce = real


def train_then_eval(model: nn.Module, batches) -> list[dict[str, torch.Tensor]]:
    """STEPS training steps (SGD) then one eval forward: everything the tests compare, and
    the sizes of the all_reduces of each step's forward and backward."""
    model.train()
    module = getattr(model, "_orig_mod", model)  # the same names for a compiled model
    results = []
    for x, grad in batches:
        x = x.clone().requires_grad_()
        model.zero_grad()
        with counted_all_reduces() as forward_sizes:
            out = model(x)
        with counted_all_reduces() as backward_sizes:
            out.backward(grad)
        state = {"out": out.detach(), "dx": x.grad}
        state["all_reduces"] = torch.tensor([forward_sizes, backward_sizes])
        state |= {f"grad:{n}": p.grad.clone() for n, p in module.named_parameters()}
        state |= {f"buffer:{n}": b.clone() for n, b in module.named_buffers()}
        results.append(state)
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(0.1 * p.grad)
    model.eval()
    with torch.no_grad(), counted_all_reduces() as eval_sizes:
        results.append({"eval_out": model(batches[-1][0])})
    assert eval_sizes == []
    return results


def assert_same_steps(compiled: list[dict], eager: list[dict], where: str) -> None:
    assert len(compiled) == len(eager) == STEPS + 1
    for step, (got, want) in enumerate(zip(compiled, eager, strict=True)):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert not torch.isnan(got[key]).any(), f"{where} step {step} {key}"
            torch.testing.assert_close(got[key], value, **TOL, msg=f"{where} step {step} {key}")
