"""workers end to end on a real local Ray cluster (2 CPUs), real worker processes, gloo.

Each training job takes ~15-35 s on two cores; jobs are shared between tests through
module-scoped fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from contract.capacity import InfeasibleJobError
from contract.datasets import DatasetError, steps_per_epoch
from contract.protocol import EpochEval, WorkerReport, read_events
from contract.spec import JobSpec
from workers.data.builtin import load_dataset
from workers.driver import run_job
from workers.reporting import epoch_reports

REPO = Path(__file__).resolve().parents[2]
# What every report sets on every rank (the EpochEval fields only in epoch reports).
REPORT_FIELDS = set(WorkerReport.model_fields) - set(EpochEval.model_fields)
BN_SUMMARY_FIELDS = {"local_count", "global_count", "mean_shift", "var_ratio"}


def _job(tmp_path_factory, **kwargs):
    spec = JobSpec(**{"dataset": "synthetic", "workers": 2, "epochs": 2, **kwargs})
    storage = tmp_path_factory.mktemp("runs")
    result = run_job(spec, storage)
    return spec, result, read_events(result.stats_path)


@pytest.fixture(scope="module")
def sync_job(ray_cluster, tmp_path_factory):
    return _job(tmp_path_factory, norm="sync", batch_size_per_worker=32, report_every_steps=5)


@pytest.fixture(scope="module")
def local_job(ray_cluster, tmp_path_factory):
    return _job(tmp_path_factory, norm="local", batch_size_per_worker=32)


@pytest.mark.timeout(180)
def test_two_worker_job_reports_every_rank_with_all_fields(sync_job):
    spec, result, events = sync_job
    reports = [e for e in events if e["type"] == "report"]
    epochs = epoch_reports(events)
    assert [e["epoch"] for e in epochs] == [1, 2]
    steps = steps_per_epoch(1024, 2, 32)
    # Step reports every 5 steps inside each epoch, plus one per epoch; the same on every rank.
    assert len(reports) == spec.epochs * (1 + (steps - 1) // 5)
    for event in reports:
        assert [w["rank"] for w in event["workers"]] == [0, 1]
        for worker in event["workers"]:
            WorkerReport.model_validate(worker)
            assert {k for k in REPORT_FIELDS if worker.get(k) is None} == set()
            assert worker["kind"] == event["kind"]
            assert worker["batch_size"] == 32 and worker["samples_per_s"] > 0
            assert worker["step_time_s"] > 0 and worker["sync_time_s"] > 0
            assert worker["sync_time_s"] < worker["step_time_s"]
            assert set(worker["bn"]) == {"net.2", "net.5"}
            for layer in worker["bn"].values():
                assert set(layer) >= BN_SUMMARY_FIELDS
                assert layer["local_count"] == 32 and layer["global_count"] == 64
    final = epochs[-1]["workers"]
    assert final[0]["step"] == final[1]["step"] == 2 * steps
    assert final[0]["samples"] == final[1]["samples"] == 2 * 512
    for event in epochs:
        for worker in event["workers"]:
            unset = {k for k in EpochEval.model_fields if worker.get(k) in (None, {})}
            assert unset == {"test_miou"}  # segmentation only
        accs = {w["test_accuracy"] for w in event["workers"]}
        losses = {w["test_loss"] for w in event["workers"]}
        assert len(accs) == 1 and len(losses) == 1  # identical on every rank
        assert {w["test_samples"] for w in event["workers"]} == {256}  # the whole test set
    assert result.test_accuracy == final[0]["test_accuracy"] > 0.8
    assert result.epochs_completed == 2 and result.checkpoint


@pytest.mark.timeout(180)
def test_sync_norm_running_stats_identical_on_every_worker(sync_job):
    _, _, events = sync_job
    for event in epoch_reports(events):
        rank0, rank1 = (w["bn_running"] for w in event["workers"])
        assert rank0.keys() == rank1.keys() == {"net.2", "net.5"}
        assert rank0 == rank1  # bit-identical (same hash) running mean/var


@pytest.mark.timeout(180)
def test_local_norm_running_stats_differ_between_workers(local_job):
    _, result, events = local_job
    for event in epoch_reports(events):
        rank0, rank1 = (w["bn_running"] for w in event["workers"])
        assert all(rank0[k]["sha256"] != rank1[k]["sha256"] for k in rank0)
        assert {w["sync_time_s"] for w in event["workers"]} == {0.0}
        # Local models still report local vs global batch statistics, for comparison.
        shifts = [layer["mean_shift"] for w in event["workers"] for layer in w["bn"].values()]
        assert all(s is not None and s > 0 for s in shifts)
        assert len({w["test_accuracy"] for w in event["workers"]}) == 1
    assert result.test_accuracy > 0.8


@pytest.mark.timeout(240)
def test_killed_worker_resumes_from_checkpoint(ray_cluster, tmp_path):
    spec = JobSpec(dataset="synthetic", workers=2, batch_size_per_worker=32, epochs=3)
    marker = tmp_path / "killed"
    fault = {"rank": 1, "epoch": 2, "step": 3, "marker": str(marker)}
    result = run_job(spec, tmp_path / "runs", fault=fault)
    assert marker.exists()  # rank 1 really exited (os._exit) in epoch 2
    events = read_events(result.stats_path)
    failures = [e for e in events if e["type"] == "exception"]
    assert len(failures) == 1 and "1" in failures[0]["errors"]
    epochs = [e["epoch"] for e in epoch_reports(events)]
    # Killed mid epoch 2 after the epoch-1 checkpoint: resumed at epoch 2, nothing repeated.
    assert epochs == [1, 2, 3]
    steps = steps_per_epoch(1024, 2, 32)
    final = epoch_reports(events)[-1]["workers"]
    assert [w["step"] for w in final] == [3 * steps, 3 * steps]
    assert [w["samples"] for w in final] == [3 * 512, 3 * 512]
    kill_time = failures[0]["time"]
    after = [e for e in epoch_reports(events) if e["time"] > kill_time]
    assert [e["epoch"] for e in after] == [2, 3]
    assert result.test_accuracy > 0.8 and result.epochs_completed == 3


@pytest.mark.timeout(60)
def test_infeasible_request_fails_at_once(ray_cluster, tmp_path):
    spec = JobSpec(dataset="synthetic", workers=3)
    started = time.monotonic()
    with pytest.raises(InfeasibleJobError, match=r"3 workers .* 3 CPU.* only 2 CPU"):
        run_job(spec, tmp_path)
    assert time.monotonic() - started < 5
    assert not any(tmp_path.iterdir())
    big = JobSpec(dataset="synthetic", workers=1, cpus_per_worker=4)
    with pytest.raises(InfeasibleJobError, match="infeasible"):
        run_job(big, tmp_path)
    gpu = JobSpec(dataset="synthetic", workers=1, use_gpu=True)
    with pytest.raises(InfeasibleJobError, match="GPU"):
        run_job(gpu, tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"inputs": np.zeros((8, 4)), "labels": np.zeros(8, int)}, "missing array"),
        ({"x": np.zeros((8, 4)), "y": np.zeros(7, int)}, "lengths differ"),
        ({"x": np.full((8, 4), np.nan), "y": np.arange(8) % 2}, "NaN"),
        ({"x": np.zeros((8, 4)), "y": np.arange(8) + 10_000}, "labels must be in"),
    ],
)
def test_malformed_npz_fails_before_any_worker_starts(ray_cluster, tmp_path, arrays, message):
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    np.savez(datasets / "bad.npz", **arrays)
    spec = JobSpec(dataset="bad", workers=2)
    started = time.monotonic()
    with pytest.raises(DatasetError, match=message):
        run_job(spec, tmp_path / "runs", datasets_dir=datasets)
    assert time.monotonic() - started < 5
    assert not (tmp_path / "runs").exists()  # no run, no checkpoint, no worker


def _cli(args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 170):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "workers", "run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(200)
def test_cli_runs_an_uploaded_sequence_dataset(ray_cluster, tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 240)
    t = np.linspace(0, 1, 48)
    x = np.sin(2 * np.pi * (y[:, None, None] + 1) * t) + 0.3 * rng.normal(size=(240, 2, 48))
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    np.savez(datasets / "waves.npz", x=x.astype(np.float32), y=y)
    assert load_dataset("waves", datasets).input_shape == (2, 48)  # -> cnn1d
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"dataset": "waves", "workers": 2, "batch_size_per_worker": 8, "epochs": 2})
    )
    args = [str(spec), "--storage", str(tmp_path / "runs"), "--datasets-dir", str(datasets)]
    done = _cli([*args, "--address", ray_cluster, "--json"])
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    result = payload["result"]
    assert payload["status"] == 0 and result["epochs_completed"] == 2
    assert [w["rank"] for w in result["workers"]] == [0, 1]
    assert result["test_accuracy"] is not None
    assert "per-worker statistics" in done.stderr and "test accuracy" in done.stderr


@pytest.mark.timeout(60)
def test_cli_rejects_bad_spec_and_infeasible_job(ray_cluster, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "digits", "workers": 0, "colour": "red"}))
    done = _cli([str(bad)])
    assert done.returncode == 2
    assert "workers:" in done.stdout and "colour:" in done.stdout
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"dataset": "synthetic", "workers": 5}))
    started = time.monotonic()
    done = _cli([str(big), "--address", ray_cluster, "--storage", str(tmp_path / "runs")])
    assert done.returncode == 3, done.stdout + done.stderr
    assert "infeasible" in done.stdout and "5 workers" in done.stdout
    assert time.monotonic() - started < 30
