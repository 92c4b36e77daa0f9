"""End to end over HTTP: real uvicorn, real Ray Jobs on a local Ray head, a real SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from servicekit import ServiceProcess, wait_ray_idle

from contract.protocol import WorkerReport

SMALL_JOB = {
    "dataset": "synthetic",
    "workers": 2,
    "batch_size_per_worker": 8,
    "epochs": 2,
    "report_every_steps": 16,
}


def collect_events(service: ServiceProcess, job_id: str) -> tuple[list, threading.Thread]:
    """Read the job's SSE stream in a thread into a list of (event, data)."""
    events: list[tuple[str, dict]] = []

    def read() -> None:
        headers = {"Authorization": f"Bearer {service.token}"}
        timeout = httpx.Timeout(30, read=300)
        url = f"{service.url}/v1/jobs/{job_id}/events"
        with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
            kind = "message"
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    events.append((kind, json.loads(line[5:])))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return events, thread


def stats_lines(home: Path, job_id: str) -> list[dict]:
    path = home / "runs" / job_id / "stats.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report_keys(reports: list[dict]) -> list[tuple]:
    return sorted((r["kind"], r["epoch"], r["step"]) for r in reports)


def test_job_runs_end_to_end_with_per_worker_stats_events_and_cli_watch(service):
    job = service.submit(**SMALL_JOB)
    assert job["state"] == "queued" and job["spec"]["workers"] == 2
    events, reader = collect_events(service, job["id"])
    watcher = subprocess.run(
        [sys.executable, "-m", "client.cli", "--url", service.url, "--token", service.token,
         "watch", job["id"]],
        capture_output=True, text=True, timeout=300, env={"COLUMNS": "120", "PATH": ""},
    )  # fmt: skip
    done = service.wait_final(job["id"])
    reader.join(30)

    assert done["state"] == "succeeded", done
    assert [t["state"] for t in done["transitions"]] == [
        "queued", "pending", "running", "succeeded"
    ]  # fmt: skip
    accuracy = done["result"]["test_accuracy"]
    assert 0.0 <= accuracy <= 1.0 and done["result"]["epochs_completed"] == 2
    assert done["progress"]["fraction"] == 1.0

    workers = service.client.get(f"/v1/jobs/{job['id']}/workers").json()["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    for worker in workers:
        assert set(WorkerReport.model_fields) <= set(worker), worker
        assert worker["batch_size"] == 8 and worker["bn"], worker
        layer = next(iter(worker["bn"].values()))
        assert layer["global_count"] == 2 * layer["local_count"]  # sync: the global batch
    assert workers[0]["test_accuracy"] == pytest.approx(accuracy)

    # The event stream delivered every transition, every report, then "end".
    states = [data["state"] for kind, data in events if kind == "state"]
    assert states == ["queued", "pending", "running", "succeeded"]
    assert events[-1] == ("end", {"state": "succeeded"})
    history = service.client.get(f"/v1/jobs/{job['id']}/metrics").json()
    streamed = [data for kind, data in events if kind == "report"]
    assert report_keys(streamed) == report_keys(history["reports"])
    # ... and the database holds exactly what the Train callback wrote to stats.jsonl.
    assert report_keys(history["reports"]) == report_keys(stats_lines(service.home, job["id"]))
    assert [e["epoch"] for e in history["evaluations"]] == [1, 2]
    assert {len(r["workers"]) for r in history["reports"]} == {2}

    assert watcher.returncode == 0, watcher.stdout + watcher.stderr
    assert "succeeded" in watcher.stdout and f"{accuracy:.4f}" in watcher.stdout
    assert "┘job" not in watcher.stdout  # the live table's last frame ends its line (a pipe)

    logs = service.client.get(f"/v1/jobs/{job['id']}/logs").json()["logs"]
    assert '"status": 0' in logs
    metrics = service.client.get("/metrics").text
    assert 'syncbn_jobs{state="succeeded"}' in metrics
    assert "syncbn_reports_ingested_total" in metrics
    assert 'route="/v1/jobs/{job_id}"' in metrics


def _train_worker_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "RayTrainWorker" in line]


def test_fifo_queue_and_cancel_stop_ray_and_leave_no_workers(service, ray_head):
    from ray.job_submission import JobSubmissionClient

    ray_jobs = JobSubmissionClient(ray_head.dashboard_url)
    long = service.submit(**{**SMALL_JOB, "epochs": 200})
    waiting = service.submit(**{**SMALL_JOB, "workers": 1})
    service.wait_for(long["id"], lambda j: j["progress"]["step"] > 0, what="the first report")
    queued = service.job(waiting["id"])
    assert queued["state"] == "queued"
    assert "waiting for resources" in queued["reason"] and "CPU" in queued["reason"]
    assert _train_worker_processes(), "the running job should have Train worker processes"

    cancelled = service.client.post(f"/v1/jobs/{waiting['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["reason"] == "cancelled by user"
    with pytest.raises(RuntimeError, match="does not exist"):
        ray_jobs.get_job_status(waiting["id"])  # never reached Ray

    first = service.client.post(f"/v1/jobs/{long['id']}/cancel").json()
    again = service.client.post(f"/v1/jobs/{long['id']}/cancel").json()
    assert first["state"] == again["state"] == "cancelled"
    assert first["transitions"] == again["transitions"]  # idempotent
    deadline = time.monotonic() + 60
    while ray_jobs.get_job_status(long["id"]).value != "STOPPED":
        assert time.monotonic() < deadline, ray_jobs.get_job_status(long["id"])
        time.sleep(0.5)
    wait_ray_idle(ray_head.dashboard_url)
    while _train_worker_processes():
        assert time.monotonic() < deadline, _train_worker_processes()
        time.sleep(0.5)


def test_service_killed_mid_job_resumes_and_keeps_full_history(ray_head, tmp_path):
    service = ServiceProcess(tmp_path / "home", ray_head.dashboard_url).start()
    try:
        job = service.submit(**{**SMALL_JOB, "epochs": 3, "report_every_steps": 8})
        service.wait_for(job["id"], lambda j: j["progress"]["step"] > 0, what="the first report")
        service.kill()  # SIGKILL: no shutdown code runs; the Ray Job keeps training
        time.sleep(6)
        lines = stats_lines(service.home, job["id"])
        service.start()

        done = service.wait_final(job["id"])
        assert done["state"] == "succeeded", done
        assert [t["state"] for t in done["transitions"]] == [
            "queued", "pending", "running", "succeeded"
        ]  # fmt: skip
        history = service.client.get(f"/v1/jobs/{job['id']}/metrics").json()
        written = stats_lines(service.home, job["id"])
        assert len(written) > len(lines) > 0
        assert report_keys(history["reports"]) == report_keys(written)
        assert [e["epoch"] for e in history["evaluations"]] == [1, 2, 3]
        assert done["result"]["test_accuracy"] == history["evaluations"][-1]["test_accuracy"]
        metrics = service.client.get("/metrics").text
        assert 'syncbn_reports_ingested_total{source="backfill"}' in metrics
    finally:
        service.cancel_all()
        service.stop()
        wait_ray_idle(ray_head.dashboard_url)
