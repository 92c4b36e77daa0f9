"""The FastAPI application: routers, middleware, the page, and the scheduler's loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from service.api import errors
from service.api.auditing import AuditMiddleware
from service.api.auth import Authenticator, TrustedProxy
from service.api.credentials import ensure_api_token
from service.api.deps import Services, operation_id
from service.api.middleware import (
    AuthMiddleware,
    DiskGuardMiddleware,
    Gate,
    HostOriginMiddleware,
    HostPolicy,
    RequestLimitsMiddleware,
    RouteLimits,
)
from service.api.observability import ServiceMetrics, TimingMiddleware
from service.api.pages import install_pages
from service.api.routes import (
    audit,
    code,
    datasets,
    health,
    ingest,
    jobs,
    studies,
    trained,
    usage,
    users,
)
from service.cluster import Cluster, RayJobs, RayUnavailable
from service.files.housekeeping import sweep
from service.jobs.events import EventHub
from service.jobs.lifecycle import Lifecycle
from service.jobs.retention import Retention
from service.jobs.scheduler import Scheduler
from service.operations.disk import DiskCollector, DiskMeter
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.teams.audit import AuditLog

logger = logging.getLogger("service")
STATIC_DIR = Path(__file__).parent / "static"
MULTIPART_OVERHEAD = 64 << 10
"""Bytes of a multipart body beside its file (boundaries, part headers, form fields)."""


def route_limits(settings: Settings) -> Callable[[str, str], RouteLimits]:
    """Each route's body limit and concurrency gate: uploads and predictions their own, JSON
    the rest."""
    slow = {
        "body_timeout_s": settings.upload_body_timeout_s,
        "timeout_setting": "upload_body_timeout_s",
    }
    json_body = {"body_timeout_s": settings.body_timeout_s}
    upload = RouteLimits(
        settings.max_upload_bytes + MULTIPART_OVERHEAD, "max_upload_bytes", "upload", **slow
    )
    code = RouteLimits(
        settings.max_code_bytes + MULTIPART_OVERHEAD, "max_code_bytes", "upload", **slow
    )
    ingest = RouteLimits(settings.max_ingest_bytes, "max_ingest_bytes", **json_body)
    predict = RouteLimits(settings.max_predict_bytes, "max_predict_bytes", "predict", **slow)
    plain = RouteLimits(settings.max_body_bytes, "max_body_bytes", **json_body)

    def limits_for(method: str, path: str) -> RouteLimits:
        if path == "/v1/datasets":
            return upload
        if path == "/v1/code":
            return code
        if path.startswith("/v1/internal/"):
            return ingest
        if path.startswith("/v1/jobs/") and path.endswith(("/predict", "/predict/images")):
            return predict
        return plain

    return limits_for


def gates(settings: Settings) -> dict[str, Gate]:
    """The concurrency caps of heavy requests (429 beyond them)."""
    return {
        "predict": Gate("predict", settings.max_concurrent_predicts, "max_concurrent_predicts"),
        "upload": Gate("upload", settings.max_concurrent_uploads, "max_concurrent_uploads"),
    }


def build_services(settings: Settings, ray: Cluster | None = None) -> Services:
    """The service's parts; ``ray``: the Ray Jobs client (default: one for
    ``settings.ray_address``; tests of the service alone pass a fake)."""
    if ray is None:
        if not settings.ray_address:
            raise ValueError("RAY_ADDRESS is not set (python -m service starts an embedded Ray)")
        ray = RayJobs(settings.ray_address)
    db = Database(settings.db_url)

    def count_jobs() -> dict[str, int]:
        with db.session() as session:
            return store.count_by_state(session)

    metrics = ServiceMetrics(count_jobs)
    disk = DiskMeter(settings)
    metrics.registry.register(DiskCollector(disk))
    lifecycle = Lifecycle(settings, db, ray, on_report=metrics.report_stored)
    scheduler = Scheduler(settings, db, ray, lifecycle)
    events = EventHub(db, settings)
    retention = Retention(settings, db)
    return Services(settings, db, ray, lifecycle, scheduler, metrics, events, disk, retention)


def chores(services: Services) -> None:
    """The loop's slow chores, each when due: the retention's sweep (once at start, then every
    ``SYNCBN_RETENTION_INTERVAL_S``) and a measure of the disk (every
    ``SYNCBN_DISK_CHECK_INTERVAL_S``: a warning is logged at 90 % of the budget). An error is
    logged, never fatal."""
    for name, chore in (
        ("the retention's sweep", services.retention.sweep_if_due),
        ("measuring the disk", services.disk.refresh_if_due),
    ):
        try:
            chore()
        except Exception:
            logger.exception("%s failed", name)


async def scheduler_loop(services: Services) -> None:
    """Reconcile with Ray once it answers, then tick forever (errors are logged, not fatal)."""
    interval = services.settings.poll_interval_s
    reconciled = False
    while True:
        try:
            if not reconciled:
                await run_in_threadpool(services.scheduler.reconcile)
                reconciled = True
                logger.info("reconciled jobs with Ray at %s", services.settings.ray_address)
            await run_in_threadpool(services.scheduler.tick)
        except RayUnavailable as exc:
            logger.warning("Ray unavailable: %s", exc)
        except Exception:
            logger.exception("scheduler tick failed")
        await run_in_threadpool(chores, services)
        await asyncio.sleep(interval)


def create_app(settings: Settings | None = None, ray: Cluster | None = None) -> FastAPI:
    """The service; ``settings`` default to the environment, ``ray`` to a Ray Jobs client of
    ``settings.ray_address``. Without ``settings.api_token`` the token of
    ``$SYNCBN_HOME/api-token`` is used (made on first start)."""
    settings = settings or Settings()
    ensure_api_token(settings)
    services = build_services(settings, ray)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(sweep, settings)
        task = asyncio.create_task(scheduler_loop(services), name="scheduler")
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            services.db.close()

    app = FastAPI(
        title="syncbn-service",
        version="1",
        summary="Train with synchronized BatchNorm on Ray; watch every worker's statistics.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        docs_url=None,  # service.api.pages serves /docs and /redoc from local assets
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.services = services
    errors.install(app)
    routers = (jobs, trained, studies, datasets, code, users, audit, usage, health, ingest)
    for module in routers:
        app.include_router(module.router)

    # The last added runs first: timing sees every answer, the audit log every write and
    # failed sign-in (refused or not), the host check comes before all, then the token, then
    # the disk's room (an upload or a new job on a full disk: 507 before its body), and only
    # then the limits (a stranger never takes a slot).
    limits = route_limits(settings)
    proxy = TrustedProxy.of(settings)
    app.state.authenticator = Authenticator(str(settings.api_token), services.db, proxy)
    app.add_middleware(RequestLimitsMiddleware, limits_for=limits, gates=gates(settings))
    app.add_middleware(DiskGuardMiddleware, meter=services.disk)
    app.add_middleware(AuthMiddleware, authenticator=app.state.authenticator)
    app.add_middleware(HostOriginMiddleware, policy=HostPolicy(settings))
    app.add_middleware(AuditMiddleware, audit=AuditLog(services.db), openapi=app.openapi)
    app.add_middleware(TimingMiddleware, metrics=services.metrics)
    install_pages(app)  # /docs, /redoc, /static/apidocs; the HTML answers' headers (outermost)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False, response_model=None)
    def index() -> FileResponse | HTMLResponse:
        page = STATIC_DIR / "index.html"
        if page.exists():
            return FileResponse(page)
        return HTMLResponse("<h1>syncbn-service</h1><p>See <a href='/docs'>/docs</a>.</p>")

    return app
