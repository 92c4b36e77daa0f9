"""Every URL path of the REST API that the client uses: the one place they are spelled.
Ids are percent-encoded, so an id can never reach another route."""

from __future__ import annotations

from urllib.parse import quote

HEALTH = "/healthz"
READY = "/readyz"
JOBS = "/v1/jobs"
STUDIES = "/v1/studies"
DATASETS = "/v1/datasets"
CODE = "/v1/code"


def item(collection: str, item_id: str, *parts: str) -> str:
    """``/v1/jobs/<id>`` and below it, e.g. ``item(JOBS, "j-1", "predict", "images")``."""
    return "/".join((collection, quote(item_id, safe=""), *parts))
