"""The service's only contact with Ray: the Ray Jobs API (``JobSubmissionClient``) and the
State API for the cluster's nodes, both over the head's dashboard HTTP address.

Every call is blocking HTTP; the service runs them in worker threads.
"""

from __future__ import annotations

import functools
import json
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from contract.capacity import Capacity

T = TypeVar("T")


class RayUnavailable(RuntimeError):
    """The Ray cluster (its dashboard / Jobs API) cannot be reached."""


@dataclass(frozen=True)
class RayOutcome:
    """What the ``python -m workers run --json`` entry point printed last, if anything."""

    status: int | None
    error: str | None
    result: dict[str, Any] | None


def is_terminal(status: str | None) -> bool:
    """Whether a Ray Job status (its name) is final (Ray's own ``JobStatus.is_terminal``)."""
    return status in terminal_statuses()


@functools.cache
def terminal_statuses() -> frozenset[str]:
    """The names of Ray's final Ray Job statuses."""
    from ray.job_submission import JobStatus

    return frozenset(status.value for status in JobStatus if status.is_terminal())


def _unless_missing(call: Callable[[], T], missing: T) -> T:
    """``call()``, or ``missing`` when Ray says the job does not exist."""
    try:
        return call()
    except RuntimeError as exc:
        if "does not exist" in str(exc):
            return missing
        raise


class RayJobs:
    """Submit, poll, stop and read the logs of Ray Jobs whose ``submission_id`` is our job id.

    The narrow seam between the service and Ray: tests of the service alone pass a fake with
    the same methods to ``create_app``.
    """

    def __init__(self, address: str) -> None:
        # Import Ray's client modules here, in one thread: a first import of them from two
        # threads at once (the scheduler and a request) can fail halfway ("partially
        # initialized module 'ray.util'").
        import ray.job_submission
        import ray.util.state  # noqa: F401

        self.address = address
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                try:
                    self._client = JobSubmissionClient(self.address)
                except Exception as exc:
                    raise RayUnavailable(f"Ray at {self.address} unreachable: {exc}") from exc
            return self._client

    def submit(
        self,
        job_id: str,
        entrypoint: str,
        env: dict[str, str],
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        """Submit (idempotent: a Ray Job with this id already existing counts as submitted).

        ``runtime_env`` adds to the environment variables (e.g. a code bundle's
        ``working_dir`` and ``pip``)."""
        try:
            self.client.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env={**(runtime_env or {}), "env_vars": env},
                metadata={"syncbn_job": job_id},
            )
        except Exception as exc:
            if "already exists" not in str(exc):
                raise

    def status(self, job_id: str) -> str | None:
        """Ray's status name (PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED); None if unknown."""
        return _unless_missing(lambda: str(self.client.get_job_status(job_id).value), None)

    def info_message(self, job_id: str) -> str | None:
        try:
            return self.client.get_job_info(job_id).message
        except Exception:
            return None

    def stop(self, job_id: str) -> None:
        _unless_missing(lambda: self.client.stop_job(job_id), None)

    def logs(self, job_id: str) -> str:
        return _unless_missing(lambda: str(self.client.get_job_logs(job_id)), "")

    def capacity(self) -> Capacity:
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=self.address, detail=True, raise_on_missing_output=False)
        except Exception as exc:
            raise RayUnavailable(f"Ray at {self.address} unreachable: {exc}") from exc
        return Capacity.of(n.resources_total or {} for n in nodes if n.state == "ALIVE")


def entrypoint(
    python: str,
    spec_json: str,
    job_id: str,
    runs_dir: str,
    datasets_dir: str,
    resume: bool = False,
) -> str:
    """The Ray Job's shell command: the workers CLI with the spec inline (``resume``: continue
    the run from its last checkpoint)."""
    return shlex.join(
        [
            python,
            "-m",
            "workers",
            "run",
            spec_json,
            "--storage",
            runs_dir,
            "--datasets-dir",
            datasets_dir,
            "--name",
            job_id,
            "--json",
            *(["--resume"] if resume else []),
        ]
    )


def predict_entrypoint(python: str, model: Path, inputs: Path, outputs: Path) -> str:
    """The Ray Job command that predicts the raw samples ``inputs`` (.npy) with the model file
    ``model`` into ``outputs`` (.npz)."""
    return shlex.join([python, "-m", "workers", "predict", str(model), str(inputs), str(outputs)])


def parse_outcome(logs: str) -> RayOutcome | None:
    """The last ``--json`` line (``{"status": ..., "error": ..., "result": ...}``) in the logs."""
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"status"' in line:
            try:
                payload = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(payload, dict) and "status" in payload:
                return RayOutcome(
                    payload.get("status"), payload.get("error"), payload.get("result")
                )
    return None
