"""A 2-worker job on a real two-node Ray cluster on this machine, without Docker.

Two ``ray start --block`` processes (a head with the dashboard/Jobs API, and a second node that
joins it), one CPU each, so the two Train workers must land on different Ray nodes. The real
service (``python -m service``) is pointed at the head (``RAY_ADDRESS`` + the cluster's token)
and the job is submitted over its REST API; the per-rank ``node_id`` of every stored report
shows where each rank ran.

Token auth is on, as in the deployments: both nodes get ``RAY_AUTH_MODE=token`` and a fresh
``RAY_AUTH_TOKEN`` (which takes precedence over ``~/.ray/auth_token``), and this process sends
the token as an explicit ``Authorization`` header; the service gets it as ``RAY_AUTH_TOKEN``.
Nothing here calls ``ray.init`` in the pytest process: the session's ``ray_cluster`` fixture
may have a local cluster of its own there. Both ``--block`` processes get SIGTERM in the
fixture's teardown (node draining disabled so they stop at once); any process still carrying
this cluster's marker variable afterwards is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from servicekit import ServiceProcess

REPO = Path(__file__).resolve().parents[2]
RAY_CLI = Path(sys.executable).with_name("ray")
MARKER_ENV = "SYNCBN_MULTINODE_TEST"
NODES_UP_TIMEOUT_S = 90.0
JOB_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
JOB_SPEC = {
    "dataset": "synthetic",
    "workers": 2,
    "batch_size_per_worker": 8,
    "epochs": 1,
    "cpus_per_worker": 1,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"({path}: {exc})"


@dataclass
class TwoNodeCluster:
    dashboard_url: str
    token: str
    gcs_port: int
    temp_dir: Path
    node_ids: dict[str, bool] = field(default_factory=dict)
    """Alive node id -> is it the head."""

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(self.dashboard_url + path, headers=headers or {})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def alive_nodes(self) -> dict[str, bool]:
        """Alive node id -> is_head_node, from the state API."""
        data = self.get("/api/v0/nodes", self.auth_headers)
        rows = data["data"]["result"]["result"]
        return {
            row["node_id"]: bool(row["is_head_node"]) for row in rows if row["state"] == "ALIVE"
        }

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{_tail(self.temp_dir / name)}" for name in ("head.log", "node.log")
        )


def _our_pids(marker: str) -> list[int]:
    """Processes whose environment carries this cluster's marker (all descend from ours)."""
    pids = []
    needle = f"{MARKER_ENV}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _stop(processes: list[subprocess.Popen], marker: str) -> None:
    """SIGTERM the ``--block`` processes (the worker node first), wait, then make sure."""
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: start_new_session
            process.wait(timeout=10)
    if Path("/proc").is_dir():
        for _ in range(20):
            leftovers = _our_pids(marker)
            if not leftovers:
                break
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.25)


@pytest.fixture
def two_node_cluster() -> Iterator[TwoNodeCluster]:
    gcs_port, dashboard_port = _free_port(), _free_port()
    marker = uuid.uuid4().hex
    # Ray's sockets live under the temp dir: keep its path short (AF_UNIX limit ~107 bytes).
    temp_dir = Path(tempfile.mkdtemp(prefix="syncbn-mn-"))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")
    }
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(24),
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1",  # a real multi-node cluster (the embedded head's
        # clients, this process included, keep to loopback with "0")
        **{MARKER_ENV: marker},
    )
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    common.append("--object-store-memory=200000000")
    cluster = TwoNodeCluster(
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        token=env["RAY_AUTH_TOKEN"],
        gcs_port=gcs_port,
        temp_dir=temp_dir,
    )
    processes: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        # cwd: the repository, never /tmp (a /tmp/ray directory would shadow the ray package).
        with open(temp_dir / name, "wb") as log:
            process = subprocess.Popen(
                [str(RAY_CLI), "start", *args, *common],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.append(process)
        return process

    try:
        head = start(
            "head.log",
            [
                "--head",
                f"--port={gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--temp-dir={temp_dir}",
            ],
        )
        deadline = time.monotonic() + NODES_UP_TIMEOUT_S
        while True:  # the second node can join as soon as the GCS listens
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", gcs_port), timeout=1),
            ):
                break
            assert head.poll() is None, f"ray head exited ({head.returncode})\n{cluster.logs()}"
            assert time.monotonic() < deadline, f"no GCS on {gcs_port}\n{cluster.logs()}"
            time.sleep(0.2)
        node = start("node.log", [f"--address=127.0.0.1:{gcs_port}"])
        while True:
            with contextlib.suppress(OSError, ValueError, KeyError):
                cluster.node_ids = cluster.alive_nodes()
                if len(cluster.node_ids) == 2:
                    break
            for process, what in ((head, "head"), (node, "second node")):
                assert process.poll() is None, f"ray {what} exited\n{cluster.logs()}"
            assert time.monotonic() < deadline, (
                f"2 alive Ray nodes not seen within {NODES_UP_TIMEOUT_S:.0f} s "
                f"(have {cluster.node_ids})\n{cluster.logs()}"
            )
            time.sleep(0.5)
        yield cluster
    finally:
        _stop(processes, marker)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(300)
def test_service_runs_a_two_worker_job_across_two_ray_nodes(two_node_cluster, tmp_path):
    cluster = two_node_cluster
    assert sorted(cluster.node_ids.values()) == [False, True]  # one head, one other node
    # Token auth is on: the dashboard refuses a request without the token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        cluster.get("/api/v0/nodes")
    assert refused.value.code == 401

    # The real service, pointed at the cluster as a deployment would be (RAY_ADDRESS + token).
    service = ServiceProcess(
        tmp_path / "home",
        cluster.dashboard_url,
        env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token},
    ).start()
    try:
        assert service.client.get("/readyz").json()["checks"]["ray"] == "ok"
        job = service.submit(**JOB_SPEC)
        done = service.wait_final(job["id"], timeout_s=JOB_TIMEOUT_S)
        assert done["state"] == "succeeded", f"{done}\n{service.log_tail()}\n{cluster.logs()}"
        assert 0.0 < done["result"]["test_accuracy"] <= 1.0

        # Every report names the node of every rank; the two ranks ran on the two nodes.
        history = service.client.get(f"/v1/jobs/{job['id']}/metrics").json()["reports"]
        assert history, "no reports stored"
        placements = {
            tuple((worker["rank"], worker["node_id"]) for worker in report["workers"])
            for report in history
        }
        assert len(placements) == 1, f"ranks moved between nodes: {placements}"
        (placement,) = placements
        node_of_rank = dict(placement)
        assert sorted(node_of_rank) == [0, 1]
        assert node_of_rank[0] != node_of_rank[1], f"both ranks on node {node_of_rank[0]}"
        assert set(node_of_rank.values()) == set(cluster.node_ids)
        workers = service.client.get(f"/v1/jobs/{job['id']}/workers").json()["workers"]
        assert {w["rank"]: w["node_id"] for w in workers} == node_of_rank
    finally:
        service.cancel_all()
        service.stop()
