"""The audit log: every write, who did it, what, to which object, when, and the outcome (the
HTTP status, refusals included); ``service.api.auditing`` feeds it from every answer.

- A signed-in caller's write is one row (one INSERT, after the answer has gone).
- A request of no one signed in (a 401, or a write refused before sign-in, e.g. by the Host
  check) is counted: one row per client address, action, status and minute, its ``count``
  raised by each repeat, so a flood costs one row per address and minute, not one per request.
  Past ``MAX_COUNTED`` keys in a minute the rest share the address ``*``. The token of a
  failed sign-in is never kept.

Writing never fails a request: an error is logged and the request goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

import anyio.to_thread
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from contract.team import AuditList, AuditOut
from service.operations.disk import disk_full
from service.storage.db import Database
from service.storage.tables import AuditEntry, utcnow

logger = logging.getLogger("service.audit")
SIGN_IN = "sign-in"
"""The action of a failed sign-in (a 401)."""
PROXY_CREATE = "users-create-by-proxy"
"""The action of a user made when a trusted proxy first names them."""
CLIENT = "client"
"""The object kind of counted rows: their object is the client's address."""
MANY = "*"
"""The address counted rows share past ``MAX_COUNTED`` keys in a minute."""
AUDIT_DETAIL = "syncbn.audit_detail"
"""The request scope's key where a route leaves what its write changed (e.g. a user's role and
quotas, before and after) for its audit entry."""
MAX_COUNTED = 4096
MAX_DETAIL = 500


@dataclass(frozen=True)
class Entry:
    """One write and its outcome."""

    actor: str | None
    action: str
    object_kind: str | None
    object_id: str | None
    status: int
    detail: str | None = None

    def row(self, count: int = 1) -> AuditEntry:
        """The row, each field cut to its column's size (an unknown path may be long)."""
        return AuditEntry(
            at=utcnow(),
            actor=_cut(self.actor, 64),
            action=_cut(self.action, 48) or "?",
            object_kind=_cut(self.object_kind, 16),
            object_id=_cut(self.object_id, 128),
            status=self.status,
            detail=_cut(self.detail, MAX_DETAIL),
            count=count,
        )


def _cut(text: str | None, size: int) -> str | None:
    return text if text is None or len(text) <= size else text[: size - 1] + "…"


CountKey = tuple[int, str, str, int]
"""(minute, address, action, status) of a counted row."""


class AuditLog:
    """Appends entries to the ``audit`` table, off the request's answer."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._minute = -1
        self._rows: dict[CountKey, int] = {}
        """This minute's counted rows by key: their ids."""
        self._pending: dict[CountKey, int] = {}
        self._writing = False

    async def record(self, entry: Entry) -> None:
        """One row for a signed-in caller's write."""
        try:
            await anyio.to_thread.run_sync(self._insert, entry)
        except Exception as exc:
            if not disk_full(exc):
                logger.exception("could not write the audit entry %s", entry)
            else:  # one line per refused write while full, not a traceback
                logger.warning("could not write the audit entry %s: the disk is full", entry)

    def _insert(self, entry: Entry) -> None:
        with self.db.session() as session:
            session.add(entry.row())

    async def count(self, address: str, action: str, status: int) -> None:
        """Count a request of no one signed in from ``address`` (one writer at a time: what
        comes meanwhile is added to the next write)."""
        minute = int(time.time() // 60)
        if minute != self._minute:
            self._minute, self._rows = minute, {}
        key = (minute, address, action, status)
        if (
            key not in self._rows
            and key not in self._pending
            and len(self._rows) + len(self._pending) >= MAX_COUNTED
        ):
            key = (minute, MANY, action, status)
        self._pending[key] = self._pending.get(key, 0) + 1
        if self._writing:
            return
        self._writing = True
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                known = {key: self._rows.get(key) for key in batch}
                made = await anyio.to_thread.run_sync(self._write_counts, batch, known)
                self._rows.update({k: v for k, v in made.items() if k[0] == self._minute})
        except Exception:
            logger.exception("could not write the audit log's count of failed sign-ins")
        finally:
            self._writing = False

    def _write_counts(
        self, batch: dict[CountKey, int], known: dict[CountKey, int | None]
    ) -> dict[CountKey, int]:
        """Add ``batch`` to the rows ``known``, or to new rows: their ids."""
        made: dict[CountKey, int] = {}
        with self.db.session() as session:
            for key, n in batch.items():
                row_id = known.get(key)
                if row_id is not None:
                    session.execute(
                        update(AuditEntry)
                        .where(AuditEntry.id == row_id)
                        .values(count=AuditEntry.count + n)
                    )
                    continue
                _minute, address, action, status = key
                row = Entry(None, action, CLIENT, address, status).row(count=n)
                session.add(row)
                session.flush()
                made[key] = row.id
        return made


@dataclass(frozen=True)
class AuditQuery:
    """A page of the log, newest first, with optional filters."""

    limit: int = 50
    offset: int = 0
    actor: str | None = None
    action: str | None = None
    object_id: str | None = None
    status: int | None = None
    since: datetime | None = None

    def page(self, session: Session) -> AuditList:
        conditions = [
            column == value
            for column, value in (
                (AuditEntry.actor, self.actor),
                (AuditEntry.action, self.action),
                (AuditEntry.object_id, self.object_id),
                (AuditEntry.status, self.status),
            )
            if value is not None
        ]
        if self.since is not None:
            conditions.append(AuditEntry.at >= self.since)
        total = session.scalar(select(func.count()).select_from(AuditEntry).where(*conditions))
        rows = session.scalars(
            select(AuditEntry)
            .where(*conditions)
            .order_by(AuditEntry.id.desc())
            .limit(self.limit)
            .offset(self.offset)
        )
        return AuditList(
            entries=[AuditOut.model_validate(r) for r in rows],
            total=total or 0,
            limit=self.limit,
            offset=self.offset,
        )
