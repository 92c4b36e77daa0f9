"""workers: spec validation, datasets, sharding, models, BN statistics, the stats callback.

No Ray cluster here: these run in one process in a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from contract.datasets import DatasetError, steps_per_epoch
from contract.model_choice import infer_kind
from contract.spec import JobSpec
from workers.data.builtin import load_dataset, load_digits, make_synthetic
from workers.data.npz import load_npz
from workers.data.shard import batches, eval_indices, shard_indices
from workers.nets import apply_norm, build_model

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- spec


def _error_fields(**kwargs) -> list[tuple]:
    with pytest.raises(ValidationError) as info:
        JobSpec(**{"dataset": "digits", **kwargs})
    return [e["loc"] for e in info.value.errors()]


def test_spec_defaults_and_round_trip():
    spec = JobSpec(dataset="digits", workers=4, batch_size_per_worker=2)
    assert spec.model == "auto" and spec.norm == "sync" and spec.sync_group_size is None
    assert spec.global_batch_size == 8
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec
    assert spec.resources_per_worker() == {"CPU": 1.0}
    assert JobSpec(dataset="my-upload_1").is_builtin_dataset is False


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"unknown": 1}, "unknown"),
        ({"workers": 0}, "workers"),
        ({"batch_size_per_worker": 0}, "batch_size_per_worker"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"norm": "instance"}, "norm"),
        ({"norm": "group", "workers": 2, "sync_group_size": 2}, "sync_group_size"),
        ({"group_norm_groups": 4}, "group_norm_groups"),
        ({"norm": "group", "group_norm_groups": 0}, "group_norm_groups"),
        ({"norm": "group", "precise_bn_batches": 2}, "precise_bn_batches"),
        ({"model": "vit"}, "model"),
        ({"seed": -1}, "seed"),
        ({"dataset": "../etc/passwd"}, "dataset"),
        ({"dataset": ""}, "dataset"),
        ({"workers": 4, "sync_group_size": 3}, "sync_group_size"),
        ({"workers": 4, "sync_group_size": 0}, "sync_group_size"),
        ({"norm": "local", "sync_group_size": 1}, "sync_group_size"),
        ({"report_every_steps": -1}, "report_every_steps"),
        ({"max_failures": -1}, "max_failures"),
        ({"cpus_per_worker": 0}, "cpus_per_worker"),
    ],
)
def test_spec_rejects_with_field_name(kwargs, field):
    assert (field,) in _error_fields(**kwargs)


def test_spec_accepts_group_dividing_workers():
    assert JobSpec(dataset="synthetic", workers=4, sync_group_size=2).sync_group_size == 2


# ---------------------------------------------------------------- data


def test_digits_fixed_split_and_standardized():
    a, b = load_digits(), load_digits()
    assert a.input_shape == (8, 8) and a.num_classes == 10
    assert len(a.x_train) + len(a.x_test) == 1797
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 1e-3
    assert set(np.unique(a.y_test)) == set(range(10))


def test_synthetic_is_seeded():
    a, b = make_synthetic(), make_synthetic()
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64


@pytest.mark.parametrize(("n", "world"), [(10, 3), (1347, 4), (7, 7), (5, 8), (100, 1)])
def test_shards_match_distributed_sampler(n, world):
    from torch.utils.data import DistributedSampler

    for epoch in (0, 3):
        shards = []
        for rank in range(world):
            sampler = DistributedSampler(range(n), world, rank, shuffle=True, seed=11)
            sampler.set_epoch(epoch)
            ours = shard_indices(n, rank, world, epoch, seed=11)
            assert ours.tolist() == list(sampler)
            shards.append(ours)
        assert len({len(s) for s in shards}) == 1  # same steps on every rank
        assert set(np.concatenate(shards).tolist()) == set(range(n))
    assert shard_indices(50, 0, 2, 0, 1).tolist() != shard_indices(50, 0, 2, 1, 1).tolist()


def test_eval_indices_partition_the_test_set():
    parts = [eval_indices(11, r, 4) for r in range(4)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(11))


def test_batches_merge_a_lone_trailing_sample():
    assert [len(b) for b in batches(np.arange(9), 4)] == [4, 5]
    assert [len(b) for b in batches(np.arange(10), 4)] == [4, 4, 2]
    assert [len(b) for b in batches(np.arange(3), 1)] == [1, 1, 1]
    assert steps_per_epoch(1347, 4, 2) == 168


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_valid_npz_with_and_without_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3, 6, 6)), rng.integers(0, 3, 40)
    data = load_npz(_save(tmp_path / "a.npz", x=x, y=y))
    assert data.input_shape == (3, 6, 6) and len(data.x_train) + len(data.x_test) == 40
    full = load_npz(_save(tmp_path / "b.npz", x=x, y=y, x_test=x[:5], y_test=y[:5]))
    assert len(full.x_test) == 5 and full.x_train.dtype == np.float32
    (tmp_path / "datasets").mkdir()
    _save(tmp_path / "datasets" / "up1.npz", x=x, y=y)
    assert load_dataset("up1", tmp_path / "datasets").name == "up1"


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"a": np.zeros((4, 2)), "b": np.zeros(4, int)}, "missing array(s) x, y"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4, int), "z": np.zeros(1)}, "unexpected array"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3, int)}, "lengths differ"),
        ({"x": np.array([[np.nan, 1.0]] * 4), "y": np.arange(4) % 2}, "NaN or infinite"),
        ({"x": np.array([[np.inf, 1.0]] * 4), "y": np.arange(4) % 2}, "NaN or infinite"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 0])}, "labels must be in"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 5000, 0])}, "labels must be in"),
        ({"x": np.zeros((4, 2)), "y": np.array([0.0, 1.0, 0.0, 1.0])}, "must be integers"),
        ({"x": np.zeros(4), "y": np.zeros(4, int)}, "shape"),
        ({"x": np.array([["a", "b"]] * 4), "y": np.arange(4) % 2}, "not a real number"),
        (
            {"x": np.zeros((4, 2)), "y": np.arange(4) % 2, "x_test": np.zeros((2, 2))},
            "together",
        ),
        (
            {
                "x": np.zeros((4, 2)),
                "y": np.arange(4) % 2,
                "x_test": np.zeros((2, 3)),
                "y_test": np.zeros(2, int),
            },
            "sample shape",
        ),
    ],
)
def test_malformed_npz_is_a_clear_error(tmp_path, arrays, message):
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_npz(path)


def test_npz_limits_and_garbage(tmp_path):
    path = _save(tmp_path / "big.npz", x=np.zeros((1000, 10)), y=np.zeros(1000, int))
    with pytest.raises(DatasetError, match="limit"):
        load_npz(path, limit=1000)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(DatasetError, match=r"not an \.npz"):
        load_npz(junk)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("nothere", tmp_path)


# ---------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("shape", "kind"),
    [
        ((8, 8), "resnet"),
        ((3, 16, 16), "resnet"),
        ((2, 64), "cnn1d"),
        ((256,), "cnn1d"),
        ((16,), "mlp"),
        ((64,), "mlp"),
    ],
)
def test_auto_model_by_shape(shape, kind):
    assert infer_kind(shape) == kind
    model = build_model("auto", shape, 5)
    assert model(torch.randn(4, *shape)).shape == (4, 5)
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_sync_norm_converts_every_batchnorm():
    import syncbn

    model = apply_norm(build_model("resnet", (8, 8), 10), "sync")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, syncbn.SyncBatchNorm) for m in bns)
    local = apply_norm(build_model("resnet", (8, 8), 10), "local")
    assert not any(isinstance(m, syncbn.SyncBatchNorm) for m in local.modules())


# ---------------------------------------------------------------- BN statistics


@pytest.mark.parametrize("norm", ["sync", "local"])
def test_bn_probe_single_process(norm):
    from workers.bnstats import BNProbe, running_stats_digest

    torch.manual_seed(0)
    model = apply_norm(build_model("mlp", (16,), 4), norm)
    probe = BNProbe(model)
    with probe.step(detailed=True):
        model(torch.randn(8, 16) * 3 + 1).sum().backward()
    summaries = probe.layer_summaries()
    assert set(summaries) == {"net.2", "net.5"}
    for s in summaries.values():
        # One process: the "global" batch is the local one.
        assert s.local_count == s.global_count == 8
        assert s.mean_shift == pytest.approx(0.0, abs=1e-6)
        assert s.var_ratio == pytest.approx(1.0, rel=1e-5)
    assert probe.take_sync_time() == 0.0
    digest = running_stats_digest(model)
    assert set(digest) == {"net.2", "net.5"} and len(digest["net.2"].sha256) == 16


@pytest.mark.parametrize("norm", ["sync", "local"])
def test_bn_probe_moments_match_float64(norm):
    """The probe's batch moments (syncbn's shifted sums) equal a float64 reference, also for
    channels with |mean| >> std, where naive float32 sums of squares cancel."""
    from workers.bnstats import BNProbe

    model = apply_norm(torch.nn.Sequential(torch.nn.BatchNorm1d(3)), norm)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1)) * 0.5
    x = x + torch.tensor([1e3, -20.0, 0.0])
    probe = BNProbe(model)
    with probe.step(detailed=True):
        model(x).sum().backward()
    summary = probe.layer_summaries()["0"]
    reference = x.double()
    assert summary.local_mean == pytest.approx(reference.mean(0).mean().item(), rel=1e-6)
    assert summary.local_var == pytest.approx(
        reference.var(0, unbiased=False).mean().item(), rel=1e-4
    )
    assert summary.global_mean == summary.local_mean and summary.global_var == summary.local_var


# ---------------------------------------------------------------- stats callback


def test_stats_callback_writes_jsonl_and_survives_a_failing_sink(tmp_path):
    import pickle

    from contract.protocol import read_events
    from workers.reporting import StatsCallback, epoch_reports

    seen = []

    def sink(event):
        seen.append(event)
        raise RuntimeError("sink down")

    callback = pickle.loads(pickle.dumps(StatsCallback(tmp_path / "s.jsonl", job="j1")))
    callback.sink = sink
    nan = float("nan")
    workers = [{"kind": "epoch", "rank": r, "epoch": 1, "step": 5, "loss": nan} for r in (0, 1)]
    callback.after_report(None, workers, None)
    callback.after_exception(None, {1: RuntimeError("boom")})
    events = read_events(tmp_path / "s.jsonl")
    assert [e["type"] for e in events] == ["report", "exception"]
    assert events[0]["job"] == "j1" and [w["rank"] for w in events[0]["workers"]] == [0, 1]
    assert events[0]["workers"][0]["loss"] is None  # NaN is not JSON
    assert events[1]["errors"] == {"1": "RuntimeError: boom"}
    assert len(seen) == 2 and len(epoch_reports(events)) == 1
    with open(tmp_path / "s.jsonl", "a") as handle:
        handle.write('{"torn": ')
    assert len(read_events(tmp_path / "s.jsonl")) == 2
    json.dumps(events)


def test_stats_callback_validates_reports_against_the_protocol(tmp_path):
    from contract.protocol import ReportEvent, WorkerReport, read_events
    from workers.reporting import StatsCallback

    callback = StatsCallback(tmp_path / "s.jsonl", job="j1")
    good = [
        WorkerReport(kind="step", rank=r, epoch=1, step=3).model_dump(mode="json") for r in (0, 1)
    ]
    callback.after_report(None, good, None)
    (event,) = read_events(tmp_path / "s.jsonl")
    assert ReportEvent.model_validate(event).key == ("step", 1, 3)
    assert event["job"] == "j1" and event["run_id"] is None and event["time"] > 0
    assert event["workers"] == good
    for bad in ([{"kind": "epoch", "epoch": 1, "step": 3}], [{**good[0], "step": -1}]):
        with pytest.raises(ValidationError):
            callback.after_report(None, bad, None)
    assert len(read_events(tmp_path / "s.jsonl")) == 1  # nothing malformed was written


def test_the_contract_knows_the_builtin_datasets_and_the_step_count_without_loading():
    """``contract.datasets`` (what the service reads at submission, with no numpy or
    scikit-learn) agrees with the loaders and the sharding the workers use."""
    from contract.datasets import BUILTIN_INFO, steps_per_epoch
    from workers.data.builtin import load_dataset
    from workers.data.shard import batches

    assert {name: load_dataset(name).info for name in BUILTIN_INFO} == BUILTIN_INFO
    for n in range(1, 70):
        for world in range(1, 5):
            for batch in range(1, 9):
                per_rank = np.arange(-(-n // world))
                assert steps_per_epoch(n, world, batch) == len(batches(per_rank, batch))
