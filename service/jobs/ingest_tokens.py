"""A job's ingest token: a random secret made when the job is handed to Ray, given to its Ray
Job only; the service keeps its SHA-256 (``service.api.auth`` checks it on the ingest route)."""

from __future__ import annotations

import hashlib
import secrets


def token_digest(token: str) -> str:
    """What the service keeps of a per-job token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A random secret (32 bytes, URL-safe base64) that does not start with ``-``, which a
    command line (``syncbn --token ...``) would take for an option: the service's own token,
    users' tokens and ingest tokens alike."""
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


def new_ingest_token() -> tuple[str, str]:
    """A fresh per-job ingest token and its digest."""
    token = new_token()
    return token, token_digest(token)
