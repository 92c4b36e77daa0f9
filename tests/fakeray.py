"""A stand-in for ``service.cluster.ray_jobs.RayJobs`` (the ``service.cluster.Cluster``
protocol) for the unit tier's in-process app (``inprocess.new_app``).

It keeps Ray Jobs in a dict; a test moves them (``set_status``) as Ray would. Only the tests
of the service alone use it; the end-to-end tests (``tests/e2e``) run against a real Ray
cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract.capacity import Capacity
from service.cluster.ray_jobs import RayUnavailable


@dataclass
class FakeRayJob:
    entrypoint: str
    env: dict[str, str]
    runtime_env: dict[str, Any] = field(default_factory=dict)
    status: str = "PENDING"
    logs: str = ""
    message: str | None = None


@dataclass
class FakeRay:
    """``RayJobs``' methods over a dict; ``cpus`` per node, ``nodes`` alive."""

    cpus: float = 2.0
    nodes: int = 1
    jobs: dict[str, FakeRayJob] = field(default_factory=dict)
    reachable: bool = True
    stopped: list[str] = field(default_factory=list)

    def _check(self) -> None:
        if not self.reachable:
            raise RayUnavailable("fake Ray is down")

    def submit(
        self,
        job_id: str,
        entrypoint: str,
        env: dict[str, str],
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        self._check()
        self.jobs.setdefault(job_id, FakeRayJob(entrypoint, env, runtime_env or {}))

    def status(self, job_id: str) -> str | None:
        self._check()
        job = self.jobs.get(job_id)
        return job.status if job else None

    def info_message(self, job_id: str) -> str | None:
        job = self.jobs.get(job_id)
        return job.message if job else None

    def stop(self, job_id: str) -> None:
        self._check()
        if job_id in self.jobs:
            self.jobs[job_id].status = "STOPPED"
            self.stopped.append(job_id)

    def logs(self, job_id: str, max_bytes: int, lines: int = -1) -> str:
        job = self.jobs.get(job_id)
        text = job.logs if job else ""
        if lines >= 0:
            text = "".join(text.splitlines(keepends=True)[-lines:]) if lines else ""
        return text.encode()[-max_bytes:].decode(errors="replace")

    def capacity(self) -> Capacity:
        self._check()
        return Capacity.of({"CPU": self.cpus} for _ in range(self.nodes))

    # -- test controls ---------------------------------------------------------------------
    def set_status(self, job_id: str, status: str, logs: str = "") -> None:
        self.jobs[job_id].status = status
        self.jobs[job_id].logs = logs

    def restart(self) -> None:
        """A restarted cluster: it has no record of any job."""
        self.jobs.clear()
