"""Prometheus metrics, request timing (pure ASGI middleware, so streaming responses such as
the event stream pass through untouched) and the log's format: readable lines for a person at
a terminal, one JSON object a line for a collector (``SYNCBN_LOG_FORMAT``)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.states import JobState

JOB_STATES: tuple[str, ...] = tuple(JobState)


class ServiceMetrics:
    """The service's metrics in their own registry (served at ``/metrics``)."""

    def __init__(self, count_jobs: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "syncbn_http_request_duration_seconds",
            "HTTP request latency by route template",
            ("method", "route", "status"),
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.reports = Counter(
            "syncbn_reports_ingested",
            "training reports stored, by source (ingest endpoint or stats.jsonl backfill)",
            ("source",),
            registry=self.registry,
        )
        self.registry.register(_JobsCollector(count_jobs))

    def report_stored(self, source: str) -> None:
        self.reports.labels(source=source).inc()


class _JobsCollector:
    def __init__(self, count_jobs: Callable[[], dict[str, int]]) -> None:
        self.count_jobs = count_jobs

    def collect(self) -> Any:
        family = GaugeMetricFamily("syncbn_jobs", "jobs by state", labels=("state",))
        try:
            counts = self.count_jobs()
        except Exception:  # the database is down: report nothing rather than fail the scrape
            counts = {}
        for state in JOB_STATES:
            family.add_metric((state,), counts.get(state, 0))
        yield family


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""The ``method`` label's values; any other method is ``other`` (h11 passes made-up methods
through, and each new label value would be a new time series, kept forever)."""


class TimingMiddleware:
    """Observe every HTTP request's latency, labelled with its route template."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(method, route, str(status)).observe(
                time.perf_counter() - started
            )


_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ``extra`` fields (``job_id``...), not the standard attributes."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(extra_fields(record))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """A line for a person: ``2026-12-08 09:14:03 INFO  service.jobs: job submitted
    job_id=j-1f2e``; the ``extra`` fields as ``key=value`` (JSON where not a plain word), then
    any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        when = self.formatTime(record, "%Y-%m-%d %H:%M:%S")
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = " ".join(f"{k}={_plain(v)}" for k, v in extra_fields(record).items())
        if fields:
            line = f"{line}  {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _plain(value: Any) -> str:
    """A value of ``key=value``: a word as it is, another string quoted, else compact JSON."""
    if not isinstance(value, str):
        return json.dumps(value, default=str, separators=(",", ":"))
    return value if value and not any(c in value for c in ' "=\n') else json.dumps(value)


LogFormat = Literal["auto", "text", "json"]


def resolve_format(fmt: LogFormat, stream: TextIO | None = None) -> Literal["text", "json"]:
    """``auto``: text when ``stream`` (default stderr) is a terminal, else JSON."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or odd stream: for a machine
        return "json"


def log_config(level: str = "INFO", fmt: LogFormat = "auto") -> dict[str, Any]:
    """``logging.config.dictConfig`` for the service and uvicorn: lines on stderr in ``fmt``
    (``SYNCBN_LOG_FORMAT``: ``text``, ``json``, or ``auto``: text on a terminal, else JSON)."""
    chosen = resolve_format(fmt)
    handler = {"class": "logging.StreamHandler", "formatter": chosen, "stream": sys.stderr}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}, "text": {"()": TextFormatter}},
        "handlers": {"stderr": handler},
        "loggers": {
            name: {"handlers": ["stderr"], "level": level, "propagate": False}
            for name in ("service", "uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
