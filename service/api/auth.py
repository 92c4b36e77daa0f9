"""Authentication: who is asking (a ``Caller``), from an API bearer token (the service's own,
the bootstrap ``admin``, or a user's: ``service.teams.users``) or a trusted proxy's header;
and the per-job tokens of the ingest endpoint.

Every route that reads or changes data needs ``Authorization: Bearer <token>`` (401
otherwise), on loopback too: there is always a token (``service.api.credentials``). Open:
``/healthz``, the page shell (``/``, ``/static``) and the API description (``/docs``,
``/redoc``, ``/openapi.json``), none of which carries data. Tokens travel only in the header,
never in URLs (which end up in logs): the dashboard reads the event stream with ``fetch``,
which can send it.

Who is asking is settled first, by ``Authenticator`` in ASGI middleware
(``service.api.middleware.AuthMiddleware``): before a concurrency slot is taken and before a
byte of the body is read, so a stranger's body costs the service nothing but its headers; it
leaves the caller in the scope (``CALLER``). The route dependencies below give routes that
caller (``CallerDep``), document the scheme in OpenAPI and repeat the check when a request
did not pass the middleware.

The ingest endpoint takes a per-job token instead: a random secret made when the job is handed
to Ray and given to its Ray Job only; the service keeps its SHA-256, so a job can write its own
statistics and nothing else, and there is no signing key for user code on a worker to read.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.types import Scope

from contract.team import USER_NAME_PATTERN, Role
from service.jobs.ingest_tokens import token_digest
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.storage.tables import utcnow
from service.teams import users
from service.teams.caller import BOOTSTRAP, CALLER, Caller

logger = logging.getLogger("service.auth")
bearer = HTTPBearer(
    auto_error=False, description="SYNCBN_API_TOKEN, or a user's token (POST /v1/users)"
)
AUTHENTICATED = "syncbn.authenticated"
"""The ASGI scope key the middleware sets once a request's token is checked."""
OPEN_PATHS = frozenset({"/healthz", "/", "/openapi.json", "/docs", "/redoc", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
INGEST_PATH = re.compile(r"^/v1/internal/jobs/([^/]+)/events$")
MISSING = "missing bearer token (Authorization: Bearer <token>)"
INVALID = "invalid token"
USER_NAME = re.compile(USER_NAME_PATTERN)
MAX_CACHED = 4096
"""Signed-in tokens (and proxy users) kept in memory; the oldest is dropped past it."""
LAST_USED_EVERY_S = 60.0
"""A token's ``last_used_at`` is written at most this often."""
PROXIED = "proxy:"
"""The cache key prefix of a user named by the trusted proxy (a token's key is its digest)."""


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


@dataclass(frozen=True)
class SignIn:
    """What ``Authenticator.sign_in`` settled: the caller (None: an open path, or a job's
    ingest token), or why the request may not go on (``refusal``, the 401's message)."""

    caller: Caller | None = None
    refusal: str | None = None
    credential: str | None = None
    """What signed the request in: ``INGEST`` (a job's ingest token), ``proxy:<name>`` (the
    trusted proxy's header), else the token's SHA-256: per-credential caps count by it."""


PASS = SignIn()
INGEST = "ingest"
CREDENTIAL = "syncbn.credential"
"""The ASGI scope key of ``SignIn.credential``."""


class TrustedProxy:
    """Single sign-on behind a reverse proxy (``SYNCBN_TRUSTED_PROXY_HEADER``): on a request
    from an address in ``SYNCBN_TRUSTED_PROXIES`` the header names the user; from any other
    address it is ignored (a token is needed as ever)."""

    def __init__(self, header: str, proxies: list[str], role: Role) -> None:
        self.name, self.header = header, header.lower().encode("latin-1")
        self.networks = tuple(ipaddress.ip_network(p, strict=False) for p in proxies)
        self.role = role

    @classmethod
    def of(cls, settings: Settings) -> TrustedProxy | None:
        """The proxy of ``settings`` (None: the setting is off)."""
        if not settings.trusted_proxy_header:
            return None
        header, proxies = settings.trusted_proxy_header, settings.trusted_proxies
        return cls(header, proxies, settings.proxy_user_role)

    def trusts(self, client: tuple[str, int] | list[Any] | None) -> bool:
        """Whether the request's peer address is one of the proxies."""
        try:
            address = ipaddress.ip_address(client[0]) if client else None
        except ValueError:  # a unix socket's peer, a test client's name
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address is not None and any(address in net for net in self.networks)


class Authenticator:
    """Settles who is asking, on a request's headers alone: the service's own token is the
    bootstrap admin; a user's token is found by its SHA-256 (kept in memory once seen, so a
    signed-in request costs a dict lookup); a trusted proxy's header names the user; on a
    job's ingest route, that job's ingest token (one indexed read of its digest).

    Only tokens that sign someone in are kept (at most ``MAX_CACHED``): a stranger's guesses
    cost a read each and no memory. ``forget()`` (every revoke and role change) empties the
    cache, so a revoked token is refused at its very next request. When a token was last used
    is noted in memory at most once a minute per token, and written after the answer has gone
    (``write_last_used``, from the middleware)."""

    def __init__(self, api_token: str, db: Database, proxy: TrustedProxy | None = None) -> None:
        self.api_token, self.db, self.proxy = api_token, db, proxy
        self._callers: dict[str, Caller] = {}
        self._generation = 0
        self._lock = threading.Lock()
        self._noted: dict[str, float] = {}
        self._unwritten: dict[str, datetime] = {}
        self._writing = False

    async def sign_in(self, scope: Scope) -> SignIn:
        """Who the request acts for, or why it may not go on."""
        path = scope["path"]
        if is_open(path):
            return PASS
        authorization = named = None
        proxy_header = self.proxy.header if self.proxy else None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == proxy_header:
                named = value.decode("latin-1").strip()
        given = bearer_token(authorization)
        ingest = INGEST_PATH.match(path)
        if ingest is not None:
            return await self._ingest(ingest.group(1), given)
        if named and self.proxy and self.proxy.trusts(scope.get("client")):
            return await self._proxied(named, self.proxy)
        if given is None:
            return SignIn(refusal=MISSING)
        digest = token_digest(given)
        if _same(self.api_token, given):
            return SignIn(BOOTSTRAP, credential=digest)
        caller = self._callers.get(digest)
        if caller is None:
            generation = self._generation
            caller = await self.db.read(lambda session: users.caller_of_token(session, digest))
            if caller is None:
                return SignIn(refusal=INVALID)
            self._remember(digest, caller, generation)
        self._note_use(digest)
        return SignIn(caller, credential=digest)

    async def _ingest(self, job_id: str, given: str | None) -> SignIn:
        if given is None:
            return SignIn(refusal=MISSING)
        expected = await self.db.read(lambda session: _ingest_digest(session, job_id))
        # no such job, or not handed to Ray yet: no token exists
        if expected and _same(expected, token_digest(given)):
            return SignIn(credential=INGEST)
        return SignIn(refusal=INVALID)

    async def _proxied(self, name: str, proxy: TrustedProxy) -> SignIn:
        if not USER_NAME.fullmatch(name):
            return SignIn(
                refusal=f"the proxy's {proxy.name} header does not name a user: "
                f"{name[:80]!r} is not like alice ({USER_NAME_PATTERN})"
            )
        if name == BOOTSTRAP.name:  # an account of the identity provider's is not the token's
            return SignIn(
                refusal=f"the proxy may not sign in {name}, the user of the service's own "
                "token: an admin promotes a proxy user instead (PATCH /v1/users/{name})"
            )
        key = PROXIED + name
        caller = self._callers.get(key)
        if caller is None:
            generation = self._generation
            caller = await anyio.to_thread.run_sync(self._proxy_user, name, proxy.role)
            if caller is None:
                return SignIn(refusal=f"user {name} is revoked")
            self._remember(key, caller, generation)
        return SignIn(caller, credential=key)

    def _proxy_user(self, name: str, role: Role) -> Caller | None:
        try:
            with self.db.session() as session:
                return users.proxy_caller(session, name, role)
        except IntegrityError:  # first seen by two requests at once: the other one made it
            with self.db.session() as session:
                return users.proxy_caller(session, name, role)

    def _remember(self, key: str, caller: Caller, generation: int) -> None:
        """Keep ``caller`` unless a ``forget()`` came since its read began."""
        with self._lock:
            if generation != self._generation:
                return
            if len(self._callers) >= MAX_CACHED:
                self._callers.pop(next(iter(self._callers)))
            self._callers[key] = caller

    def forget(self) -> None:
        """Forget every signed-in token and proxy user: after a revoke or a role change (called
        once the change is committed)."""
        with self._lock:
            self._callers = {}
            self._generation += 1

    def _note_use(self, digest: str) -> None:
        now = time.monotonic()
        if now - self._noted.get(digest, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
            return
        if len(self._noted) >= MAX_CACHED:
            self._noted.clear()
        self._noted[digest] = now
        if len(self._unwritten) < MAX_CACHED:
            self._unwritten[digest] = utcnow()

    async def write_last_used(self) -> None:
        """Write the tokens' noted uses (at most one writer at a time; a failure is logged and
        the uses are dropped: they are a hint, not a record)."""
        if not self._unwritten or self._writing:
            return
        self._writing = True
        used, self._unwritten = self._unwritten, {}
        try:
            await anyio.to_thread.run_sync(self._write_used, used)
        except Exception:
            logger.exception("could not record when %d API tokens were last used", len(used))
        finally:
            self._writing = False

    def _write_used(self, used: dict[str, datetime]) -> None:
        with self.db.session() as session:
            users.touch_tokens(session, used)


def _ingest_digest(session: Session, job_id: str) -> str | None:
    job = store.get_job(session, job_id)
    return job.ingest_token_sha256 if job is not None else None


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def _signed_in(request: Request) -> Caller | None:
    """The caller the middleware settled; signs the request in when it did not run."""
    scope = request.scope
    if not scope.get(AUTHENTICATED):
        authenticator: Authenticator = request.app.state.authenticator
        outcome = await authenticator.sign_in(scope)
        if outcome.refusal is not None:
            raise _unauthorized(outcome.refusal)
        signed_in(scope, outcome)
    return scope.get(CALLER)


def signed_in(scope: Scope, outcome: SignIn) -> None:
    """Leave who signed the request in (and with what) in its scope."""
    scope[AUTHENTICATED] = True
    scope[CREDENTIAL] = outcome.credential
    if outcome.caller is not None:
        scope[CALLER] = outcome.caller


async def require_api_token(request: Request, credentials: Credentials) -> None:
    """Dependency: an API token (checked by the middleware already; documents the scheme)."""
    await _signed_in(request)


async def current_caller(request: Request, credentials: Credentials) -> Caller:
    """Dependency: who is asking (the middleware settled it from the token or the trusted
    proxy's header)."""
    caller = await _signed_in(request)
    if caller is None:  # a job's ingest token signs in no user
        raise _unauthorized(INVALID)
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
"""A route's ``caller`` parameter: the signed-in user and their role."""


async def require_ingest_token(request: Request, credentials: Credentials) -> None:
    """Dependency: the per-job ingest token of the path's job (401 for an unknown job too,
    and for any other credential)."""
    await _signed_in(request)
    if request.scope.get(CREDENTIAL) != INGEST:
        raise _unauthorized(INVALID)
