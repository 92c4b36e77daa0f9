"""What routes need, gathered once per app (``app.state.services``) and a few helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session

from service.api.auth import require_api_token
from service.api.observability import ServiceMetrics
from service.api.schemas import ErrorOut
from service.cluster.ray_jobs import RayJobs
from service.jobs.lifecycle import Lifecycle
from service.jobs.scheduler import Scheduler
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.storage.tables import Job


@dataclass
class Services:
    """Everything a request may need, built once by ``create_app``."""

    settings: Settings
    db: Database
    ray: RayJobs
    lifecycle: Lifecycle
    scheduler: Scheduler
    metrics: ServiceMetrics


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
"""A route's ``services`` parameter."""


def api_router(prefix: str, tag: str) -> APIRouter:
    """A ``/v1`` router whose every route needs the API token (401 documented)."""
    return APIRouter(
        prefix=prefix,
        tags=[tag],
        dependencies=[Depends(require_api_token)],
        responses={401: {"model": ErrorOut}},
    )


def field_error(field: str, message: str, kind: str = "value_error") -> RequestValidationError:
    """A 422 in FastAPI's own shape, naming the request body field."""
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": kind}])


def limit_error(field: str, message: str, setting: str | None) -> RequestValidationError:
    """A 422 on ``field`` for a request over a limit, naming the setting that sets it."""
    if setting:
        message = f"{message} (set by {Settings.env_name(setting)})"
    return field_error(field, message, "limit_exceeded" if setting else "value_error")


def not_found(what: str, ident: Any) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} not found")


def delete_upload(
    services: Services,
    get: Callable[[Session, str], Any],
    key: str,
    ident: str,
    remove: Callable[[Settings, str], None],
) -> Response:
    """``DELETE`` of an upload (a dataset or a code bundle, named by the spec field ``key``):
    404 when unknown, 409 while a job that is not over uses it; else its row, then its files."""
    what = key if key == "dataset" else "code bundle"
    with services.db.session() as session:
        row = get(session, ident)
        if row is None:
            raise not_found(what, ident)
        refuse_in_use(session, key, ident, what)
        store.delete_row(session, row)
    remove(services.settings, ident)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def refuse_in_use(session: Session, key: str, value: str, what: str) -> None:
    """409 while a job that is not over uses ``value`` as its spec's ``key``."""
    users = [job.id for job in store.jobs_using(session, key, value)]
    if users:
        shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"{what} {value} is used by {len(users)} job(s) not over yet ({shown}): "
            "cancel them or wait for them to end",
        )


def job_or_404(session: Session, job_id: str) -> Job:
    """The job ``job_id``, or a 404 saying it does not exist."""
    job = store.get_job(session, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job
