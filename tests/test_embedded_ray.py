"""``python -m service`` exactly as ``make run`` starts it, on a new user's machine.

Each test runs the real service with its embedded Ray head (no ``RAY_ADDRESS``), ``HOME`` an
empty directory and no ``RAY_*`` variables, so nothing can come from ``~/.ray`` or an earlier
run. Then it crashes the service (SIGKILL) while a job runs and starts it again on the same
``SYNCBN_HOME``: with the head still alive the service re-attaches to it; with the head killed
too (a machine restart) the job is resubmitted and resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import psutil
import pytest
from servicekit import ServiceProcess

from service.embedded_ray import RECORD_FILE, HeadRecord, kill_session

JOB = {
    "dataset": "synthetic",
    "workers": 2,
    "batch_size_per_worker": 8,
    "epochs": 3,
    "report_every_steps": 16,
}
pytestmark = pytest.mark.timeout(420)


def record_of(service: ServiceProcess) -> HeadRecord:
    path = service.home / "ray" / RECORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "the record holds the Ray token"
    record = HeadRecord.load(path)
    assert record is not None
    return record


def heads_of(service: ServiceProcess) -> list[psutil.Process]:
    """``ray start --head`` processes started for this service's home."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = process.info["cmdline"] or []
        is_ray = any("ray" in arg for arg in cmdline[:2])
        is_head = is_ray and "start" in cmdline and "--head" in cmdline
        if is_head and process.info["cwd"] == str(service.home / "ray"):
            found.append(process)
    return found


def session_alive(pid: int) -> list[int]:
    alive = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == pid and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except (OSError, psutil.Error):
            continue
    return alive


def stats_lines(service: ServiceProcess, job_id: str) -> list[dict]:
    path = service.home / "runs" / job_id / "stats.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report_keys(reports: list[dict]) -> list[tuple]:
    return sorted((r["kind"], r["epoch"], r["step"]) for r in reports)


def assert_complete_history(service: ServiceProcess, job_id: str, epochs: int) -> dict:
    done = service.wait_final(job_id, timeout_s=300)
    assert done["state"] == "succeeded", f"{done}\n{service.log_tail()}"
    history = service.client.get(f"/v1/jobs/{job_id}/metrics").json()
    assert [e["epoch"] for e in history["evaluations"]] == list(range(1, epochs + 1))
    assert report_keys(history["reports"]) == sorted(set(report_keys(stats_lines(service, job_id))))
    assert done["result"]["test_accuracy"] == history["evaluations"][-1]["test_accuracy"]
    return done


@pytest.fixture
def embedded(tmp_path):
    """The service as ``make run`` starts it; stopped (with its head) afterwards."""
    service = ServiceProcess(tmp_path / "home", ray_address=None, token=None)
    yield service
    service.stop()
    record = HeadRecord.load(service.home / "ray" / RECORD_FILE)
    if record is not None:  # a test that failed half-way: leave no Ray behind
        kill_session(record.pid)


def test_fresh_home_crash_mid_job_reattaches_and_ctrl_c_stops_the_head(embedded):
    service = embedded.start(timeout_s=180)  # an empty HOME, no RAY_* variables, no token
    assert service.client.get("/readyz").json()["checks"]["ray"] == "ok"
    job = service.submit(**JOB)
    service.wait_for(job["id"], lambda j: j["progress"]["step"] > 0, what="the first report")
    first = record_of(service)
    assert len(first.token) >= 32
    service.kill()  # SIGKILL: no shutdown code runs; the head and the job keep going
    time.sleep(3)
    assert [p.pid for p in heads_of(service)] == [first.pid]

    service.start(timeout_s=180)
    assert "re-attached to the running Ray head" in service.log_tail(200)
    assert record_of(service) == first
    done = assert_complete_history(service, job["id"], JOB["epochs"])
    assert [t["state"] for t in done["transitions"]] == [
        "queued", "pending", "running", "succeeded"
    ]  # fmt: skip
    assert 0.0 < done["result"]["test_accuracy"] <= 1.0
    assert [p.pid for p in heads_of(service)] == [first.pid], "exactly one head"
    assert not (service.user_home / ".ray").exists(), "Ray used the home directory"

    service.stop()  # SIGINT, as Ctrl-C in `make run`
    assert service.process is not None and service.process.returncode == 0, service.log_tail()
    deadline = time.monotonic() + 30
    while session_alive(first.pid):
        assert time.monotonic() < deadline, f"Ray processes left: {session_alive(first.pid)}"
        time.sleep(0.5)
    assert not (service.home / "ray" / RECORD_FILE).exists()
    assert not Path(first.temp_dir).exists()


def test_head_killed_too_job_is_resubmitted_and_resumes_from_its_checkpoint(embedded):
    service = embedded.start(timeout_s=180)
    job = service.submit(**{**JOB, "epochs": 2})
    metrics = f"/v1/jobs/{job['id']}/metrics"
    service.wait_for(
        job["id"], lambda j: bool(service.client.get(metrics).json()["evaluations"]),
        what="the first epoch's checkpoint",
    )  # fmt: skip
    first = record_of(service)
    service.kill()
    kill_session(first.pid)  # the whole Ray cluster too, as a machine restart would
    deadline = time.monotonic() + 30
    while session_alive(first.pid):
        assert time.monotonic() < deadline
        time.sleep(0.2)

    service.start(timeout_s=180)
    assert "started a new Ray head" in service.log_tail(200)
    second = record_of(service)
    assert second.pid != first.pid
    done = assert_complete_history(service, job["id"], 2)
    states = [t["state"] for t in done["transitions"]]
    assert states[:3] == ["queued", "pending", "running"] and states[-1] == "succeeded"
    resubmitted = [t for t in done["transitions"] if "resubmitted" in (t["reason"] or "")]
    assert len(resubmitted) == 1 and resubmitted[0]["state"] == "pending"
    assert "last checkpoint" in resubmitted[0]["reason"]
    # Resumed, not restarted: the first epoch was trained (and evaluated) exactly once.
    epoch_lines = [r for r in stats_lines(service, job["id"]) if r.get("kind") == "epoch"]
    assert sorted(r["epoch"] for r in epoch_lines) == [1, 2], epoch_lines
    assert [p.pid for p in heads_of(service)] == [second.pid], "exactly one head"
