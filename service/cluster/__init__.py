"""The service's cluster: what it asks of Ray (``Cluster``), the Ray Jobs client that does it
(``ray_jobs.RayJobs``) and the embedded local head of ``make run`` (``embedded_ray``).

The rest of the service reaches Ray through this package only: the names below."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from contract.capacity import Capacity
from service.cluster.ray_jobs import (
    RayJobs,
    RayUnavailable,
    entrypoint,
    is_terminal,
    predict_entrypoint,
    terminal_statuses,
)

__all__ = [
    "Cluster",
    "RayJobs",
    "RayUnavailable",
    "entrypoint",
    "is_terminal",
    "predict_entrypoint",
    "terminal_statuses",
]


@runtime_checkable
class Cluster(Protocol):
    """Ray Jobs whose ``submission_id`` is our id, and the cluster's capacity: the one seam
    between the service and Ray (``RayJobs``; the in-process tests pass a fake)."""

    def submit(
        self,
        job_id: str,
        entrypoint: str,
        env: dict[str, str],
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        """Submit (idempotent: an existing Ray Job of this id counts as submitted)."""

    def status(self, job_id: str) -> str | None:
        """Ray's status name of the Ray Job; None if Ray has no record of it."""

    def info_message(self, job_id: str) -> str | None:
        """Ray's message on the Ray Job (why it failed), if any."""

    def stop(self, job_id: str) -> None:
        """Stop the Ray Job (nothing if it does not exist)."""

    def logs(self, job_id: str, max_bytes: int, lines: int = -1) -> str:
        """The end of the Ray Job's driver log: its last ``lines`` lines (-1: all), at most
        ``max_bytes`` bytes ("" if it does not exist)."""

    def capacity(self) -> Capacity:
        """The resources of the alive nodes (``RayUnavailable`` when Ray cannot be reached)."""
