"""Authentication: the API bearer token, and the per-job tokens of the ingest endpoint.

With ``SYNCBN_API_TOKEN`` set, every route that reads or changes data needs
``Authorization: Bearer <token>`` (401 otherwise). Open: ``/healthz``, the page shell (``/``,
``/static``) and the API description (``/docs``, ``/openapi.json``), none of which carries data.
Tokens travel only in the header, never in URLs (which end up in logs): the dashboard reads the
event stream with ``fetch``, which can send it.

The ingest endpoint takes a per-job token instead: HMAC(secret, job id), handed to the job's
Ray Job in its environment, so a job can only write its own statistics.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="SYNCBN_API_TOKEN")


def ingest_token(secret: str, job_id: str) -> str:
    return hmac.new(secret.encode(), f"ingest:{job_id}".encode(), hashlib.sha256).hexdigest()


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


def _check(expected: str, given: str | None) -> None:
    if not given:
        raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise _unauthorized("invalid token")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def require_api_token(request: Request, credentials: Credentials) -> None:
    """Dependency: the API token, when the service has one."""
    expected = request.app.state.settings.api_token
    if expected:
        _check(expected, credentials.credentials if credentials else None)


def require_ingest_token(job_id: str, request: Request, credentials: Credentials) -> None:
    """Dependency: the per-job ingest token of ``job_id``."""
    secret = request.app.state.settings.secret()
    _check(ingest_token(secret, job_id), credentials.credentials if credentials else None)
