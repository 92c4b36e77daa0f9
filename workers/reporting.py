"""Per-worker statistics from the Ray Train controller to a sink and a JSON-lines file.

``StatsCallback`` is a ``ray.train.UserCallback``: Ray Train calls ``after_report`` in the
controller actor once all workers have called ``ray.train.report``, with ``metrics[i]`` the
dict of rank i (a dumped ``contract.protocol.WorkerReport``). Each call becomes one
``ReportEvent``::

    {"type": "report", "job": ..., "run_id": ..., "time": ..., "kind": "step" | "epoch",
     "epoch": ..., "step": ..., "checkpoint": path | None, "workers": [rank 0 dict, ...]}

and worker failures (``after_exception``) become an ``ExceptionEvent``, ``{"type":
"exception", "errors": {rank: message}}``. Both are validated against ``contract.protocol``
(a malformed report raises), appended to ``<job dir>/stats.jsonl`` (``STATS_FILE``) first
(so nothing is lost), then handed to the optional sink (the service plugs its own in; it must
be picklable, because the callback travels to the controller actor). A failing sink is
logged, never fatal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ray.train import UserCallback

from contract.protocol import (
    INGEST_TOKEN_ENV,
    INGEST_URL_ENV,
    MAX_EXCEPTION_BYTES,
    ExceptionEvent,
    ReportEvent,
    text_tail,
)

logger = logging.getLogger(__name__)


class StatsSink(Protocol):
    """Receives every event (a JSON-serializable dict) right after it is written to the file."""

    def __call__(self, event: dict[str, Any]) -> None: ...


def _plain(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, tensors/numpy scalars become numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | int | str) or value is None:
        return value
    if hasattr(value, "item"):
        return _plain(value.item())
    return str(value)


class StatsCallback(UserCallback):
    """Append every report (all ranks) and failure to a JSON-lines file, then call the sink."""

    def __init__(self, path: str | os.PathLike, job: str, sink: StatsSink | None = None) -> None:
        self.path = str(path)
        self.job = job
        self.sink = sink
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        """Write ``event`` as one line (flushed and fsynced), then hand it to the sink."""
        event = _plain({"job": self.job, "time": time.time(), **event})
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        if self.sink is not None:
            try:
                self.sink(event)
            except Exception:  # the file has it; the sink may be down
                logger.exception("stats sink failed for job %s", self.job)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
        """One ``ReportEvent`` of every rank's metrics (``ValidationError`` if malformed)."""
        first = metrics[0] if metrics else {}
        event = ReportEvent.model_validate(
            {
                "time": time.time(),
                "kind": first.get("kind"),
                "epoch": first.get("epoch"),
                "step": first.get("step"),
                "checkpoint": getattr(checkpoint, "path", None),
                "workers": _plain(list(metrics)),  # a diverged loss (NaN) is reported as null
            }
        )
        self._emit_event(run_context, event)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]):
        """One ``ExceptionEvent``: each failed rank's error message."""
        share = MAX_EXCEPTION_BYTES // (2 * max(1, len(worker_exceptions)))  # room for keys
        errors = {
            str(rank): text_tail(f"{type(e).__name__}: {e}", share)
            for rank, e in worker_exceptions.items()
        }
        self._emit_event(run_context, ExceptionEvent(time=time.time(), errors=errors))

    def _emit_event(self, run_context: Any, event: ReportEvent | ExceptionEvent) -> None:
        """Emit a validated protocol event with this run's id."""
        run_id = getattr(run_context, "run_id", None)
        self.emit({**event.model_dump(mode="json"), "run_id": run_id})


class HttpSink:
    """POST each event as JSON to ``url`` with ``Authorization: Bearer <token>`` (stdlib only).

    The service's ingest endpoint; picklable (plain attributes), so it travels with the
    callback. Errors propagate to ``StatsCallback.emit``, which logs them: the JSON-lines file
    already holds the event and is the service's backfill.
    """

    def __init__(self, url: str, token: str, timeout_s: float = 5.0) -> None:
        self.url, self.token, self.timeout_s = url, token, timeout_s

    def __call__(self, event: dict[str, Any]) -> None:
        import urllib.request

        request = urllib.request.Request(
            self.url,
            data=json.dumps(event).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()

    @classmethod
    def from_env(cls) -> HttpSink | None:
        """The sink named by ``SYNCBN_INGEST_URL``/``SYNCBN_INGEST_TOKEN`` (set by the service)."""
        url, token = os.environ.get(INGEST_URL_ENV), os.environ.get(INGEST_TOKEN_ENV)
        return cls(url, token) if url and token else None


def follow_events(
    path: str | os.PathLike, stop: threading.Event, poll_s: float = 0.25
) -> Iterator[dict[str, Any]]:
    """Yield events as they are appended to ``path`` until ``stop`` is set (then drain)."""
    offset, pending = 0, ""
    while True:
        stopping = stop.is_set()
        try:
            with open(path, encoding="utf-8") as handle:
                handle.seek(offset)
                chunk = handle.read()
                offset = handle.tell()
        except FileNotFoundError:
            chunk = ""
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
        if stopping:
            return
        stop.wait(poll_s)


def epoch_reports(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-epoch report events, in order."""
    return [e for e in events if e.get("type") == "report" and e.get("kind") == "epoch"]
