"""The FastAPI application: routers, middleware, the page, and the scheduler's loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from service import store
from service.db import Database
from service.deps import Services
from service.lifecycle import Lifecycle
from service.observability import BodyLimitMiddleware, ServiceMetrics, TimingMiddleware
from service.ray_jobs import RayJobs, RayUnavailable
from service.routers import code, datasets, health, ingest, jobs, studies, trained
from service.scheduler import Scheduler
from service.settings import Settings

logger = logging.getLogger("service")
STATIC_DIR = Path(__file__).parent / "static"


def build_services(settings: Settings, ray: RayJobs | None = None) -> Services:
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
    lifecycle = Lifecycle(settings, db, ray, on_report=metrics.report_stored)
    scheduler = Scheduler(settings, db, ray, lifecycle)
    return Services(settings, db, ray, lifecycle, scheduler, metrics)


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
        await asyncio.sleep(interval)


def create_app(settings: Settings | None = None, ray: RayJobs | None = None) -> FastAPI:
    """The service; ``settings`` default to the environment, ``ray`` to a Ray Jobs client of
    ``settings.ray_address``."""
    settings = settings or Settings()
    services = build_services(settings, ray)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
    )
    app.state.settings = settings
    app.state.services = services
    routers = (jobs, trained, studies, datasets, code, health, ingest)
    for module in routers:
        app.include_router(module.router)

    def body_limit(path: str, method: str) -> int:
        if path.startswith(("/v1/datasets", "/v1/internal/")):
            return settings.max_upload_bytes
        if path.endswith(("/predict", "/predict/images")):
            return settings.max_predict_bytes
        return settings.max_body_bytes

    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit)
    app.add_middleware(TimingMiddleware, metrics=services.metrics)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False, response_model=None)
    def index() -> FileResponse | HTMLResponse:
        page = STATIC_DIR / "index.html"
        if page.exists():
            return FileResponse(page)
        return HTMLResponse("<h1>syncbn-service</h1><p>See <a href='/docs'>/docs</a>.</p>")

    return app
