"""Guards every request passes before a route sees it (pure ASGI, so streams pass untouched).

- ``HostOriginMiddleware``: the ``Host`` must be a name this service answers to (DNS
  rebinding: a web page whose name suddenly resolves to 127.0.0.1 still sends its own name),
  and a state-changing request must come from the page itself, not from another site
  (``Sec-Fetch-Site``, else ``Origin`` against ``Host``, as Go's CrossOriginProtection and
  Jupyter do). ``/healthz`` is exempt: orchestrators probe it by IP, and it carries no data.
- ``AuthMiddleware``: the token (``service.api.auth.Authenticator``), checked on the headers
  alone: a request without the right one is a 401 before a slot is taken or a byte of its body
  is read.
- ``RequestLimitsMiddleware``: per route, a body limit (413, by ``Content-Length`` up front or
  while a chunked body streams), a deadline for the body to arrive (408, its slot freed) and a
  cap on heavy requests served at once (429 with ``Retry-After``), answered before the body is
  read.
- ``DiskGuardMiddleware``: an upload, a new job or a new study is a 507 while the disk of
  ``$SYNCBN_HOME`` has no room (``service.operations.disk``), before its body is read (an
  upload without ``Content-Length`` counted at its route's limit); what an upload stores is
  checked before it is published, and counted once it is.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.layout import LOOPBACK_NAMES
from service.api.auth import Authenticator, signed_in
from service.errors import InsufficientStorage
from service.files.uploads import DISK_METER
from service.operations.disk import DiskMeter
from service.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HOST_EXEMPT = frozenset({"/healthz"})
RETRY_AFTER_S = 2


async def send_error(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    """A JSON ``{"detail": ...}`` answer, as FastAPI's own errors look."""
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *extra],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


def host_name(host: str) -> str:
    """The name part of a ``Host`` header (no port, no IPv6 brackets, lower case)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class HostPolicy:
    """Which ``Host`` names the service answers to: loopback names always, the public URL's
    host, the listening address when it is a specific one, and ``SYNCBN_ALLOWED_HOSTS``
    (``*``: any); and any IP address, which no DNS rebinding can produce (a page that reaches
    the service by its address is on that address's origin, not on an attacker's)."""

    def __init__(self, settings: Settings) -> None:
        extra = set(settings.allowed_hosts)
        self.any = "*" in extra
        self.trusted = frozenset(extra - {"*"})
        names = set(LOOPBACK_NAMES) | self.trusted
        if settings.public_url:
            names.add(host_name(urlsplit(settings.public_url).netloc))
        if settings.host not in ("0.0.0.0", "::", ""):
            names.add(host_name(settings.host))
        self.names = frozenset(names)

    def allows_host(self, host: str) -> bool:
        name = host_name(host)
        return self.any or name in self.names or _is_address(name)

    def allows_origin(self, origin: str, host: str) -> bool:
        """Same origin as the page (the ``Origin``'s host and port are the ``Host``), or an
        origin whose name the operator trusts (``SYNCBN_ALLOWED_HOSTS``)."""
        parts = urlsplit(origin)
        if origin == "null" or not parts.netloc:
            return False
        return parts.netloc.lower() == host.strip().lower() or (
            host_name(parts.netloc) in self.trusted
        )


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostOriginMiddleware:
    """403 for a foreign ``Host``, and for a state-changing request from another site."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in HOST_EXEMPT:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if not self.policy.allows_host(host):
            await send_error(
                send,
                403,
                f"this service does not answer to the host name {host_name(host)!r} (DNS "
                "rebinding guard): use 127.0.0.1 or localhost, or add the name to "
                "SYNCBN_ALLOWED_HOSTS",
            )
            return
        if scope["method"] not in SAFE_METHODS and (reason := self._cross_site(headers, host)):
            await send_error(send, 403, f"cross-site request refused: {reason}")
            return
        await self.app(scope, receive, send)

    def _cross_site(self, headers: dict[str, str], host: str) -> str | None:
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site is {site!r}"
        origin = headers.get("origin")
        if origin is not None and not self.policy.allows_origin(origin, host):
            return f"Origin {origin!r} is not this service's"
        return None


class AuthMiddleware:
    """401 for a request without the token its path needs, on its headers alone; else the
    caller in ``scope[CALLER]``, and, once the answer has gone, the tokens' last uses written."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app, self.authenticator = app, authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        outcome = await self.authenticator.sign_in(scope)
        if outcome.refusal is not None:
            await send_error(
                send, 401, outcome.refusal, {"WWW-Authenticate": "Bearer", "Connection": "close"}
            )
            return
        signed_in(scope, outcome)
        await self.app(scope, receive, send)
        await self.authenticator.write_last_used()


@dataclass(frozen=True)
class RouteLimits:
    """A route's body limit (bytes, and the setting that sets it), the time its body may take
    to arrive (seconds, and its setting) and its concurrency gate."""

    body_bytes: int
    setting: str
    gate: str | None = None
    body_timeout_s: float = 10.0
    timeout_setting: str = "body_timeout_s"


class Gate:
    """At most ``limit`` requests inside at once (the event loop is the only caller)."""

    def __init__(self, name: str, limit: int, setting: str) -> None:
        self.name, self.limit, self.setting, self.inside = name, limit, setting, 0

    def enter(self) -> bool:
        if self.inside >= self.limit:
            return False
        self.inside += 1
        return True

    def leave(self) -> None:
        self.inside -= 1


class RequestLimitsMiddleware:
    """``limits_for(method, path)`` gives each request's ``RouteLimits``; ``gates`` by name."""

    def __init__(
        self,
        app: ASGIApp,
        limits_for: Callable[[str, str], RouteLimits],
        gates: dict[str, Gate],
    ) -> None:
        self.app, self.limits_for, self.gates = app, limits_for, gates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        limits = self.limits_for(scope["method"], scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            await send_error(send, 400, "Content-Length must be a decimal byte count")
            return
        if length is not None and int(length) > limits.body_bytes:
            await _too_large(send, limits)
            return
        gate = self.gates[limits.gate] if limits.gate else None
        if gate is not None and not gate.enter():
            await send_error(
                send,
                429,
                f"{gate.inside} {gate.name} requests are being served, the most at once "
                f"({Settings.env_name(gate.setting)}={gate.limit}): retry in a moment",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
            return
        try:
            await self._counted(scope, receive, send, limits)
        finally:
            if gate is not None:
                gate.leave()

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limits: RouteLimits):
        """Count the body as the route reads it; past the limit (413) or the deadline (408),
        answer and tell the route the client left (so it stops), dropping whatever it answers
        after that."""
        seen, started, refused, complete = 0, False, False, False
        deadline = time.monotonic() + limits.body_timeout_s

        async def refuse(answer: Callable[[], Any]) -> Message:
            nonlocal started, refused
            refused = True
            if not started:
                started = True
                await answer()
            return {"type": "http.disconnect"}

        async def counting_receive() -> Message:
            nonlocal seen, complete
            if refused:
                return {"type": "http.disconnect"}
            if complete:  # the body is in: what comes now is the client leaving, whenever
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                return await refuse(lambda: _too_slow(send, limits))
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > limits.body_bytes:
                    return await refuse(lambda: _too_large(send, limits))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, guarded_send)


async def _too_slow(send: Send, limits: RouteLimits) -> None:
    await send_error(
        send,
        408,
        f"the request body did not arrive within {limits.body_timeout_s:g} s, the deadline of "
        f"this route ({Settings.env_name(limits.timeout_setting)})",
        {"Connection": "close"},
    )


async def _too_large(send: Send, limits: RouteLimits) -> None:
    await send_error(
        send,
        413,
        f"request body larger than {limits.body_bytes} bytes, the limit of this route "
        f"({Settings.env_name(limits.setting)})",
        {"Connection": "close"},
    )


DISK_GUARDED = {
    "/v1/datasets": "an upload",
    "/v1/code": "an upload",
    "/v1/jobs": "a new job",
    "/v1/studies": "a new study",
}
"""The ``POST`` paths that add data under ``$SYNCBN_HOME``, and what each adds."""
UPLOAD_LIMITS = {"/v1/datasets": "max_upload_bytes", "/v1/code": "max_code_bytes"}
"""The setting that bounds an upload of each path: what one without ``Content-Length`` (a
chunked body) is counted as before it is read."""


class DiskGuardMiddleware:
    """507 before the body of a request that adds data under ``$SYNCBN_HOME`` (an upload, a new
    job or study) while its disk has no room (``service.operations.disk.DiskMeter``): past the
    budget, the file system full, or too full for the upload's ``Content-Length`` (without one,
    a chunked body, for its route's limit). What an upload stores (a decoded ``.npz``, an
    unpacked bundle: it may be larger than the bytes sent) is checked again before it is
    published, and counted once it is (``service.files.uploads.DISK_METER``), until the next
    walk of the home."""

    def __init__(self, app: ASGIApp, meter: DiskMeter) -> None:
        self.app, self.meter = app, meter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        what = DISK_GUARDED.get(scope["path"]) if scope["type"] == "http" else None
        if what is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        what, incoming = self._incoming(scope, what)
        try:
            if self.meter.fresh:  # a statvfs: inline
                self.meter.check_room(what, incoming)
            else:  # may walk the home
                await run_in_threadpool(self.meter.check_room, what, incoming)
        except InsufficientStorage as exc:
            await send_error(send, 507, str(exc), {"Connection": "close"})
            return
        token = DISK_METER.set(self.meter)
        try:
            await self.app(scope, receive, send)
        finally:
            DISK_METER.reset(token)

    def _incoming(self, scope: Scope, what: str) -> tuple[str, int]:
        """What the request adds, and the bytes counted for it before its body is read: an
        upload's ``Content-Length``, else its route's limit."""
        setting = UPLOAD_LIMITS.get(scope["path"])
        if setting is None:
            return what, 0
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit():
            return what, int(length)
        limit = getattr(self.meter.settings, setting)
        return (
            f"{what} without Content-Length (counted as {Settings.env_name(setting)}={limit})",
            limit,
        )
