"""Run the real service (``python -m service``, i.e. uvicorn) as a subprocess for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from service.cluster.embedded_ray import RECORD_FILE, HeadRecord, free_ports, kill_session, ray_env

TERMINAL = ("succeeded", "failed", "cancelled")
UPLOAD_LIMIT = 256 * 1024
"""``SYNCBN_MAX_UPLOAD_BYTES`` of the ``idle_service`` fixture (``tests/e2e/conftest.py``)."""


class ServiceProcess:
    """``python -m service`` on a free port with its own ``SYNCBN_HOME``, against ``ray_address``.

    With ``ray_address=None`` it runs exactly as ``make run`` does, as a new user would: the
    embedded Ray head of its home, ``HOME`` an empty directory and no ``RAY_*`` variables.
    With ``token=None`` no ``SYNCBN_API_TOKEN`` is set: the service makes its own token in
    ``$SYNCBN_HOME/api-token``, which ``.token`` and ``.client`` then use.
    ``.url``, ``.token``, ``.client`` (an ``httpx.Client`` sending the token); ``kill()`` is
    SIGKILL (a crash), ``start()`` again restarts it on the same port and data directory.
    """

    def __init__(
        self,
        home: Path,
        ray_address: str | None,
        token: str | None = "test-token",
        env: dict[str, str] | None = None,
    ) -> None:
        self.home, self.ray_address, self.token = Path(home), ray_address, token
        self.own_token = token is None
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self._use_token(token)

    def _use_token(self, token: str | None) -> None:
        self.token = token
        if token:
            self.client.headers["Authorization"] = f"Bearer {token}"

    @property
    def user_home(self) -> Path:
        """``HOME`` of an embedded-head service: empty when first started."""
        return self.home.parent / f"{self.home.name}-user-home"

    @property
    def log_path(self) -> Path:
        return self.home / "service.log"

    def start(self, timeout_s: float = 90.0) -> ServiceProcess:
        if self.ray_address is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SYNCBN_"))}
            env["HOME"] = str(self.user_home)
            self.user_home.mkdir(parents=True, exist_ok=True)
        else:
            env = ray_env()
            env.update(RAY_ADDRESS=self.ray_address, SYNCBN_WORKER_PYTHON=sys.executable)
        env.update(
            SYNCBN_HOME=str(self.home),
            PORT=str(self.port),
            SYNCBN_POLL_INTERVAL_S="0.5",
            **self.extra_env,
        )
        env.pop("SYNCBN_API_TOKEN", None)
        if not self.own_token:
            env["SYNCBN_API_TOKEN"] = str(self.token)
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service"],
                env=env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    if self.own_token:
                        self._use_token((self.home / "api-token").read_text().strip())
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"service not up after {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    # -- helpers for tests ----------------------------------------------------------------
    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``syncbn --url URL --token TOKEN ARGS`` (the CLI), run to completion."""
        return subprocess.run(
            [sys.executable, "-m", "client.cli", "--url", self.url,
             *(["--token", self.token] if self.token else []), *args],
            capture_output=True, text=True, timeout=120, env={"COLUMNS": "160", "PATH": ""},
        )  # fmt: skip

    def submit(self, **spec: Any) -> dict[str, Any]:
        response = self.client.post("/v1/jobs", json=spec)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(
        self, job_id: str, predicate: Any, timeout_s: float = 240.0, what: str = "condition"
    ) -> dict[str, Any]:
        """Poll the job until ``predicate(job)``; fail with the job and log tail on timeout."""
        deadline = time.monotonic() + timeout_s
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if predicate(job):
                return job
            if job["state"] in TERMINAL and what != "final state":
                raise AssertionError(f"job ended {job['state']} before {what}: {job}")
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}: {job}\n{self.log_tail()}")

    def wait_final(self, job_id: str, timeout_s: float = 240.0) -> dict[str, Any]:
        return self.wait_for(
            job_id, lambda j: j["state"] in TERMINAL, timeout_s, what="final state"
        )

    def cancel_all(self) -> None:
        """Cancel every job that is not over (test hygiene: free the shared Ray cluster)."""
        for state in ("queued", "pending", "running"):
            jobs = self.client.get("/v1/jobs", params={"state": state, "limit": 500}).json()
            for job in jobs.get("jobs", []):
                self.client.post(f"/v1/jobs/{job['id']}/cancel")


def wait_ray_idle(dashboard_url: str, timeout_s: float = 60.0) -> None:
    """Wait until no submitted Ray Job on the cluster is PENDING or RUNNING."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = [
            j
            for j in client.list_jobs()
            if j.submission_id is not None  # not a connected driver such as this pytest
            and str(j.status.value) in ("PENDING", "RUNNING")
        ]
        if not busy:
            return
        time.sleep(0.5)
    raise AssertionError(f"Ray jobs still running after {timeout_s} s: {busy}")


@contextmanager
def made_run(
    home: Path, timeout_s: float = 180.0, env: dict[str, str] | None = None
) -> Iterator[ServiceProcess]:
    """The service as ``make run`` starts it in ``home`` (its own embedded Ray head, a token it
    makes, an empty ``HOME``; ``env``: settings on top); afterwards stopped, and whatever its
    head left killed."""
    service = ServiceProcess(home, None, token=None, env=env)
    try:
        yield service.start(timeout_s=timeout_s)
    finally:
        service.stop()
        record = HeadRecord.load(service.home / "ray" / RECORD_FILE)
        if record is not None:
            kill_session(record.pid)
