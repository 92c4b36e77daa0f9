"""Liveness, readiness (database and Ray; the disk's headroom reported) and Prometheus
metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from contract.api import ErrorOut, Health
from contract.version import package_version
from service.api.auth import require_api_token
from service.api.deps import ServicesDep

router = APIRouter(tags=["health"])
VERSION = package_version()
"""The package version ``/healthz`` and ``/readyz`` report (clients compare its major)."""


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers (no auth, no dependencies; on the event loop, so a busy
    thread pool never delays it)."""
    return Health(status="ok", version=VERSION)


@router.get(
    "/readyz",
    response_model=Health,
    dependencies=[Depends(require_api_token)],
    responses={401: {"model": ErrorOut}, 503: {"model": Health, "description": "not ready"}},
)
async def readyz(services: ServicesDep, response: Response) -> Health:
    """Readiness: the database answers and the Ray cluster has alive nodes. ``checks.disk``
    gives the headroom of ``$SYNCBN_HOME`` (``ok: 1.2 GiB free of the budget``; ``degraded``
    from 90 % of the budget or of the file system; ``full``: uploads and new jobs are refused
    with 507): the service stays ready, as reads, cancels and deletes still work."""
    checks: dict[str, str] = {}
    try:
        await run_in_threadpool(services.db.ping)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc}"[:300]
    try:
        capacity = await run_in_threadpool(services.ray.capacity)
        checks["ray"] = "ok" if capacity.nodes else "error: no alive Ray nodes"
    except Exception as exc:
        checks["ray"] = f"error: {exc}"[:300]
    ready = all(v == "ok" for v in checks.values())
    try:
        checks["disk"] = (await run_in_threadpool(services.disk.state)).describe()
    except Exception as exc:
        checks["disk"] = f"error: {exc}"[:300]
    response.status_code = 200 if ready else 503
    return Health(status="ready" if ready else "not ready", version=VERSION, checks=checks)


@router.get(
    "/metrics",
    dependencies=[Depends(require_api_token)],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 401: {"model": ErrorOut}},
)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics: jobs by state, request latency by route, reports ingested, and the
    disk of ``$SYNCBN_HOME`` (``syncbn_disk_used_bytes``, ``syncbn_disk_budget_bytes``,
    ``syncbn_disk_free_bytes``)."""
    body = await run_in_threadpool(generate_latest, services.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
