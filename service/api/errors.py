"""How the domain's refusals (``service.errors``) and FastAPI's validation errors are answered:
the status, and FastAPI's own ``{"detail": ...}`` shape (a 422 lists ``loc``/``msg``/``type``,
naming the field, and the setting of a limit). The disk saying it is full while a request
writes (``ENOSPC``, SQLite's "database or disk is full": ``service.operations.disk.disk_full``)
is the same 507 as a refusal before it (``InsufficientStorage``), not a 500."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from service.errors import (
    ClusterUnavailable,
    Conflict,
    FieldError,
    Forbidden,
    InsufficientStorage,
    NotFound,
    QueueFull,
    ServiceError,
    TooLarge,
)
from service.operations.disk import disk_full
from service.settings import Settings

STATUS: dict[type[ServiceError], int] = {
    Forbidden: status.HTTP_403_FORBIDDEN,
    NotFound: status.HTTP_404_NOT_FOUND,
    Conflict: status.HTTP_409_CONFLICT,
    TooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    QueueFull: status.HTTP_429_TOO_MANY_REQUESTS,
    InsufficientStorage: status.HTTP_507_INSUFFICIENT_STORAGE,
    ClusterUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}


def field_error(field: str, message: str, setting: str | None = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape naming the request body ``field`` (a dotted path), and
    the setting of a limit."""
    if setting:
        message = f"{message} (set by {Settings.env_name(setting)})"
    kind = "limit_exceeded" if setting else "value_error"
    loc = ("body", *(int(p) if p.isdigit() else p for p in field.split(".")))
    return RequestValidationError([{"loc": loc, "msg": message, "type": kind}])


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as strings (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


MAX_ERRORS = 20
"""Errors a 422 lists (a 1 MiB body of unknown fields has tens of thousands); one more entry
says how many were left out."""


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, made safe to encode: it echoes the input, which may hold a NaN (Python's
    JSON parser reads one) that would otherwise turn the answer into a 500; at most
    ``MAX_ERRORS`` errors, so its size does not grow with the body's."""
    errors = list(exc.errors())
    shown = errors[:MAX_ERRORS]
    if len(errors) > MAX_ERRORS:
        left = len(errors) - MAX_ERRORS
        shown.append({"loc": ["body"], "msg": f"and {left} more errors", "type": "too_many_errors"})
    content = {"detail": _json_safe(jsonable_encoder(shown))}
    return JSONResponse(status_code=422, content=content)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    if isinstance(exc, FieldError):
        return await _validation_error(request, field_error(exc.field, str(exc), exc.setting))
    message = str(exc)
    if isinstance(exc, TooLarge):
        message = f"{message} ({Settings.env_name(exc.setting)})"
    code = next(code for kind, code in STATUS.items() if isinstance(exc, kind))
    return JSONResponse(status_code=code, content={"detail": message})


async def _full_disk(request: Request, exc: Exception) -> JSONResponse:
    """A 507 when ``exc`` is the disk saying it is full; any other error goes on (a 500)."""
    if not disk_full(exc):
        raise exc
    meter = request.app.state.services.disk
    doing = f"{request.method} {request.url.path}"
    return await _service_error(request, await run_in_threadpool(meter.full_error, exc, doing))


def install(app: FastAPI) -> None:
    """Answer the domain's errors, FastAPI's validation errors and a full disk as above."""
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(OSError, _full_disk)
    app.add_exception_handler(OperationalError, _full_disk)
