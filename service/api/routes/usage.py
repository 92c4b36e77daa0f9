"""``/v1/admin/usage``: what ``$SYNCBN_HOME`` holds, by kind and by owner (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from contract.api import DiskUsageOut
from service.api.auth import CallerDep
from service.api.deps import ServicesDep, api_router
from service.operations.usage import usage as home_usage
from service.teams.caller import require_admin

router = api_router("/v1/admin", "admin")


@router.get("/usage", response_model=DiskUsageOut)
def usage(
    services: ServicesDep,
    caller: CallerDep,
    refresh: Annotated[
        bool, Query(description="walk the home now (default: the last measure, if fresh)")
    ] = False,
) -> DiskUsageOut:
    """The bytes under ``$SYNCBN_HOME`` by kind (database, datasets, code, runs, logs, other)
    and by owner, against the disk budget (``SYNCBN_DISK_BUDGET_BYTES``) and the file system's
    free space."""
    require_admin(caller, "see the disk usage")
    state = services.disk.state(refresh=refresh)
    return home_usage(services.db, services.settings, state)
