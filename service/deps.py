"""What routes need, gathered once per app (``app.state.services``) and a few helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session

from service import store
from service.auth import require_api_token
from service.db import Database
from service.lifecycle import Lifecycle
from service.models import Job
from service.observability import ServiceMetrics
from service.ray_jobs import RayJobs
from service.scheduler import Scheduler
from service.schemas import ErrorOut
from service.settings import Settings


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


def not_found(what: str, ident: Any) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} not found")


def job_or_404(session: Session, job_id: str) -> Job:
    """The job ``job_id``, or a 404 saying it does not exist."""
    job = store.get_job(session, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job
