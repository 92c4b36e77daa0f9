"""syncbn without torch.distributed: BatchNorm behaviour, validation, convert/revert."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

import syncbn
from syncbn._functions import local_moments, moments_to_mean_var, stat_dtype
from syncbn._moments import mean_var, shifted_sums, unbiased_var, unshifted_sums
from syncbn.convert import CONVERTIBLE


@pytest.fixture
def no_collectives(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a collective was issued")

    monkeypatch.setattr(dist, "all_reduce", forbidden)


@pytest.mark.parametrize(
    ("cls", "shape"),
    [
        (torch.nn.BatchNorm1d, (8, 5)),
        (torch.nn.BatchNorm1d, (8, 5, 7)),
        (torch.nn.BatchNorm2d, (8, 5, 4, 3)),
        (torch.nn.BatchNorm3d, (4, 5, 3, 2, 3)),
    ],
)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_without_distributed_is_exactly_batchnorm(no_collectives, cls, shape, momentum) -> None:
    torch.manual_seed(0)
    ref = cls(5, momentum=momentum)
    ours = syncbn.SyncBatchNorm(5, momentum=momentum)
    ours.load_state_dict(ref.state_dict())
    for step in range(3):
        x = torch.randn(shape) * 2 + step
        xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        ref(xr).pow(2).sum().backward()
        ours(xo).pow(2).sum().backward()
        assert torch.equal(xr.grad, xo.grad)
    for key, value in ref.state_dict().items():
        assert torch.equal(value, ours.state_dict()[key]), key
    assert torch.equal(ref.weight.grad, ours.weight.grad)
    ref.eval(), ours.eval()
    assert torch.equal(ref(x), ours(x))


def test_same_state_dict_keys_as_torch() -> None:
    for cls in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d):
        assert list(cls(4).state_dict()) == list(syncbn.SyncBatchNorm(4).state_dict())


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((8,), "at least 2 dims|2D to 5D"),
        ((2, 3, 4, 5, 6, 7), "2D to 5D"),
        ((8, 3, 4), "expected 5 channels"),
        ((1, 5), "Expected more than 1 value per channel"),
        ((1, 5, 1, 1), "Expected more than 1 value per channel"),
    ],
)
def test_bad_input_is_a_clear_error(shape, message) -> None:
    with pytest.raises(ValueError, match=message):
        syncbn.SyncBatchNorm(5)(torch.randn(shape))


def test_functional_checks_channels() -> None:
    with pytest.raises(ValueError, match="expected 4 channels"):
        syncbn.functional.sync_batch_norm(torch.randn(3, 2), torch.zeros(4), torch.ones(4))


def _model() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Sequential(torch.nn.Flatten(1, 2), torch.nn.BatchNorm1d(4, affine=False)),
        torch.nn.BatchNorm3d(4, momentum=None).eval(),
        torch.nn.BatchNorm1d(4, bias=False),
        torch.nn.SyncBatchNorm(4, track_running_stats=False),
    )


def test_convert_shares_parameters_buffers_and_mode() -> None:
    model = _model()
    before = {name: m for name, m in model.named_modules() if isinstance(m, CONVERTIBLE)}
    keys = list(model.state_dict())
    params = [id(p) for p in model.parameters()]
    converted = syncbn.convert_sync_batchnorm(model)
    assert converted is model
    assert [id(p) for p in converted.parameters()] == params
    assert list(converted.state_dict()) == keys
    for name, old in before.items():
        new = converted.get_submodule(name)
        assert isinstance(new, syncbn.SyncBatchNorm), name
        assert new.training == old.training
        assert new.running_mean is old.running_mean and new.weight is old.weight
        assert (new.bias is None) == (old.bias is None)
        assert (new.momentum, new.eps, new.affine, new.track_running_stats) == (
            old.momentum,
            old.eps,
            old.affine,
            old.track_running_stats,
        )


def test_revert_restores_torch_classes() -> None:
    model = _model()
    classes = {n: type(m) for n, m in model.named_modules()}
    converted = syncbn.convert_sync_batchnorm(model)
    converted[5](torch.randn(3, 4, 2, 2))  # a torch SyncBatchNorm: its dims are learnt from input
    reverted = syncbn.revert_sync_batchnorm(converted)
    for name, module in reverted.named_modules():
        expected = torch.nn.BatchNorm2d if name == "5" else classes[name]
        assert type(module) is expected, name
    assert not any(isinstance(m, syncbn.SyncBatchNorm) for m in reverted.modules())


def test_revert_without_known_dims_says_so() -> None:
    with pytest.raises(ValueError, match="run one forward pass"):
        syncbn.revert_sync_batchnorm(syncbn.SyncBatchNorm(3))


def test_convert_root_module_and_process_group_attribute() -> None:
    bn = syncbn.convert_sync_batchnorm(torch.nn.BatchNorm2d(3), process_group="group-sentinel")
    assert isinstance(bn, syncbn.SyncBatchNorm) and bn.process_group == "group-sentinel"


def test_new_sync_groups_needs_distributed() -> None:
    with pytest.raises(RuntimeError, match="init_process_group"):
        syncbn.new_sync_groups(2)


def test_recorder_is_inactive_unless_asked() -> None:
    assert syncbn.stats.active_recorder() is None
    model = torch.nn.Sequential(syncbn.SyncBatchNorm(3))
    with syncbn.record_stats(model) as rec:
        model(torch.randn(4, 3)).sum().backward()
    assert syncbn.stats.active_recorder() is None
    assert set(rec.layers) == {"0"} and rec.collectives == 0
    stats = rec.layers["0"]
    assert stats.local_count == stats.global_count == 4
    assert stats.mean_shift() == pytest.approx(0.0, abs=1e-6)


# Channel offsets that dwarf the spread (std 2): the case the shifted sums are for.
OFFSETS = (0.0, 1e3, -5e4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape", [(0, 3), (0, 3, 4, 2), (1, 3), (9, 3), (5, 3, 6), (4, 3, 5, 2), (2, 3, 2, 3, 2)]
)
def test_moments_match_float64_numpy(dtype, shape) -> None:
    """The one moments formula (syncbn._moments) against numpy in float64, on random data with
    large means, including an empty batch, around a shift and from raw (all-reduced) sums."""
    gen = torch.Generator().manual_seed(len(shape) * 100 + shape[0])
    offsets = torch.tensor(OFFSETS, dtype=torch.float64).view(1, 3, *[1] * (len(shape) - 2))
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + offsets).to(dtype)
    values = np.moveaxis(x.double().numpy(), 1, 0).reshape(3, -1)  # (C, N), float64
    n = values.shape[1]
    empty = np.zeros(3)
    ref_mean = values.mean(axis=1) if n else empty
    ref_var = values.var(axis=1) if n else empty
    ref_unbiased = values.var(axis=1, ddof=1) if n > 1 else empty
    tol = {"rtol": 1e-6, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-9}

    def check(mean, var, tol=tol) -> None:
        assert mean.dtype == var.dtype == torch.float64
        np.testing.assert_allclose(mean.numpy(), ref_mean, **tol)
        np.testing.assert_allclose(var.numpy(), ref_var, **tol)
        assert (var >= 0).all()

    count = torch.tensor(float(n), dtype=torch.float64)
    shift = torch.tensor(OFFSETS, dtype=torch.float64) + torch.tensor(
        [0.5, -1.0, 2.0], dtype=torch.float64
    )
    # Sums around a shift (precise_bn: the running mean), in the statistics dtype.
    s1, s2 = shifted_sums(x, shift, stat_dtype(x))
    assert s1.dtype == s2.dtype == stat_dtype(x)
    s1, s2 = s1.double(), s2.double()
    mean, var = mean_var(s1, s2, n, shift)
    if n == 0:  # an empty batch: the shift and a zero variance, no NaN
        assert torch.equal(mean, shift) and torch.equal(var, torch.zeros(3, dtype=torch.float64))
    else:
        check(mean, var)
    # ... the count as a tensor (the all-reduced form) gives the same.
    mean_t, var_t = mean_var(s1, s2, count, shift)
    assert torch.equal(mean_t, mean) and torch.equal(var_t, var)

    # Back to the origin (what ranks all-reduce), then the plain formula.
    sum_x, sum_x2 = unshifted_sums(s1, s2, count, shift)
    sum_tol = {"rtol": 1e-6 if dtype == torch.float32 else 1e-12, "atol": 1e-3}
    np.testing.assert_allclose(sum_x.numpy(), values.sum(axis=1), **sum_tol)
    np.testing.assert_allclose(sum_x2.numpy(), (values**2).sum(axis=1), **sum_tol)
    # Raw float64 moments lose ~1e-16 * (mean/std)^2 of the variance: 1e-7 relative here.
    raw_tol = {"rtol": max(tol["rtol"], 1e-6), "atol": max(tol["atol"], 1e-6)}
    check(*mean_var(sum_x, sum_x2, count), tol=raw_tol)

    # The forward's packed [sum x, sum x^2, n] (shifted by the first sample), local or reduced.
    packed = local_moments(x)
    assert packed.dtype == torch.float64 and packed[-1].item() == n
    packed_mean, packed_var, packed_count = moments_to_mean_var(packed)
    assert packed_count.item() == n
    check(packed_mean, packed_var, tol=raw_tol)

    unbiased = unbiased_var(packed_var, packed_count)
    np.testing.assert_allclose(unbiased.numpy(), ref_unbiased, **raw_tol)
    if n <= 1:  # no NaN or inf for an empty batch or a single value
        assert torch.equal(unbiased, torch.zeros(3, dtype=torch.float64))


def test_moments_trace_without_a_graph_break() -> None:
    """What torch.compile traces of the moments formula (the running-statistics update) has no
    graph break; the rest runs inside syncbn's custom operators."""

    def stats(s1, s2, count, shift):
        mean, var = mean_var(s1, s2, count, shift)
        return mean, unbiased_var(var, count)

    args = (torch.randn(4).double(), torch.rand(4).double() + 4, torch.tensor(3.0).double())
    shift = torch.randn(4).double()
    compiled = torch.compile(stats, fullgraph=True, backend="eager")
    for got, want in zip(compiled(*args, shift), stats(*args, shift), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
