"""syncbn.precise_bn: exact population statistics against a float64 reference, on 1-4 gloo
ranks with uneven (and empty) shares, for torch and syncbn layers; one all_reduce per pass."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

import syncbn
from syncbn.launch import run_on_ranks
from syncbn.precise import precise_bn

from ranks import count_all_reduces

# Batch sizes per rank, per world size: uneven counts and sizes, an empty rank at k = 3 and 4.
PLANS = {
    1: [[4, 3, 5, 2]],
    2: [[2, 5], [3, 3, 4, 2]],
    3: [[3, 2], [], [4, 2, 3]],
    4: [[2, 2], [5, 3, 2], [], [3]],
}
NUM_BATCHES = 3  # a rank with more batches uses the first three
UPDATED = ("1", "4", "10")  # the layers with running statistics
CHANNELS = {"1": 8, "4": 6, "10": 5}
PACKED = sum(2 * c + 1 for c in CHANNELS.values()) + 1  # + the error flag


def make_model() -> torch.nn.Sequential:
    """Conv-BN-ReLU-Conv-BN-ReLU-BN(no running stats)-pool-Linear-BN1d, random weights."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 6, 3, bias=False),
            torch.nn.BatchNorm2d(6, affine=False, momentum=None),
            torch.nn.ReLU(),
            torch.nn.BatchNorm2d(6, track_running_stats=False),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(6, 5),
            torch.nn.BatchNorm1d(5, momentum=0.3),
        )
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, _BatchNorm) and m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_()
    return model


def rank_batches(world_size: int, rank: int) -> list[torch.Tensor]:
    """This rank's input batches (spatial sizes vary too)."""
    out = []
    for b, size in enumerate(PLANS[world_size][rank]):
        gen = torch.Generator().manual_seed(100 * world_size + 10 * rank + b)
        x = torch.randn(size, 3, 7 + b % 2, 6 + b % 3, generator=gen) * 2
        out.append(x + torch.tensor([3.0, -1.0, 5.0]).view(1, 3, 1, 1))
    return out


def as_items(batches: list[torch.Tensor], rank: int) -> list:
    """The accepted batch forms: tensors, (x, y) tuples, {"x": x, ...} dicts."""
    kind = rank % 3
    if kind == 1:
        return [(x, torch.zeros(len(x))) for x in batches]
    if kind == 2:
        return [{"x": x, "y": torch.zeros(len(x))} for x in batches]
    return batches


def stale_stats(model: torch.nn.Module, rank: int) -> None:
    """Different, wrong running statistics on every rank (as after local batch norm)."""
    gen = torch.Generator().manual_seed(50 + rank)
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.num_batches_tracked.fill_(7)


def snapshot(model: torch.nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "momentum": [m.momentum for m in model.modules() if isinstance(m, _BatchNorm)],
        "stats": {
            name: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
            for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.running_mean is not None
        },
    }


def assert_unchanged(before: dict, after: dict) -> None:
    assert after["modes"] == before["modes"]
    for name in UPDATED:
        mean, var, tracked = after["stats"][name]
        assert torch.equal(mean, before["stats"][name][0]), name
        assert torch.equal(var, before["stats"][name][1]), name
        assert tracked == before["stats"][name][2], name


def precise_rank(rank: int, world_size: int, variants: list[str]) -> dict[str, dict]:
    """precise_bn on this rank's batches for each variant: "torch" (plain BatchNorm*d, local
    statistics), "sync" (converted to syncbn.SyncBatchNorm), "ddp" (sync under DDP), "group"
    (plain, restricted to pairs of ranks)."""
    group = syncbn.new_sync_groups(2) if "group" in variants else None
    models = {}
    for variant in variants:
        model = make_model()
        if variant in ("sync", "ddp"):
            model = syncbn.convert_sync_batchnorm(model)
        model.train()
        model[10].eval()  # a layer in eval mode is updated too, and stays in eval mode
        stale_stats(model, rank)
        models[variant] = model
    ddp = torch.nn.parallel.DistributedDataParallel(models["ddp"]) if "ddp" in models else None
    calls = count_all_reduces()  # DDP's own set-up broadcasts come before
    items = as_items(rank_batches(world_size, rank), rank)
    results = {}
    for variant, model in models.items():
        before = snapshot(model)
        calls.clear()
        used = precise_bn(
            ddp if variant == "ddp" else model,
            iter(items),
            NUM_BATCHES,
            process_group=group if variant == "group" else None,
        )
        after = snapshot(model)
        results[variant] = {
            "used": used,
            "calls": list(calls),
            "before": before,
            "after": after,
            "grad_enabled": torch.is_grad_enabled(),
            "grads": [p.grad for p in model.parameters() if p.grad is not None],
            "layer_types": sorted({type(m).__name__ for m in model.modules()}),
        }
    return results


def reference_stats(world_size: int, ranks: list[int]) -> dict[str, tuple]:
    """Float64: the same model (train-mode batch norm) over every rank's batches in turn; each
    layer's mean and unbiased variance over all inputs it saw."""
    model = make_model().double().train()
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in UPDATED}

    def capture(name):
        def hook(module, args):
            seen[name].append(args[0].transpose(0, 1).reshape(module.num_features, -1))

        return hook

    for name in UPDATED:
        model.get_submodule(name).register_forward_pre_hook(capture(name))
    with torch.no_grad():
        for rank in ranks:
            for x in rank_batches(world_size, rank)[:NUM_BATCHES]:
                model(x.double())
    out = {}
    for name, chunks in seen.items():
        values = torch.cat(chunks, 1)
        out[name] = (values.mean(1), values.var(1, unbiased=True))
    return out


def assert_stats(got: dict, ref: dict) -> None:
    for name in UPDATED:
        mean, var, _ = got[name]
        torch.testing.assert_close(mean.double(), ref[name][0], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(var.double(), ref[name][1], rtol=1e-5, atol=1e-6, msg=name)


def check_rank(result: dict, world_size: int, rank: int, ref: dict, calls: list) -> None:
    before, after = result["before"], result["after"]
    assert result["used"] == min(NUM_BATCHES, len(PLANS[world_size][rank]))
    assert result["calls"] == calls
    assert after["modes"] == before["modes"]
    assert after["momentum"] == before["momentum"] == [0.1, None, 0.1, 0.3]
    assert result["grad_enabled"] and result["grads"] == []
    assert_stats(after["stats"], ref)
    for name in UPDATED:  # num_batches_tracked unchanged; the stale statistics replaced
        assert after["stats"][name][2] == before["stats"][name][2] == 7
        assert not torch.allclose(after["stats"][name][0], before["stats"][name][0])


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_population_statistics_of_all_ranks_with_one_all_reduce(world_size: int) -> None:
    variants = ["torch", "sync"] + (["ddp"] if world_size == 2 else [])
    variants += ["group"] if world_size == 4 else []
    results = run_on_ranks(precise_rank, world_size, variants, timeout=240)
    ref = reference_stats(world_size, list(range(world_size)))
    calls = [PACKED] if world_size > 1 else []
    for variant in ("torch", "sync", "ddp"):
        if variant not in variants:
            continue
        for rank, got in enumerate(results):
            check_rank(got[variant], world_size, rank, ref, calls)
            for name in UPDATED:  # every rank holds the same statistics, bit for bit
                for i in range(2):
                    assert torch.equal(
                        got[variant]["after"]["stats"][name][i],
                        results[0][variant]["after"]["stats"][name][i],
                    )
        kinds = results[0][variant]["layer_types"]
        assert ("SyncBatchNorm" in kinds) == (variant != "torch"), kinds
        assert ("BatchNorm2d" in kinds) == (variant == "torch"), kinds
    if "group" in variants:  # statistics of each pair of ranks only
        for pair in ((0, 1), (2, 3)):
            pair_ref = reference_stats(world_size, list(pair))
            for rank in pair:
                check_rank(results[rank]["group"], world_size, rank, pair_ref, calls)


def failing_rank(rank: int, world_size: int) -> dict:
    """Rank 1's second batch holds one sample: the BatchNorm1d head sees one value per channel."""
    model = make_model().train()
    stale_stats(model, rank)
    before = snapshot(model)
    batches = rank_batches(2, rank)
    if rank == 1:
        batches[1] = batches[1][:1]
    calls = count_all_reduces()
    try:
        precise_bn(syncbn.convert_sync_batchnorm(model), batches, NUM_BATCHES)
    except (ValueError, RuntimeError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    else:
        error = None
    return {"error": error, "calls": calls, "before": before, "after": snapshot(model)}


def test_a_failing_rank_fails_every_rank_without_hanging_and_changes_nothing() -> None:
    results = run_on_ranks(failing_rank, 2, timeout=120)
    assert results[0]["error"] == (
        "RuntimeError: precise_bn failed on 1 other rank(s) of the process group; "
        "running statistics are unchanged"
    )
    assert results[1]["error"].startswith("ValueError: Expected more than 1 value per channel")
    for got in results:
        assert got["calls"] == [PACKED]
        assert_unchanged(got["before"], got["after"])


@pytest.mark.parametrize("kind", ["torch", "torch.nn.SyncBatchNorm"])
def test_without_torch_distributed_the_statistics_are_this_process(kind: str) -> None:
    assert not dist.is_initialized()
    model = make_model().eval()
    if kind == "torch.nn.SyncBatchNorm":  # its training mode refuses CPU; eval form is used
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert isinstance(model[1], torch.nn.SyncBatchNorm)
    stale_stats(model, 0)
    before = snapshot(model)
    outputs = []
    model.register_forward_hook(lambda m, args, out: outputs.append(out.requires_grad))
    used = precise_bn(model, as_items(rank_batches(1, 0), 1), NUM_BATCHES)
    after = snapshot(model)
    assert used == NUM_BATCHES and outputs == [False] * NUM_BATCHES
    assert after["modes"] == before["modes"] and not any(after["modes"])
    assert_stats(after["stats"], reference_stats(1, [0]))
    assert all(p.grad is None for p in model.parameters())


def test_statistics_stay_accurate_when_the_mean_dwarfs_the_std() -> None:
    gen = torch.Generator().manual_seed(3)
    offsets = torch.tensor([1e4, -1e4, 3e3, 5e2])
    batches = [
        torch.randn(8, 4, 8, 8, generator=gen, dtype=torch.float64) * 0.5 + offsets.view(1, 4, 1, 1)
        for _ in range(5)
    ]
    x = torch.cat(batches)
    ref_var = x.var((0, 2, 3), unbiased=True)
    naive = (x.float() ** 2).mean((0, 2, 3)) - x.float().mean((0, 2, 3)) ** 2
    assert ((naive.double() - ref_var).abs() / ref_var).max() > 1e-2, "the test would not notice"
    bn = torch.nn.BatchNorm2d(4, dtype=torch.float64)  # stored in float64: nothing rounds it
    assert precise_bn(bn, batches, 10) == 5
    torch.testing.assert_close(bn.running_mean, x.mean((0, 2, 3)), rtol=1e-14, atol=0)
    # The ranks' sums meet as float64 raw moments (their shifts may differ), which costs about
    # 1e-16 * (mean / std)^2 relative: ~1e-7 here, where float32 is off by more than 1e-2.
    torch.testing.assert_close(bn.running_var, ref_var, rtol=1e-6, atol=0)


def test_no_batches_leaves_the_statistics_unchanged() -> None:
    model = make_model()
    stale_stats(model, 0)
    before = snapshot(model)
    assert precise_bn(model, [], 5) == 0
    assert precise_bn(model, rank_batches(1, 0), 0) == 0
    assert_unchanged(before, snapshot(model))


def test_bad_arguments_raise_and_restore_the_model() -> None:
    model = make_model().train()
    stale_stats(model, 0)
    before = snapshot(model)
    with pytest.raises(ValueError, match="num_batches must be a non-negative integer"):
        precise_bn(model, [], -1)
    with pytest.raises(TypeError, match="needs an 'x' item"):
        precise_bn(model, [{"input": torch.randn(2, 3, 8, 8)}], 1)
    with pytest.raises(ValueError, match="expected 8 channels in dim 1"):
        precise_bn(model[1], [torch.randn(2, 4, 8, 8)], 1)
    assert_unchanged(before, snapshot(model))
    assert model[6].running_mean is None and model[6].running_var is None
    assert not any(m._forward_pre_hooks for m in model.modules())
