"""``/v1/audit``: the audit log, for an admin: every write, who, what, which object, when and
the outcome, newest first (``service.teams.audit``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query
from fastapi.exceptions import RequestValidationError

from contract.team import AuditList
from service.api.auth import CallerDep
from service.api.deps import ServicesDep, api_router
from service.teams.audit import AuditQuery
from service.teams.caller import require_admin

router = api_router("/v1/audit", "audit")


@router.get("", response_model=AuditList)
async def list_audit(
    caller: CallerDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    actor: Annotated[str | None, Query(max_length=64, description="a user's name")] = None,
    action: Annotated[
        str | None, Query(max_length=48, description="like jobs-submit, users-create, sign-in")
    ] = None,
    object_id: Annotated[str | None, Query(max_length=128)] = None,
    status: Annotated[int | None, Query(ge=100, le=599, description="an HTTP status")] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601; no zone: UTC")] = None,
) -> AuditList:
    """The audit log, newest first; failed sign-ins are one row per client address and minute
    (``count``)."""
    require_admin(caller, "read the audit log")
    if since is not None:
        since = since.replace(tzinfo=UTC) if since.tzinfo is None else since
        try:
            since = since.astimezone(UTC)
        except OverflowError:
            error = {"loc": ("query", "since"), "msg": "out of range in UTC", "type": "value_error"}
            raise RequestValidationError([error]) from None
    query = AuditQuery(limit, offset, actor, action, object_id, status, since)
    return await services.db.read(query.page)
