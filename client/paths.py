"""Every URL path of the REST API that the client uses: the one place they are spelled.
Ids and names are percent-encoded, so an id can never reach another route."""

from __future__ import annotations

from urllib.parse import quote

HEALTH = "/healthz"
READY = "/readyz"
JOBS = "/v1/jobs"
STUDIES = "/v1/studies"
DATASETS = "/v1/datasets"
CODE = "/v1/code"
USERS = "/v1/users"
ME = "/v1/me"
AUDIT = "/v1/audit"
ADMIN_USAGE = "/v1/admin/usage"


def item(collection: str, item_id: str, *parts: str) -> str:
    """``/v1/jobs/<id>`` and below it, e.g. ``item(JOBS, "j-1", "predict", "images")`` or
    ``item(USERS, "alice", "tokens", "laptop")``; every part is percent-encoded."""
    return "/".join((collection, *(quote(p, safe="") for p in (item_id, *parts))))
