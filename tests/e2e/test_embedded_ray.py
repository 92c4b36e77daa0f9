"""``python -m service`` exactly as ``make run`` starts it, on a new user's machine.

Each test runs the real service with its embedded Ray head (no ``RAY_ADDRESS``), ``HOME`` an
empty directory and no ``RAY_*`` variables, so nothing can come from ``~/.ray`` or an earlier
run. Then it crashes the service (SIGKILL) while a job runs and starts it again on the same
``SYNCBN_HOME``: with the head still alive the service re-attaches to it; with the head killed
too (a machine restart) the job is resubmitted and resumes from its last checkpoint.

The head listens on loopback only: while a Ray Job with an actor runs on the session's
``ray_head``, every listening socket of every process of the head's session is on 127.0.0.1
(or ::1), and there is no Ray Client server.

How the head's command line is built (loopback only, free ports, a Ray Client server only when
asked) is tested without starting it in ``tests/unit/test_ray_head_command.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from servicekit import ServiceProcess

from service.cluster.embedded_ray import (
    RECORD_FILE,
    HeadRecord,
    kill_session,
)

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
        is_ray = any("ray" in arg for arg in cmdline[:3])  # ray, or python -c "...ray..."
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


# 127.0.0.1 as gRPC binds it (an IPv6 socket for IPv4-mapped 127.0.0.1: IPv4 loopback only).
LOOPBACK_ADDRESSES = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
RAY_CLIENT_DEFAULT_PORT = 10001
ACTOR_JOB = """
import pathlib, sys, time
import ray
ray.init()
@ray.remote(num_cpus=0)
class Probe:
    def ping(self):
        return 1
probe = Probe.remote()
ray.get(probe.ping.remote())
pathlib.Path(sys.argv[1]).touch()
time.sleep(120)
"""


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str  # Ray's process title (ray::JobSupervisor), else what it runs (dashboard.py)
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.process} (pid {self.pid}) on {self.ip}:{self.port}"


def session_processes(pid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == pid:
                found.append(process)
        except (OSError, psutil.Error):
            continue
    return found


def title(process: psutil.Process) -> str:
    """``ray::Probe``, ``raylet``, ``python dashboard.py``, ``python -m ray.util.client.server``."""
    cmdline, name = process.cmdline(), process.name()
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0]
    if name.startswith("python"):
        for arg, following in zip(cmdline, [*cmdline[1:], ""], strict=True):
            if arg.endswith(".py"):
                return f"python {Path(arg).name}"
            if arg in ("-m", "-c"):
                return f"python {arg} {following[:40]}"
    return name


def listeners(processes: list[psutil.Process]) -> list[Listener]:
    """The listening TCP sockets of ``processes``."""
    found = []
    for process in processes:
        try:
            label = title(process)
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append(Listener(process.pid, label, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


@pytest.mark.timeout(120)
def test_head_listens_on_loopback_only_while_a_job_runs(ray_head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    started = tmp_path / "actor-started"
    client = JobSubmissionClient(ray_head.dashboard_url)  # this process has the head's token
    entrypoint = shlex.join([sys.executable, "-c", ACTOR_JOB, str(started)])
    job_id = client.submit_job(entrypoint=entrypoint)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            status = client.get_job_status(job_id)
            assert not status.is_terminal(), f"{status}: {client.get_job_logs(job_id)}"
            assert time.monotonic() < deadline, f"no actor after 60 s: {status}"
            time.sleep(0.2)

        expected = {"raylet", "ray::DashboardAgent", "ray::JobSupervisor", "ray::Probe"}
        deadline = time.monotonic() + 20  # on a loaded machine a listener may open late
        while True:
            processes = session_processes(ray_head.pid)
            found = listeners(processes)
            offenders = [str(x) for x in found if x.ip not in LOOPBACK_ADDRESSES]
            assert not offenders, "listening beyond loopback:\n" + "\n".join(offenders)
            titles = {listener.process for listener in found}
            if expected <= titles or time.monotonic() > deadline:
                break
            time.sleep(0.5)

        # The check saw the processes that listened on all interfaces before.
        ports = {listener.port for listener in found}
        assert int(ray_head.gcs_address.rsplit(":", 1)[1]) in ports  # gcs_server
        assert {ray_head.ports["--node-manager-port"], ray_head.ports["--dashboard-port"]} <= ports
        assert expected <= titles

        # No Ray Client server: not asked for.
        client_servers = []
        for process in processes:
            try:
                if "ray.util.client.server" in " ".join(process.cmdline()):
                    client_servers.append(process.pid)
            except psutil.Error:
                continue
        assert not client_servers, f"Ray Client server processes: {client_servers}"
        assert RAY_CLIENT_DEFAULT_PORT not in ports
    finally:
        client.stop_job(job_id)
        deadline = time.monotonic() + 30
        while not client.get_job_status(job_id).is_terminal():
            assert time.monotonic() < deadline, "the Ray Job did not stop"
            time.sleep(0.2)
