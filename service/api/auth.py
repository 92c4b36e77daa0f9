"""Authentication: the API bearer token, and the per-job tokens of the ingest endpoint.

Every route that reads or changes data needs ``Authorization: Bearer <token>`` (401
otherwise), on loopback too: there is always a token (``service.api.credentials``). Open:
``/healthz``, the page shell (``/``, ``/static``) and the API description (``/docs``,
``/openapi.json``), none of which carries data. Tokens travel only in the header, never in
URLs (which end up in logs): the dashboard reads the event stream with ``fetch``, which can
send it.

The ingest endpoint takes a per-job token instead: a random secret made when the job is handed
to Ray and given to its Ray Job only; the service keeps its SHA-256, so a job can write its own
statistics and nothing else, and there is no signing key for user code on a worker to read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.storage import store

bearer = HTTPBearer(auto_error=False, description="SYNCBN_API_TOKEN")


def token_digest(token: str) -> str:
    """What the service keeps of a per-job token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_ingest_token() -> tuple[str, str]:
    """A fresh per-job ingest token and its digest."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


def _given(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")
    return credentials.credentials


def _check(expected: str, given: str) -> None:
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise _unauthorized("invalid token")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def require_api_token(request: Request, credentials: Credentials) -> None:
    """Dependency: the API token (``async``: checked on the event loop, no thread hop)."""
    _check(request.app.state.settings.api_token, _given(credentials))


def require_ingest_token(job_id: str, request: Request, credentials: Credentials) -> None:
    """Dependency: the per-job ingest token of ``job_id`` (401 for an unknown job too)."""
    given = _given(credentials)
    with request.app.state.services.db.session() as session:
        job = store.get_job(session, job_id)
        expected = job.ingest_token_sha256 if job is not None else None
    if expected is None:  # no such job, or not handed to Ray yet: no token exists
        raise _unauthorized("invalid token")
    _check(expected, token_digest(given))
