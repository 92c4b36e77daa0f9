"""Authentication: the API bearer token, and the per-job tokens of the ingest endpoint.

Every route that reads or changes data needs ``Authorization: Bearer <token>`` (401
otherwise), on loopback too: there is always a token (``service.api.credentials``). Open:
``/healthz``, the page shell (``/``, ``/static``) and the API description (``/docs``,
``/redoc``, ``/openapi.json``), none of which carries data. Tokens travel only in the header,
never in URLs (which end up in logs): the dashboard reads the event stream with ``fetch``,
which can send it.

Who is asking is settled first, by ``Authenticator`` in ASGI middleware
(``service.api.middleware.AuthMiddleware``): before a concurrency slot is taken and before a
byte of the body is read, so a stranger's body costs the service nothing but its headers. The
route dependencies below only document the scheme in OpenAPI and repeat the check when a
request did not pass the middleware.

The ingest endpoint takes a per-job token instead: a random secret made when the job is handed
to Ray and given to its Ray Job only; the service keeps its SHA-256, so a job can write its own
statistics and nothing else, and there is no signing key for user code on a worker to read.
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.jobs.ingest_tokens import token_digest
from service.storage import store
from service.storage.db import Database
from service.teams.caller import BOOTSTRAP, CALLER, Caller

bearer = HTTPBearer(auto_error=False, description="SYNCBN_API_TOKEN")
AUTHENTICATED = "syncbn.authenticated"
"""The ASGI scope key the middleware sets once a request's token is checked."""
OPEN_PATHS = frozenset({"/healthz", "/", "/openapi.json", "/docs", "/redoc", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
INGEST_PATH = re.compile(r"^/v1/internal/jobs/([^/]{1,200})/events$")
MISSING = "missing bearer token (Authorization: Bearer <token>)"
INVALID = "invalid token"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None: none given)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def is_open(path: str) -> bool:
    """Whether ``path`` is served without a token (it carries no data)."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


class Authenticator:
    """Checks a request's token for its path: the API token, or on a job's ingest route that
    job's ingest token (one indexed read of its digest)."""

    def __init__(self, api_token: str, db: Database) -> None:
        self.api_token, self.db = api_token, db

    async def refusal(self, path: str, authorization: str | None) -> str | None:
        """Why the request may not go on (the 401's message); None: it may."""
        if is_open(path):
            return None
        given = bearer_token(authorization)
        if given is None:
            return MISSING
        ingest = INGEST_PATH.match(path)
        if ingest is None:
            return None if _same(self.api_token, given) else INVALID
        expected = await self.db.read(lambda session: _ingest_digest(session, ingest.group(1)))
        # no such job, or not handed to Ray yet: no token exists
        return None if expected and _same(expected, token_digest(given)) else INVALID


def _ingest_digest(session: Session, job_id: str) -> str | None:
    job = store.get_job(session, job_id)
    return job.ingest_token_sha256 if job is not None else None


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def _checked(request: Request) -> None:
    if request.scope.get(AUTHENTICATED):
        return
    authenticator: Authenticator = request.app.state.authenticator
    reason = await authenticator.refusal(request.url.path, request.headers.get("authorization"))
    if reason is not None:
        raise _unauthorized(reason)


async def require_api_token(request: Request, credentials: Credentials) -> None:
    """Dependency: the API token (checked by the middleware already; documents the scheme)."""
    await _checked(request)


async def current_caller(request: Request, credentials: Credentials) -> Caller:
    """Dependency: who is asking (the middleware settled it from the token)."""
    await _checked(request)
    return request.scope.get(CALLER, BOOTSTRAP)


CallerDep = Annotated[Caller, Depends(current_caller)]
"""A route's ``caller`` parameter: the signed-in user and their role."""


async def require_ingest_token(request: Request, credentials: Credentials) -> None:
    """Dependency: the per-job ingest token of the path's job (401 for an unknown job too)."""
    await _checked(request)
