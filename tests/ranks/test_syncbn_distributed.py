"""syncbn across spawned gloo ranks: collective counts, numerics, DDP training, subgroups,
statistics recording, and errors that must not hang."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rankkit import count_all_reduces

import syncbn
from syncbn.launch import RankError, run_on_ranks


def _two_layer_model(**bn_kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        syncbn.SyncBatchNorm(8, **bn_kwargs),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 3),
        syncbn.SyncBatchNorm(4, **bn_kwargs),
    )


def count_collectives(rank: int, world_size: int) -> dict[str, list[int]]:
    """Sizes of every all_reduce per phase; any other collective fails the rank."""
    calls = count_all_reduces()
    phases: dict[str, list[int]] = {}

    def phase(name: str, fn) -> None:
        calls.clear()
        fn()
        phases[name] = list(calls)

    model = _two_layer_model()
    x = torch.randn(3 + rank, 3, 6, 6)
    out = None

    def forward():
        nonlocal out
        out = model(x)

    phase("forward", forward)
    phase("backward", lambda: out.sum().backward())
    model.eval()
    phase("eval", lambda: model(x))
    unt = _two_layer_model(track_running_stats=False).eval()
    phase("eval_no_running_stats", lambda: unt(x))
    return phases


def test_exactly_one_all_reduce_per_layer_each_way() -> None:
    for phases in run_on_ranks(count_collectives, 2):
        # [sum x (C), sum x^2 (C), n] forward; [sum dy, sum dy*xhat] backward.
        assert phases["forward"] == [2 * 8 + 1, 2 * 4 + 1]
        assert phases["backward"] == [2 * 4, 2 * 8]
        assert phases["eval"] == []
        assert phases["eval_no_running_stats"] == [17, 9]


def test_world_size_one_issues_no_collective() -> None:
    (phases,) = run_on_ranks(count_collectives, 1)
    assert all(calls == [] for calls in phases.values())


def large_mean_small_std(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 4, 8, 8, generator=gen) * 0.1 + torch.tensor([1e4, -1e4, 3e3, 5e2]).view(
        1, 4, 1, 1
    )
    local = x[rank * 8 : (rank + 1) * 8]
    bn = syncbn.SyncBatchNorm(4, momentum=1.0)  # running_var := unbiased global variance
    with syncbn.record_stats(bn) as rec:
        out = bn(local)
    return {"x": x, "out": out, "running_var": bn.running_var, "var": rec.layers[""].global_var}


def test_float32_statistics_stay_accurate_when_mean_dwarfs_std() -> None:
    results = run_on_ranks(large_mean_small_std, 2)
    x = results[0]["x"]
    ref_var = x.double().var((0, 2, 3), unbiased=False)
    n = x.numel() / x.size(1)
    naive = (x * x).mean((0, 2, 3)) - x.mean((0, 2, 3)) ** 2  # E[x^2] - E[x]^2 in float32
    assert ((naive.double() - ref_var).abs() / ref_var).max() > 1e-3, "the test would not notice"
    ref_out = (x.double() - x.double().mean((0, 2, 3), keepdim=True)) / (
        ref_var.view(1, 4, 1, 1) + 1e-5
    ).sqrt()
    for rank, got in enumerate(results):
        assert ((got["var"] - ref_var).abs() / ref_var).max() < 1e-3
        unbiased = ref_var * n / (n - 1)
        assert ((got["running_var"].double() - unbiased).abs() / unbiased).max() < 1e-3
        torch.testing.assert_close(
            got["out"].double(), ref_out[rank * 8 : (rank + 1) * 8], atol=2e-2, rtol=0
        )


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Sequential(
            torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _training_data(step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(batch, 3, 9, 9, generator=gen) * 2 + 1, torch.randint(
        0, 4, (batch,), generator=gen
    )


def _train(model: torch.nn.Module, batches) -> dict[str, torch.Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


STEPS, LOCAL_BATCH = 5, 6


def ddp_training(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = syncbn.convert_sync_batchnorm(SmallCNN())
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    batches = []
    for step in range(STEPS):
        x, y = _training_data(step, LOCAL_BATCH * world_size)
        sl = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        batches.append((x[sl], y[sl]))
    _train(ddp, batches)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_ddp_training_matches_single_process_on_the_global_batch() -> None:
    torch.manual_seed(0)
    ref = _train(SmallCNN(), [_training_data(s, 2 * LOCAL_BATCH) for s in range(STEPS)])
    for state in run_on_ranks(ddp_training, 2):
        assert list(state) == list(ref)
        for key, value in ref.items():
            torch.testing.assert_close(state[key], value, atol=1e-5, rtol=1e-5, msg=key)


def subgroups(rank: int, world_size: int) -> dict:
    with pytest.raises(ValueError, match="not divisible by group_size 3"):
        syncbn.new_sync_groups(3)
    group = syncbn.new_sync_groups(2)
    sent = count_all_reduces("bytes")
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4 * world_size, 3, 5, generator=gen) * torch.arange(1, 4 * world_size + 1).view(
        -1, 1, 1
    )
    upstream = torch.randn(x.shape, generator=gen)
    bn = syncbn.SyncBatchNorm(3, momentum=1.0, process_group=group)
    local = x[4 * rank : 4 * rank + 4].clone().requires_grad_()
    with syncbn.record_stats(bn) as rec:
        out = bn(local)
        (out * upstream[4 * rank : 4 * rank + 4]).sum().backward()
    return {
        "x": x,
        "upstream": upstream,
        "out": out.detach(),
        "grad_input": local.grad,
        "grad_weight": bn.weight.grad,
        "grad_bias": bn.bias.grad,
        "running_mean": bn.running_mean,
        "running_var": bn.running_var,
        "group_size": dist.get_world_size(group),
        "counted_bytes": sum(sent),
        "recorded_bytes": rec.allreduce_bytes,
    }


def test_sync_groups_equal_batchnorm_on_each_groups_batch_and_differ_between_groups() -> None:
    results = run_on_ranks(subgroups, 4)
    x, upstream = results[0]["x"], results[0]["upstream"]
    for first, second in ((0, 1), (2, 3)):
        rows = slice(4 * first, 4 * second + 4)
        ref = torch.nn.BatchNorm1d(3, momentum=1.0)
        batch = x[rows].clone().requires_grad_()
        ref_out = ref(batch)
        (ref_out * upstream[rows]).sum().backward()
        for i, rank in enumerate((first, second)):
            got = results[rank]
            assert got["group_size"] == 2
            mine = slice(4 * i, 4 * i + 4)
            torch.testing.assert_close(got["out"], ref_out[mine].detach())
            torch.testing.assert_close(got["grad_input"], batch.grad[mine])
            torch.testing.assert_close(got["running_mean"], ref.running_mean)
            torch.testing.assert_close(got["running_var"], ref.running_var)
        # Each rank holds its batch's share of the parameter gradients (DDP sums them).
        for key, param in (("grad_weight", ref.weight), ("grad_bias", ref.bias)):
            total = results[first][key] + results[second][key]
            torch.testing.assert_close(total, param.grad)
    assert not torch.allclose(results[0]["running_mean"], results[2]["running_mean"])
    assert not torch.allclose(results[0]["running_var"], results[2]["running_var"])
    for got in results:
        # forward [sum x, sum x^2, n] in float64 + backward [sum dy, sum dy*xhat] in float32,
        # for 3 channels: what each rank sends whatever the group size
        assert got["counted_bytes"] == got["recorded_bytes"] == 8 * (2 * 3 + 1) + 4 * 2 * 3


def recorded(rank: int, world_size: int) -> dict:
    model = _two_layer_model()
    x = torch.randn(2, 3, 6, 6) + 3 * rank  # small, shifted local batches
    with syncbn.record_stats(model) as rec:
        model(x).sum().backward()
    return {
        "x": x,
        "layers": {name: s.summary() for name, s in rec.layers.items()},
        "global_mean": rec.layers["1"].global_mean,
        "local_mean": rec.layers["1"].local_mean,
        "sync_time_s": rec.sync_time_s,
        "collectives": rec.collectives,
    }


def test_recorder_reports_local_against_global_statistics() -> None:
    results = run_on_ranks(recorded, 2)
    model = _two_layer_model()
    features = model[0](torch.cat([r["x"] for r in results]))
    torch.testing.assert_close(results[0]["global_mean"].float(), features.mean((0, 2, 3)))
    assert torch.equal(results[0]["global_mean"], results[1]["global_mean"])
    assert not torch.allclose(results[0]["local_mean"], results[1]["local_mean"])
    for got in results:
        assert set(got["layers"]) == {"1", "4"}
        assert got["layers"]["1"]["local_count"] == 2 * 4 * 4
        assert got["layers"]["1"]["global_count"] == 2 * 2 * 4 * 4
        assert got["layers"]["1"]["mean_shift"] > 0.1
        assert got["collectives"] == 4 and got["sync_time_s"] > 0


def single_value(rank: int, world_size: int) -> None:
    syncbn.SyncBatchNorm(3)(torch.randn(1 - rank, 3))


def test_one_value_per_channel_over_the_group_fails_on_every_rank_without_hanging() -> None:
    with pytest.raises(RankError, match="Expected more than 1 value per channel"):
        run_on_ranks(single_value, 2, timeout=60)


def hang(rank: int, world_size: int) -> None:
    if rank == 0:
        syncbn.SyncBatchNorm(3)(torch.randn(4, 3))  # rank 1 never joins


def test_a_rank_that_never_joins_fails_the_run_instead_of_blocking() -> None:
    with pytest.raises(RankError, match=r"did not finish|failed"):
        run_on_ranks(hang, 2, timeout=10)
