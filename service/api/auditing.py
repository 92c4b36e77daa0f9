"""``AuditMiddleware``: every write and every failed sign-in into the audit log
(``service.teams.audit``), once the answer has gone.

A write is a request under ``/v1/`` other than GET, HEAD and OPTIONS, but a job's own reports
(``/v1/internal/``) and predictions (POSTs that only read). Its entry: the caller (the
``Caller`` the auth middleware left in the scope), the action (the route's operation id, like
``jobs-submit``; else the method and path), the object (the route's kind, like ``job``, and
its path parameters, or for a create the ``Location`` it answers with), the status, and for a
refusal its message, else what the route says it changed (``AUDIT_DETAIL``) or the new
object's ``Location``. A 401 (no one signed in) on any path, and a write refused before sign-in,
are counted per client address and minute instead.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import operation_id, singular
from service.api.middleware import SAFE_METHODS
from service.teams.audit import AUDIT_DETAIL, SIGN_IN, AuditLog, Entry
from service.teams.caller import CALLER, Caller

logger = logging.getLogger("service.audit")
READ_ONLY_POSTS = re.compile(r"^/v1/jobs/[^/]+/predict(/images)?$")
"""The POSTs that only read: a model's predictions."""
REFUSED = "refused"
"""The action of a write refused before sign-in (the Host or Origin check), whatever its path:
one counted row per address, status and minute."""
MAX_BODY_KEPT = 4096
"""Bytes of a refusal's answer read for its message."""


def is_write(method: str, path: str) -> bool:
    """Whether the request changes something (and so is audited)."""
    return (
        method not in SAFE_METHODS
        and path.startswith("/v1/")
        and not path.startswith("/v1/internal/")
        and not (method == "POST" and READ_ONLY_POSTS.match(path))
    )


@dataclass(frozen=True)
class Operation:
    """A route as the OpenAPI document has it: its operation id, the kind of object it serves
    (its tag, singular) and its path as a pattern."""

    id: str
    kind: str | None
    method: str
    pattern: re.Pattern[str]


def operations(openapi: dict[str, Any]) -> list[Operation]:
    """Every operation of an OpenAPI document."""
    found = []
    for template, methods in openapi.get("paths", {}).items():
        parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
        regex = "".join(
            re.escape(part) if n % 2 == 0 else f"(?P<{part}>[^/]+)" for n, part in enumerate(parts)
        )
        for method, operation in methods.items():
            tags = operation.get("tags") or []
            kind = singular(str(tags[0])) if tags else None
            found.append(
                Operation(operation["operationId"], kind, method.upper(), re.compile(regex + "$"))
            )
    return found


class AuditMiddleware:
    """Records writes and failed sign-ins in ``audit`` after the answer; ``openapi``: the
    app's OpenAPI document (what names an action and its object, routed or refused before)."""

    def __init__(
        self, app: ASGIApp, audit: AuditLog, openapi: Callable[[], dict[str, Any]]
    ) -> None:
        self.app, self.audit, self.openapi = app, audit, openapi
        self._operations: list[Operation] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        write = is_write(scope["method"], scope["path"])
        answer = _Answer(send, keep_body=write)
        try:
            await self.app(scope, receive, answer.send)
        except Exception:
            if write:
                await self._record(scope, answer.status or 500, answer)
            raise
        if answer.status is not None and (write or answer.status == 401):
            await self._record(scope, answer.status, answer)

    async def _record(self, scope: Scope, status: int, answer: _Answer) -> None:
        try:
            await self._entry(scope, status, answer)
        except Exception:  # never the request's failure
            logger.exception("could not audit %s %s", scope["method"], scope["path"])

    async def _entry(self, scope: Scope, status: int, answer: _Answer) -> None:
        caller: Caller | None = scope.get(CALLER)
        address = scope["client"][0] if scope.get("client") else "unknown"
        if status == 401:
            await self.audit.count(address, SIGN_IN, status)
            return
        if caller is None:  # refused before sign-in (the Host or Origin check)
            await self.audit.count(address, REFUSED, status)
            return
        path = scope["path"]
        action, kind, ident = self._operation(scope)
        location = answer.location
        if location and location.startswith(path + "/"):
            created = location[len(path) + 1 :]
            ident = f"{ident}/{created}" if ident else created
        detail = answer.message() if status >= 400 else scope.get(AUDIT_DETAIL) or location
        await self.audit.record(Entry(caller.name, action, kind, ident, status, detail))

    def _operation(self, scope: Scope) -> tuple[str, str | None, str | None]:
        """The request's operation id, object kind and object id (its path parameters). A
        request refused before routing (a body too large, a gate full, a foreign Host) is
        looked up in the OpenAPI document (made once, when first needed)."""
        route = scope.get("route")
        if isinstance(route, APIRoute):
            kind = singular(str(route.tags[0])) if route.tags else None
            params = "/".join(str(v) for v in scope.get("path_params", {}).values())
            return operation_id(route), kind, params or None
        method, path = scope["method"], scope["path"]
        if self._operations is None:
            self._operations = operations(self.openapi())
        for operation in self._operations:
            match = operation.pattern.match(path)
            if match and operation.method == method:
                return operation.id, operation.kind, "/".join(match.groups()) or None
        return f"{method} {path}", None, None


class _Answer:
    """What the app answered: its status, ``Location`` and (a refusal's) first bytes."""

    def __init__(self, send: Send, keep_body: bool) -> None:
        self._send, self.keep_body = send, keep_body
        self.status: int | None = None
        self.location: str | None = None
        self.body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for key, value in message.get("headers", []):
                if key.lower() == b"location":
                    self.location = value.decode("latin-1")
        elif (
            message["type"] == "http.response.body"
            and self.keep_body
            and (self.status or 0) >= 400
            and len(self.body) < MAX_BODY_KEPT
        ):
            self.body += message.get("body", b"")[: MAX_BODY_KEPT - len(self.body)]
        await self._send(message)

    def message(self) -> str | None:
        """A refusal's message: its ``detail``, or a 422's first errors (field: message)."""
        try:
            detail = json.loads(self.body)["detail"]
        except (ValueError, KeyError, TypeError):
            return None
        if isinstance(detail, list):
            return "; ".join(_field_error(e) for e in detail[:3]) or None
        return str(detail)


def _field_error(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    field = ".".join(str(part) for part in error.get("loc", [])[1:])
    return f"{field}: {error.get('msg')}" if field else str(error.get("msg"))
