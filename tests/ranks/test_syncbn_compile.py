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

The operators alone (opcheck) and compiling without torch.distributed are tested in
``tests/unit/test_syncbn_compile_ops.py``; the model and steps are in ``compilekit.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from compilekit import TOL, assert_same_steps, local_batches, make_model, train_then_eval

import syncbn
from syncbn.launch import RankError, run_on_ranks

SIZES = {2: [2, 5], 3: [4, 0, 3]}  # local batches; world 3 has an empty rank


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


def compiled_single_value(rank: int, world_size: int) -> None:
    layer = torch.compile(syncbn.SyncBatchNorm(3), fullgraph=True, backend="eager")
    layer(torch.randn(1 - rank, 3))


def test_one_value_per_channel_over_the_group_still_fails_on_every_rank() -> None:
    """The check on the global count runs inside the operator, at run time: no hang."""
    with pytest.raises(RankError, match="Expected more than 1 value per channel"):
        run_on_ranks(compiled_single_value, 2, timeout=120)
