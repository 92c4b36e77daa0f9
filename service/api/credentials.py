"""The API token: there is always one, and a weak one never guards a network listener.

- ``SYNCBN_API_TOKEN`` set: that is the token.
- unset: a random token is made on first start into ``$SYNCBN_HOME/api-token`` (mode 0600,
  created atomically, so two processes starting at once agree on one), and reused later. The
  CLI on the same machine reads it there; ``python -m service`` prints a login link that
  carries it in the URL fragment (never sent to a server, so never in an access log).
- ``check_exposure``: listening beyond loopback needs ``SYNCBN_API_TOKEN`` itself (an
  operator's secret, not a file in a volume nor a line in a container log), of at least
  ``MIN_TOKEN_LENGTH`` characters and not a placeholder; otherwise the service refuses to start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from contract.layout import read_token_file
from service.jobs.ingest_tokens import new_token
from service.settings import Settings

MIN_TOKEN_LENGTH = 24
PLACEHOLDERS = ("replace-me", "replace_me", "changeme", "change-me", "placeholder", "example")
"""Parts of the values shipped in example files (``REPLACE-ME-api-token``...)."""
MIN_DISTINCT_CHARACTERS = 8


class UnsafeStart(RuntimeError):
    """The settings would expose the service without a real token; the message says why."""


def write_secret_once(path: Path, value: str) -> str:
    """Create ``path`` (mode 0600) holding ``value`` unless it exists; the file's content.

    Atomic: the value is written and flushed to disk in a private temporary file, then linked
    into place, which fails if another process got there first (its value wins, whole).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path.read_text().strip()


def ensure_api_token(settings: Settings) -> str:
    """``settings.api_token``, else the token file's, made on first use; sets it on
    ``settings`` and returns it."""
    if not settings.api_token:
        path = settings.api_token_file
        settings.api_token = read_token_file(path) or write_secret_once(path, new_token())
    return settings.api_token


def weakness(token: str) -> str | None:
    """Why ``token`` cannot guard a network listener (None: it can)."""
    lowered = token.lower()
    if any(word in lowered for word in PLACEHOLDERS):
        return "it is the placeholder of an example file"
    if len(token) < MIN_TOKEN_LENGTH:
        return f"it has {len(token)} characters, fewer than {MIN_TOKEN_LENGTH}"
    if len(set(token)) < MIN_DISTINCT_CHARACTERS:
        return f"it has fewer than {MIN_DISTINCT_CHARACTERS} distinct characters"
    return None


def check_exposure(settings: Settings) -> None:
    """Raise ``UnsafeStart`` when the service would listen beyond loopback without a real
    ``SYNCBN_API_TOKEN``."""
    if settings.loopback_only:
        return
    advice = (
        "set SYNCBN_API_TOKEN to a random secret, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(32))' "
        "(or listen on 127.0.0.1 only: SYNCBN_HOST=127.0.0.1)"
    )
    where = f"listening on {settings.host}, reachable beyond this machine"
    if not settings.api_token:
        raise UnsafeStart(f"refusing to start: {where}, without SYNCBN_API_TOKEN: {advice}")
    if reason := weakness(settings.api_token):
        raise UnsafeStart(
            f"refusing to start: {where}, with a weak SYNCBN_API_TOKEN ({reason}): {advice}"
        )


def login_url(settings: Settings, token: str) -> str:
    """The page's address with the token in its fragment (the page stores it, then drops it)."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}/#token={token}"
