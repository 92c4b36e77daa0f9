"""syncbn.precise_bn in this process, without torch.distributed: the statistics are this
process's, exact even when the mean dwarfs the std; no batches change nothing; bad arguments
raise and leave the model as it was. On gloo ranks: ``tests/ranks/test_precise_bn.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from precisekit import (
    NUM_BATCHES,
    as_items,
    assert_stats,
    assert_unchanged,
    make_model,
    rank_batches,
    reference_stats,
    snapshot,
    stale_stats,
)

from syncbn.precise import precise_bn


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
