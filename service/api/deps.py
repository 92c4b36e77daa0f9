"""What routes need, gathered once per app (``app.state.services``), and the token-protected
router they hang on. (The one lookup of a job by id is ``service.jobs.lifecycle.job_or_404``.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.routing import APIRoute

from contract.api import ErrorOut
from service.api.auth import current_caller
from service.api.observability import ServiceMetrics
from service.cluster import Cluster
from service.jobs.events import EventHub
from service.jobs.lifecycle import Lifecycle
from service.jobs.retention import Retention
from service.jobs.scheduler import Scheduler
from service.operations.disk import DiskMeter
from service.settings import Settings
from service.storage.db import Database


@dataclass
class Services:
    """Everything a request may need, built once by ``create_app``."""

    settings: Settings
    db: Database
    ray: Cluster
    lifecycle: Lifecycle
    scheduler: Scheduler
    metrics: ServiceMetrics
    events: EventHub
    """Wakes event streams after commits; caps how many are open (``service.jobs.events``)."""
    disk: DiskMeter
    """The disk of ``$SYNCBN_HOME`` against its budget (``service.operations.disk``)."""
    retention: Retention
    """Removes the files of jobs that ended ``SYNCBN_RETENTION_DAYS`` ago
    (``service.jobs.retention``)."""


async def get_services(request: Request) -> Services:
    """``async``: a sync dependency would cost every request a thread-pool hop."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
"""A route's ``services`` parameter."""


class HasId(Protocol):
    id: str


Created = TypeVar("Created", bound=HasId)
OwnerQuery = Annotated[
    str | None, Query(max_length=64, description="only those of this user (e.g. yours: GET /v1/me)")
]
"""A list's ``owner`` filter."""


def singular(tag: str) -> str:
    """``jobs`` -> ``job``, ``studies`` -> ``study``: the kind of object a tag's routes serve."""
    return tag[:-3] + "y" if tag.endswith("ies") else tag.removesuffix("s")


def operation_id(route: APIRoute) -> str:
    """A route's short OpenAPI ``operationId``, ``<tag>-<verb>`` like ``jobs-submit`` or
    ``studies-cancel``: what a generated client names its functions after."""
    tag = route.tags[0] if route.tags else "api"
    words = [w for w in route.name.split("_") if w not in (tag, singular(str(tag)), "job")]
    return "-".join([str(tag), *(words or [route.name])])


def created(response: Response, collection: str, out: Created) -> Created:
    """``out``, a create's answer, with ``Location: <collection>/<out.id>`` (the audit log
    names the new object after it)."""
    response.headers["Location"] = f"{collection}/{out.id}"
    return out


def api_router(prefix: str, tag: str) -> APIRouter:
    """A ``/v1`` router whose every route needs a signed-in caller (``CallerDep``; 401 and
    403 documented)."""
    return APIRouter(
        prefix=prefix,
        tags=[tag],
        dependencies=[Depends(current_caller)],
        responses={
            401: {"model": ErrorOut},
            403: {"model": ErrorOut, "description": "the caller's role does not allow it"},
        },
    )
