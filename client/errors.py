"""The SDK's exceptions: one class per kind of answer, built from the service's own error.

``SyncbnError`` is the base. ``ApiError`` is an error status, with the API's ``message``, the
request ``field`` a 422 names and the ``SYNCBN_*`` ``setting`` a limit names; its subclasses
say what kind (``NotFound``, ``Rejected``, ``Busy`` ...). ``Unavailable`` is a service that
cannot serve: a 5xx (``ServerError``) or no answer at all (``Unreachable``).
"""

from __future__ import annotations

import re
from typing import Any

import httpx

SETTING = re.compile(r"(?<![$\w])SYNCBN_[A-Z0-9_]+")
"""A setting of the service, as its limits name them in an error (``SYNCBN_MAX_UPLOAD_BYTES``);
``$SYNCBN_HOME`` names a folder, not a limit."""


class SyncbnError(Exception):
    """Anything the SDK raises about the service."""


class WaitTimeout(SyncbnError, TimeoutError):
    """``Client.wait`` or ``Client.wait_study`` ran out of time; the job or study goes on."""


class Unavailable(SyncbnError):
    """The service cannot serve: it failed (5xx) or did not answer."""


class Unreachable(Unavailable):
    """No answer from ``url`` (refused, timed out, cut off); ``str()`` is httpx's reason."""

    def __init__(self, url: str, reason: httpx.HTTPError) -> None:
        super().__init__(str(reason))
        self.url = url
        self.reason = reason


class ApiError(SyncbnError):
    """An error status: ``message`` is the API's own, ``field`` the request field it names
    (a 422's first ``loc``, without ``body``, joined with ``.``), ``setting`` the
    ``SYNCBN_*`` setting it names, ``detail`` the raw ``detail``. ``str()`` is
    ``HTTP <status>: <message>`` (a 422: one ``field: message`` line per problem)."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        setting: str | None = None,
        detail: Any = None,
        text: str | None = None,
    ) -> None:
        super().__init__(text or f"HTTP {status}: {message}")
        self.status, self.message, self.field = status, message, field
        self.setting, self.detail = setting, detail


class Unauthorized(ApiError):
    """401: no API token, or not the service's."""


class Forbidden(ApiError):
    """403: refused (e.g. a Host or Origin the service does not trust)."""


class NotFound(ApiError):
    """404: no such job, study, dataset, code bundle or kept model."""


class Conflict(ApiError):
    """409: not now (a job still running, no checkpoint yet, a dataset in use)."""


class Rejected(ApiError):
    """Any other 4xx: the request itself is wrong (422 a field, 413 too large, 400 ...)."""


class Busy(ApiError):
    """429: a full queue, a quota, or too many requests at once (retried first when the
    service said ``Retry-After``)."""


QuotaExceeded = Busy


class ServerError(ApiError, Unavailable):
    """5xx: the service or its Ray cluster failed."""


class InsufficientStorage(ServerError):
    """507: the service's disk budget (``SYNCBN_DISK_BUDGET_BYTES``) or its file system is
    full: uploads and new jobs wait until an operator frees space; reads, cancels and deletes
    still work."""


BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: Busy,
    507: InsufficientStorage,
}


def _location(error: dict[str, Any]) -> str:
    return ".".join(str(p) for p in error.get("loc", []) if p != "body")


def error_for(response: httpx.Response) -> ApiError:
    """The ``ApiError`` subclass of ``response``'s status, from its ``detail``."""
    status = response.status_code
    kind = BY_STATUS.get(status) or (ServerError if status >= 500 else Rejected)
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        text = response.text[:500]
        return kind(status, text, detail=text)
    field, lines = None, None
    if isinstance(detail, list):
        errors = [e for e in detail if isinstance(e, dict)]
        field = next((_location(e) for e in errors if _location(e)), None)
        message = "; ".join(str(e.get("msg")) for e in errors)
        lines = [f"  {_location(e) or '(body)'}: {e.get('msg')}" for e in errors]
    else:
        message = str(detail)
    setting = SETTING.search(message)
    text = f"HTTP {status}:\n" + "\n".join(lines) if lines is not None else None
    return kind(status, message, field, setting and setting.group(0), detail, text)
