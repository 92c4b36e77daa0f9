"""syncbn.precise_bn: exact population statistics against a float64 reference, on 1-4 gloo
ranks with uneven (and empty) shares, for torch and syncbn layers, under DDP and in groups of
ranks; one all_reduce per pass; a rank that fails fails every rank and changes nothing.

The model, batches and reference are in ``precisekit.py``; precise_bn without
torch.distributed is tested in ``tests/unit/test_precise_bn_local.py``.
"""

from __future__ import annotations

import pytest
import torch
from precisekit import (
    NUM_BATCHES,
    PACKED,
    PLANS,
    UPDATED,
    as_items,
    assert_stats,
    assert_unchanged,
    make_model,
    rank_batches,
    reference_stats,
    snapshot,
    stale_stats,
)
from rankkit import count_all_reduces

import syncbn
from syncbn.launch import run_on_ranks
from syncbn.precise import precise_bn


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
