"""The one flow of an upload (a dataset or a code bundle), and its deletion.

1. ``stage``: the request body is streamed to a private folder beside the final place, in
   chunks, with a byte limit (``TooLarge`` naming the setting) and a digest, and flushed;
2. the caller validates and converts it there (a dataset is decoded and checked, a bundle
   unpacked), raising ``FieldError`` on the ``file`` field;
3. ``publish_then_record``: the result is flushed and renamed into place, then its row is
   inserted; if the insert fails the file goes again (no file without its row). The staging
   folder goes in every case. The bytes it stores (the decoded ``.npz``, the unpacked bundle:
   not the bytes sent) are checked against the room on the disk first (507), and counted
   once published, by the request's ``DISK_METER`` (set by the disk guard).

``delete_upload`` removes a row, then its files: 404 when unknown, 409 while a job that is not
over uses it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from sqlalchemy.orm import Session

from service.errors import Conflict, NotFound, TooLarge
from service.files.housekeeping import publish
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.storage.tables import CodeBundle, Dataset
from service.teams.access import check_create, check_write
from service.teams.caller import Caller
from service.teams.quotas import check_upload_quota

CHUNK = 1 << 20
STAGING_PREFIX = ".upload-"
"""Staging folders are named so (``housekeeping.sweep`` removes those a crash left)."""
RECORDING = threading.Lock()
"""Held from an upload's quota check to its row's commit: two uploads at once never both pass
the check on the same use (the service is one process)."""


class Meter(Protocol):
    """The disk of ``$SYNCBN_HOME`` (``service.operations.disk.DiskMeter``)."""

    def check_room(self, what: str, incoming: int = 0) -> None: ...

    def added(self, size: int) -> None: ...


DISK_METER: ContextVar[Meter | None] = ContextVar("disk_meter", default=None)
"""The meter an upload of this request checks its stored bytes with before it is published
(``InsufficientStorage``: 507) and reports them to after (set by
``service.api.middleware.DiskGuardMiddleware``)."""


@dataclass(frozen=True)
class Staged:
    """A received upload: the file, its size and SHA-256, and a private scratch folder."""

    path: Path
    size: int
    sha256: str
    scratch: Path


def receive(source: BinaryIO, target: Path, limit: int, setting: str) -> tuple[int, str]:
    """Copy ``source`` to ``target`` and flush it; (bytes, sha256 hex). ``TooLarge`` past
    ``limit`` bytes, naming the ``setting`` that sets it."""
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"upload larger than {limit} bytes", setting)
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


@contextmanager
def stage(source: BinaryIO, folder: Path, limit: int, setting: str) -> Iterator[Staged]:
    """Receive ``source`` into a new staging folder in ``folder`` (removed on exit)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=STAGING_PREFIX) as scratch:
        path = Path(scratch) / "upload"
        size, sha256 = receive(source, path, limit, setting)
        yield Staged(path, size, sha256, Path(scratch))


def check_uploader(db: Database, settings: Settings, caller: Caller, size: int = 1) -> None:
    """``Forbidden`` unless ``caller`` may upload; ``FieldError`` on ``file`` when ``size``
    more bytes would put them over their upload quota (before the body: 1 byte)."""
    check_create(caller, "upload files")
    with db.session() as session:
        check_upload_quota(session, settings, caller.name, size)


def publish_then_record(
    built: Path, final: Path, db: Database, row: Dataset | CodeBundle, settings: Settings
) -> None:
    """Move ``built`` (a file or a folder) to ``final`` durably, then insert its ``row`` if
    its owner's upload quota allows it (checked and inserted under ``RECORDING``); remove
    ``final`` again if that fails. The request's ``DISK_METER`` checks there is room for it
    first, and counts it once published."""
    meter = DISK_METER.get()
    stored = stored_bytes(built)
    if meter is not None:
        meter.check_room("an upload", stored)
    publish(built, final)
    try:
        with RECORDING, db.session() as session:
            check_upload_quota(session, settings, row.owner, row.size_bytes)
            store.add_row(session, row)
    except BaseException:
        if final.is_dir():
            shutil.rmtree(final, ignore_errors=True)
        else:
            final.unlink(missing_ok=True)
        raise
    if meter is not None:
        meter.added(stored)


def stored_bytes(path: Path) -> int:
    """The bytes ``path`` (a file, or a folder and what it holds) takes on disk."""
    paths = [path] if not path.is_dir() else [path, *path.rglob("*")]
    return sum(item.lstat().st_blocks * 512 for item in paths)


def new_id(prefix: str) -> str:
    """A server-made id, e.g. ``ds-3f9c0e1a2b4d``."""
    return f"{prefix}-{secrets.token_hex(6)}"


def safe_name(filename: str | None, fallback: str) -> str:
    """The uploaded file's base name, as the user knows it (at most 255 characters)."""
    return os.path.basename(filename or fallback)[:255]


@dataclass(frozen=True)
class UploadKind:
    """What is deleted for an upload: its row (``get``) and files (``remove``)."""

    what: str
    spec_key: str
    """The JobSpec field that names it (jobs using it block the deletion)."""
    get: Callable[[Session, str], Any]
    remove: Callable[[str], None]


def delete_upload(db: Database, kind: UploadKind, ident: str, caller: Caller) -> None:
    """Delete an upload's row, then its files (``NotFound``; ``Forbidden`` unless ``caller``
    may; ``Conflict`` while a job that is not over uses it)."""
    with db.session() as session:
        row = kind.get(session, ident)
        if row is None:
            raise NotFound(kind.what, ident)
        check_write(caller, kind.what, ident, row.owner)
        users = [job.id for job in store.jobs_using(session, kind.spec_key, ident)]
        if users:
            shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
            raise Conflict(
                f"{kind.what} {ident} is used by {len(users)} job(s) not over yet ({shown}): "
                "cancel them or wait for them to end"
            )
        store.delete_row(session, row)
    kind.remove(ident)
