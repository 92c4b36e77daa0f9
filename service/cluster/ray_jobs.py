"""The service's only contact with Ray: the Ray Jobs API (``JobSubmissionClient``) and the
State API for the cluster's nodes, both over the head's dashboard HTTP address.

Every call is blocking HTTP; the service runs them in worker threads.
"""

from __future__ import annotations

import functools
import shlex
import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from contract.capacity import Capacity

T = TypeVar("T")


MISSING_WORDS = ("does not exist", "not found", "No job", "no such")
"""What Ray's answers say of a Ray Job it has no record of."""


class RayUnavailable(RuntimeError):
    """The Ray cluster (its dashboard / Jobs API) cannot be reached."""


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
        if any(word in str(exc) for word in MISSING_WORDS):
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

    def logs(self, job_id: str, max_bytes: int, lines: int = -1) -> str:
        """The end of the Ray Job's driver log: its last ``lines`` lines (-1: all), at most
        ``max_bytes`` bytes of them ("" if Ray has no such job).

        Streamed from the dashboard's log API (what ``ray.util.state.get_log`` calls, which
        wants a GCS address), so memory stays bounded whatever the log's size, where the Jobs
        client's ``get_job_logs`` returns the whole log as one string."""
        import requests

        client = self.client
        info = _unless_missing(lambda: client.get_job_info(job_id), None)
        node = getattr(info, "driver_node_id", None)
        if not node:  # no such job, or its driver has not started: no log yet
            return ""
        query = urlencode(
            {"node_id": node, "submission_id": job_id, "lines": lines, "media_type": "file",
             "timeout": 30}
        )  # fmt: skip
        try:
            with requests.get(
                f"{self.address.rstrip('/')}/api/v0/logs/file?{query}",
                headers=getattr(client, "_headers", None),  # Ray's token, when auth is on
                cookies=getattr(client, "_cookies", None),
                stream=True,
                timeout=60,
            ) as response:
                if response.status_code != 200:
                    text = response.raw.read(4096).decode(errors="replace")
                    raise RuntimeError(f"HTTP {response.status_code}: {text[:500]}")
                chunks = response.iter_content(chunk_size=64 << 10)
                return tail_of(chunks, max_bytes).decode("utf-8", errors="replace")
        except requests.RequestException as exc:
            raise RayUnavailable(f"Ray at {self.address} unreachable: {exc}") from exc

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


def tail_of(chunks: Iterable[bytes], max_bytes: int) -> bytes:
    """The last ``max_bytes`` bytes of a stream of chunks, holding little more than that."""
    kept: deque[bytes] = deque()
    size = 0
    for chunk in chunks:
        kept.append(chunk)
        size += len(chunk)
        while size - len(kept[0]) >= max_bytes:
            size -= len(kept.popleft())
    return b"".join(kept)[-max_bytes:] if max_bytes > 0 else b""
