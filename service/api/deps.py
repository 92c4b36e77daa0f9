"""What routes need, gathered once per app (``app.state.services``), and the token-protected
router they hang on. (The one lookup of a job by id is ``service.jobs.lifecycle.job_or_404``.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute

from contract.api import ErrorOut
from service.api.auth import require_api_token
from service.api.observability import ServiceMetrics
from service.cluster import Cluster
from service.jobs.events import EventHub
from service.jobs.lifecycle import Lifecycle
from service.jobs.scheduler import Scheduler
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


async def get_services(request: Request) -> Services:
    """``async``: a sync dependency would cost every request a thread-pool hop."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
"""A route's ``services`` parameter."""


def operation_id(route: APIRoute) -> str:
    """A route's short OpenAPI ``operationId``, ``<tag>-<verb>`` like ``jobs-submit`` or
    ``studies-cancel``: what a generated client names its functions after."""
    tag = route.tags[0] if route.tags else "api"
    singular = tag[:-3] + "y" if tag.endswith("ies") else tag.removesuffix("s")
    words = [w for w in route.name.split("_") if w not in (tag, singular, "job")]
    return "-".join([str(tag), *(words or [route.name])])


def api_router(prefix: str, tag: str) -> APIRouter:
    """A ``/v1`` router whose every route needs the API token (401 documented)."""
    return APIRouter(
        prefix=prefix,
        tags=[tag],
        dependencies=[Depends(require_api_token)],
        responses={401: {"model": ErrorOut}},
    )
