"""torch.compile(fullgraph=True) of a syncbn-converted model on real gloo ranks equals eager.

torch's own SyncBatchNorm breaks the graph (pytorch#161302, #156680, #107372). syncbn's layers
trace through two custom operators (``syncbn._ops``), so a converted model compiles as one
graph, with uneven batches and an empty rank, and its outputs, input and parameter gradients
and running statistics equal eager mode's within 1e-5, in training and in eval mode.

Compiling is slow on the 2-core CI machine, so the models are tiny and most runs use the
``aot_eager`` backend: it traces with dynamo and AOTAutograd exactly as inductor does (fake
kernels, the registered backward, the joint graph), and only skips code generation. One run
at world 2 uses the default ``inductor`` backend, so we know the generated code really runs the
operators and their collectives. (The empty rank cannot use inductor in torch 2.13 on the CPU,
whatever the norm layer: a compiled ``nn.Conv2d`` backward on a batch of 0 fails inductor's
stride assertion, expected (288, 9, 3, 1), got channels_last strides for the weight gradient.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist
from torch import nn

import syncbn
from syncbn import _ops
from syncbn.launch import RankError, run_on_ranks

SIZES = {2: [2, 5], 3: [4, 0, 3]}  # local batches; world 3 has an empty rank
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


def compiled_against_eager(
    rank: int, world_size: int, backend: str, explicit_group: bool
) -> dict[str, object]:
    """Run on every rank: the same steps in eager mode and compiled with fullgraph=True."""
    torch._inductor.config.compile_threads = 1  # no compile worker pool: 2 cores, k ranks
    # An explicit group (same ranks, another name) checks that the op resolves it by name.
    group = dist.new_group(list(range(world_size))) if explicit_group else None
    batches = local_batches(rank, SIZES[world_size])
    explained = torch._dynamo.explain(make_model(group))(batches[0][0].clone())
    torch._dynamo.reset()
    eager = train_then_eval(make_model(group), batches)
    compiled_model = torch.compile(make_model(group), fullgraph=True, backend=backend)
    compiled = train_then_eval(compiled_model, batches)
    return {
        "eager": eager,
        "compiled": compiled,
        "graph_count": explained.graph_count,
        "graph_break_count": explained.graph_break_count,
        "break_reasons": [str(reason) for reason in explained.break_reasons],
    }


def assert_same_steps(compiled: list[dict], eager: list[dict], where: str) -> None:
    assert len(compiled) == len(eager) == STEPS + 1
    for step, (got, want) in enumerate(zip(compiled, eager, strict=True)):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert not torch.isnan(got[key]).any(), f"{where} step {step} {key}"
            torch.testing.assert_close(got[key], value, **TOL, msg=f"{where} step {step} {key}")


# Per step: ONE all_reduce per layer forward, [sum, sum of squares, count] of its 4 channels,
# and ONE backward, [sum dy, sum dy*xhat], in reverse layer order.
ALL_REDUCES = torch.tensor([[9, 9, 9], [8, 8, 8]])


def check_ranks(results: list[dict], world_size: int) -> None:
    for rank, got in enumerate(results):
        where = f"world {world_size} rank {rank} (batch {SIZES[world_size][rank]})"
        assert_same_steps(got["compiled"], got["eager"], where)
        for step in got["compiled"][:-1]:
            assert torch.equal(step["all_reduces"], ALL_REDUCES), where
        # Statistics are global: every rank holds the same running statistics.
        final = got["eager"][-2]
        for key, value in results[0]["eager"][-2].items():
            if key.startswith("buffer:"):
                torch.testing.assert_close(final[key], value, **TOL, msg=f"{where} {key}")


@pytest.fixture(scope="module")
def world_two_inductor() -> list[dict]:
    return run_on_ranks(compiled_against_eager, 2, "inductor", False, timeout=280)


def test_inductor_fullgraph_equals_eager_at_world_two(world_two_inductor) -> None:
    """Default backend (real code generation) on [2, 5]: train steps and eval equal eager."""
    check_ranks(world_two_inductor, 2)


def test_explain_reports_no_graph_break(world_two_inductor) -> None:
    for got in world_two_inductor:
        assert got["graph_break_count"] == 0, got["break_reasons"]
        assert got["graph_count"] == 1


def test_aot_eager_fullgraph_equals_eager_at_world_three_with_an_empty_rank() -> None:
    """[4, 0, 3] with an explicit process group: the empty rank joins every collective."""
    results = run_on_ranks(compiled_against_eager, 3, "aot_eager", True, timeout=280)
    check_ranks(results, 3)
    assert all(got["graph_break_count"] == 0 for got in results)


@pytest.mark.parametrize(
    "layout", ["contiguous", "channels_last", "permuted", "sliced", "float16", "empty"]
)
def test_operators_pass_opcheck(layout: str) -> None:
    """Fake kernels (shapes, dtypes, strides) and the autograd registration agree with the
    real kernels (world size 1: no collective)."""
    x = torch.randn(4, 6, 5, 3) * 2 + 1
    x = {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "permuted": x.transpose(0, -1).contiguous().transpose(0, -1),
        "sliced": x[:, ::2],
        "float16": x.half(),
        "empty": x[:0],
    }[layout].requires_grad_()
    channels = x.size(1)
    weight = (torch.rand(channels) + 0.5).requires_grad_()
    bias = torch.randn(channels).requires_grad_()
    args = (x, weight, bias, 1e-5, "", 1)
    if layout == "empty":  # alone, an empty batch fails the forward: only the backward
        stats = [torch.zeros(channels, dtype=torch.float64)] * 2 + [torch.tensor(8.0).double()]
    else:
        torch.library.opcheck(_ops.batch_norm, args)
        _, *stats = _ops.batch_norm(*args)
    for need_input in (True, False):
        backward_args = (torch.randn_like(x), x.detach(), weight.detach(), *stats, 1e-5, "", 1)
        torch.library.opcheck(_ops.batch_norm_backward_op, (*backward_args, need_input))


def compiled_single_value(rank: int, world_size: int) -> None:
    layer = torch.compile(syncbn.SyncBatchNorm(3), fullgraph=True, backend="eager")
    layer(torch.randn(1 - rank, 3))


def test_one_value_per_channel_over_the_group_still_fails_on_every_rank() -> None:
    """The check on the global count runs inside the operator, at run time: no hang."""
    with pytest.raises(RankError, match="Expected more than 1 value per channel"):
        run_on_ranks(compiled_single_value, 2, timeout=120)


def test_without_distributed_compiles_as_plain_batchnorm() -> None:
    """The not-initialized fast path (momentum float and None) compiles too; recording is
    eager-only, so a compiled call inside record_stats records nothing."""
    assert not dist.is_initialized()
    batches = local_batches(0, [6])
    eager = train_then_eval(make_model(), batches)
    model = make_model()
    compiled_model = torch.compile(model, fullgraph=True, backend="aot_eager")
    try:
        assert_same_steps(train_then_eval(compiled_model, batches), eager, "world 1")
        model.train()
        with syncbn.record_stats(model) as rec:
            compiled_model(batches[0][0])
        assert rec.layers == {} and rec.collectives == 0
    finally:
        torch._dynamo.reset()
