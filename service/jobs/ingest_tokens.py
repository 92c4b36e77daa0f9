"""A job's ingest token: a random secret made when the job is handed to Ray, given to its Ray
Job only; the service keeps its SHA-256 (``service.api.auth`` checks it on the ingest route)."""

from __future__ import annotations

import hashlib
import secrets


def token_digest(token: str) -> str:
    """What the service keeps of a per-job token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_ingest_token() -> tuple[str, str]:
    """A fresh per-job ingest token and its digest."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)
