"""SyncBN on k ranks equals BatchNorm on the concatenated batch: outputs, all gradients,
running statistics (the property PyTorch's own distributed tests assert)."""

from __future__ import annotations

import pytest
import torch
from rankkit import LOCAL_SIZES, Case, reference, syncbn_rank

from syncbn.launch import run_on_ranks

CASES = {
    "1d-flat": Case(dims=2),
    "1d-seq": Case(dims=3),
    "2d": Case(dims=4),
    "3d": Case(dims=5),
    "affine-false": Case(affine=False),
    "no-bias": Case(bias=False),
    "momentum-none": Case(momentum=None, steps=3),
    "no-running-stats": Case(dims=3, track_running_stats=False),
    "channels-last-2d": Case(layout="channels_last"),
    "channels-last-3d": Case(dims=5, layout="channels_last"),
    "permuted": Case(layout="permuted"),
    "float16": Case(dtype=torch.float16),
    "bfloat16": Case(dtype=torch.bfloat16),
}
TOLERANCE = {  # (atol, rtol) against the float32 reference
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-2, 1e-2),
    torch.bfloat16: (1e-1, 2e-2),
}


@pytest.fixture(scope="module")
def results() -> dict[int, list[dict]]:
    """Every case, on every world size: one spawn of k gloo ranks per world size."""
    return {k: run_on_ranks(syncbn_rank, k, CASES) for k in LOCAL_SIZES}


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> None:
    assert not torch.isnan(actual).any()
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("world_size", sorted(LOCAL_SIZES))
@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_batchnorm_on_concatenated_batch(results, world_size: int, name: str) -> None:
    assert_equivalent([r[name] for r in results[world_size]], CASES[name])


@pytest.fixture(scope="module")
def cuda_results() -> dict[int, list[dict]]:
    """Every case on CUDA tensors: world 1, and 2 gloo ranks sharing the one GPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return {k: run_on_ranks(syncbn_rank, k, CASES, "cuda") for k in (1, 2)}


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_on_cuda_equals_batchnorm_on_concatenated_batch(
    cuda_results, world_size: int, name: str
) -> None:
    """The same property on a GPU (the reference stays torch BatchNorm on the CPU)."""
    assert_equivalent([r[name] for r in cuda_results[world_size]], CASES[name])


def assert_equivalent(ranks: list[list[dict]], case: Case) -> None:
    """Each rank's steps (``rankkit.run_steps``) against BatchNorm on the concatenated batch:
    outputs, input gradients, running statistics, the averaged parameter gradients, eval."""
    world_size = len(ranks)
    atol, rtol = TOLERANCE[case.dtype]
    sizes = LOCAL_SIZES[world_size]
    ref = reference(case, sizes)
    bounds = [(sum(sizes[:r]), sum(sizes[: r + 1])) for r in range(world_size)]

    for step, ref_step in enumerate(ref[:-1]):
        for (lo, hi), rank in zip(bounds, ranks, strict=True):
            got = rank[step]
            assert got["out"].dtype == case.dtype and got["dx"].dtype == case.dtype
            close(got["out"], ref_step["out"][lo:hi], atol, rtol)
            close(got["dx"], ref_step["dx"][lo:hi], atol, rtol)
            if case.layout == "channels_last":
                assert got["channels_last"], "output lost the channels_last memory format"
            for key in ("running_mean", "running_var"):
                if ref_step[key] is None:
                    assert got[key] is None
                else:  # identical on every rank and equal to BN's (unbiased with the global N)
                    assert torch.equal(got[key], ranks[0][step][key])
                    close(got[key], ref_step[key], atol, rtol)
        for key in ("grad_weight", "grad_bias"):
            if ref_step[key] is None:
                assert all(rank[step][key] is None for rank in ranks)
                continue
            # Each rank holds its local share; DDP's average is sum / k, i.e. ref / k.
            average = sum(rank[step][key] for rank in ranks) / world_size
            close(average, ref_step[key] / world_size, atol, rtol)

    for (lo, hi), rank in zip(bounds, ranks, strict=True):
        close(rank[-1]["eval_out"], ref[-1]["eval_out"][lo:hi], atol, rtol)
