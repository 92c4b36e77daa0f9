"""Prometheus metrics, request timing and JSON logs (pure ASGI middleware, so streaming
responses such as the event stream pass through untouched)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

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


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, and any ``extra`` fields."""

    _standard = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(
            {
                key: value
                for key, value in record.__dict__.items()
                if key not in self._standard and not key.startswith("_") and key != "color_message"
            }
        )
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def log_config(level: str = "INFO") -> dict[str, Any]:
    """``logging.config.dictConfig`` for the service and uvicorn: JSON lines on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": sys.stderr}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": handler},
        "loggers": {
            name: {"handlers": ["stderr"], "level": level, "propagate": False}
            for name in ("service", "uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
