"""The disk of ``$SYNCBN_HOME``: what it holds, the room left, and a 507 when there is none.

- ``DiskMeter.state()``: the bytes under the home on disk (a walk of at most ``MAX_ENTRIES``
  entries, no link followed, allocated blocks, a hard-linked file once, ``runs/`` last; reused
  for ``SYNCBN_DISK_CHECK_INTERVAL_S``), the file system's free space
  (``shutil.disk_usage``: one ``statvfs``, every time), the budget
  (``SYNCBN_DISK_BUDGET_BYTES``) and the level: ``ok``, ``warning`` from ``WARN_AT`` (90 %) of
  the budget or of the file system, ``full`` at 100 % of the budget, or when the file system's
  free space is under its reserve (``reserve_bytes``: kept for the database, which records
  the running jobs' reports). A change of level is logged (a warning at 90 %).
- ``DiskMeter.check_room(what, incoming)``: ``InsufficientStorage`` (507) when full, or when
  ``incoming`` more bytes would make it so: before an upload's body is read and before a job
  or a study is queued (``service.api.middleware.DiskGuardMiddleware``). Reads, cancels and
  deletes are never refused.
- ``disk_full(exc)``: whether an error is the disk saying it is full (``ENOSPC``, ``EDQUOT``,
  SQLite's "database or disk is full", PostgreSQL's 53100 ``disk_full``);
  ``DiskMeter.full_error`` makes it the same 507 (``service.api.errors``).
- ``usage``: the bytes by kind and by owner (``GET /v1/admin/usage``); ``DiskCollector``: the
  ``syncbn_disk_*`` gauges of ``/metrics``.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prometheus_client.core import GaugeMetricFamily

from service.errors import InsufficientStorage
from service.jobs.logs import LOG_FILE
from service.settings import Settings

logger = logging.getLogger("service.operations.disk")

KINDS = ("database", "datasets", "code", "runs", "logs", "other")
"""What the home's bytes are counted as: the SQLite database (with its WAL), uploaded
datasets, code bundles, runs (checkpoints, model files, statistics), logs (jobs' kept logs,
the embedded Ray head's), and the rest."""
MAX_ENTRIES = 2_000_000
"""Entries one walk of the home looks at, at most (then its figures are lower bounds)."""
WARN_AT = 0.9
"""The share of the budget (or of the file system) from which the disk is ``warning``."""
RESERVE_SHARE, RESERVE_MAX = 0.01, 256 << 20
"""The file system's free bytes kept for the database: 1 % of it, at most 256 MiB."""
SETTING = "disk_budget_bytes"
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
Level = Literal["ok", "warning", "full"]


def human(size: float) -> str:
    """``1288490188`` -> ``1.2 GiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError  # pragma: no cover


def reserve_bytes(filesystem_bytes: int) -> int:
    """The free bytes of a file system of ``filesystem_bytes`` kept for the database."""
    return min(int(filesystem_bytes * RESERVE_SHARE), RESERVE_MAX)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or the database driver's error it wraps) says the disk is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return True
        orig = getattr(current, "orig", None)  # SQLAlchemy's DBAPIError
        for error in (current, orig):
            if error is None:
                continue
            if getattr(error, "sqlstate", None) == "53100":  # PostgreSQL disk_full
                return True
            if "database or disk is full" in str(error):  # SQLite's SQLITE_FULL
                return True
        current = current.__cause__ or current.__context__
    return False


@dataclass(frozen=True)
class Walk:
    """One walk of the home: its bytes on disk (allocated blocks, folders included) in all,
    by kind, and by the top entry of ``datasets/``, ``code/`` and ``runs/`` (an id)."""

    total: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    by_entry: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    entries: int = 0
    complete: bool = True
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _kind(parts: tuple[str, ...]) -> tuple[str, tuple[str, str] | None]:
    """The kind of the home's entry at ``parts`` (its path under the home), and the top
    entry it belongs to (``("runs", job_id)``...)."""
    top = parts[0]
    if top.startswith("syncbn.db"):  # with -wal and -shm
        return "database", None
    if top in ("datasets", "code", "runs") and len(parts) > 1:
        name = parts[1].removesuffix(".npz") if top == "datasets" else parts[1]
        if top == "runs" and parts[2:] == (LOG_FILE,):
            return "logs", (top, name)
        return top, (top, name)
    if top in ("datasets", "code", "runs"):
        return top, None
    if top == "ray" and parts[-1].endswith(".log"):
        return "logs", None
    return "other", None


def walk(home: Path, limit: int = MAX_ENTRIES) -> Walk:
    """The bytes under ``home`` on disk (no link followed; at most ``limit`` entries looked
    at). A file's allocated blocks count, not its size (a sparse file takes little), and a
    file with several hard links once. Breadth first, ``runs/`` last: the folders the service
    writes (the database, ``datasets/``, ``code/``) are counted before the jobs' output, so a
    job with millions of files cannot leave them uncounted."""
    by_kind = dict.fromkeys(KINDS, 0)
    by_entry: dict[tuple[str, str], dict[str, int]] = {}
    entries, complete = 0, True
    linked: set[tuple[int, int]] = set()
    service: deque[tuple[str, tuple[str, ...]]] = deque([(str(home), ())])
    jobs: deque[tuple[str, tuple[str, ...]]] = deque()
    while (service or jobs) and complete:
        folder, where = (service or jobs).popleft()
        try:
            listing = os.scandir(folder)
        except OSError:
            continue
        with listing:
            for entry in listing:
                if entries == limit:
                    complete = False
                    break
                entries += 1
                parts = (*where, entry.name)
                try:
                    info = entry.stat(follow_symlinks=False)
                    if entry.is_dir(follow_symlinks=False):
                        (jobs if parts[0] == "runs" else service).append((entry.path, parts))
                except OSError:
                    continue
                if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                    if (info.st_dev, info.st_ino) in linked:
                        continue
                    linked.add((info.st_dev, info.st_ino))
                size = getattr(info, "st_blocks", 0) * 512
                kind, top = _kind(parts)
                by_kind[kind] += size
                if top is not None:
                    kinds = by_entry.setdefault(top, {})
                    kinds[kind] = kinds.get(kind, 0) + size
    return Walk(sum(by_kind.values()), by_kind, by_entry, entries, complete)


@dataclass(frozen=True)
class DiskState:
    """The home's bytes against its budget and its file system, at one moment."""

    home: Path
    used: int
    budget: int | None
    free: int
    filesystem: int
    walk: Walk

    @property
    def reserve(self) -> int:
        return reserve_bytes(self.filesystem)

    @property
    def limit(self) -> int:
        """What the home may use: its budget, else what it uses plus the free space."""
        return self.budget if self.budget is not None else self.used + self.free

    @property
    def headroom(self) -> int:
        """Bytes that may still be added (negative: over)."""
        room = self.free - self.reserve
        return min(room, self.budget - self.used) if self.budget is not None else room

    @property
    def share(self) -> float:
        """The larger of the budget's share used and the file system's."""
        filesystem = 1 - self.free / self.filesystem if self.filesystem else 1.0
        return max(self.used / self.budget, filesystem) if self.budget else filesystem

    @property
    def level(self) -> Level:
        if self.headroom <= 0:
            return "full"
        return "warning" if self.share >= WARN_AT else "ok"

    def budget_text(self) -> str:
        """``SYNCBN_DISK_BUDGET_BYTES=1000`` or ``SYNCBN_DISK_BUDGET_BYTES unset``."""
        name = Settings.env_name(SETTING)
        return f"{name}={self.budget}" if self.budget is not None else f"{name} unset"

    def why_full(self, incoming: int = 0) -> str | None:
        """Why there is no room for ``incoming`` more bytes (None: there is)."""
        used = f"$SYNCBN_HOME ({self.home}) uses {self.used} bytes ({human(self.used)})"
        if self.budget is not None and self.used + incoming >= self.budget:
            more = f", and this request brings {incoming} more" if incoming else ""
            return (
                f"{used}{more}: its budget is {Settings.env_name(SETTING)}={self.budget} "
                f"({human(self.budget)})"
            )
        if self.free - incoming <= self.reserve:
            more = f" (this request brings {incoming})" if incoming else ""
            return (
                f"its file system has {self.free} bytes free ({human(self.free)}){more}, at or "
                f"under the {human(self.reserve)} kept for the database; {used} "
                f"({self.budget_text()})"
            )
        return None

    def describe(self) -> str:
        """One line for ``/readyz``: ``ok: 1.2 GiB free of the budget``."""
        of = "of the budget" if self.budget is not None else "on the file system"
        room = human(max(0, self.headroom))
        if self.level == "ok":
            return f"ok: {room} free {of}"
        if self.level == "warning":
            return (
                f"degraded: {self.share:.0%} used ({human(self.used)} in $SYNCBN_HOME, "
                f"{self.budget_text()}, {human(self.free)} free on the file system), {room} "
                "left before uploads and new jobs are refused"
            )
        return (
            f"full: {self.why_full()}; uploads, new jobs and studies are refused (507), reads, "
            "cancels and deletes work"
        )


class DiskMeter:
    """The home's disk, measured for a budget: thread-safe; one walk at a time, reused for
    ``SYNCBN_DISK_CHECK_INTERVAL_S``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self._lock = threading.Lock()
        self._added_lock = threading.Lock()
        self._walk: Walk | None = None
        self._walked_at = -math.inf
        self._added = 0
        self._level: Level = "ok"

    @property
    def fresh(self) -> bool:
        """Whether the last walk is reused (a measure is then one ``statvfs``)."""
        return time.monotonic() - self._walked_at < self.settings.disk_check_interval_s

    def _current_walk(self, refresh: bool) -> tuple[Walk, int]:
        """The last walk (a new one when stale or ``refresh``) and the bytes added since."""
        if self._walk is not None and not refresh and self.fresh:
            return self._walk, self._added
        if not self._lock.acquire(blocking=self._walk is None or refresh):
            return self._walk, self._added  # type: ignore[return-value]  # another thread walks
        try:
            if refresh or self._walk is None or not self.fresh:
                started = time.monotonic()
                self._walk, self._added = walk(self.home), 0
                self._walked_at = time.monotonic()
                took = self._walked_at - started
                if took > 1:
                    logger.info("measuring $SYNCBN_HOME took %.1f s", took)
            return self._walk, self._added
        finally:
            self._lock.release()

    def state(self, refresh: bool = False) -> DiskState:
        """The home's disk now (the walk reused while fresh, unless ``refresh``)."""
        found, added = self._current_walk(refresh)
        usage = shutil.disk_usage(self._existing(self.home))
        state = DiskState(
            self.home,
            found.total + added,
            self.settings.disk_budget_bytes,
            usage.free,
            usage.total,
            found,
        )
        self._note_level(state)
        return state

    @staticmethod
    def _existing(path: Path) -> Path:
        while not path.exists() and path != path.parent:
            path = path.parent
        return path

    def _note_level(self, state: DiskState) -> None:
        level, before = state.level, self._level
        self._level = level
        if level == before:
            return
        if level == "ok":
            logger.info("disk of $SYNCBN_HOME back to ok: %s", state.describe())
        else:
            logger.warning(
                "disk of $SYNCBN_HOME: %s",
                state.describe(),
                extra={"used_bytes": state.used, "free_bytes": state.free},
            )

    def refresh_if_due(self) -> DiskState | None:
        """A new measure when the last one is stale (the scheduler loop's chore)."""
        return None if self.fresh else self.state()

    def check_room(self, what: str, incoming: int = 0) -> None:
        """``InsufficientStorage`` (507) unless there is room for ``what`` (``incoming`` more
        bytes, e.g. an upload's ``Content-Length``)."""
        state = self.state()
        reason = state.why_full(incoming)
        if reason is not None:
            raise InsufficientStorage(_refusal(what, reason, state))

    def added(self, size: int) -> None:
        """``size`` bytes were just written (an upload): counted until the next walk."""
        with self._added_lock:  # not the walk's lock: the event loop calls this
            self._added += max(0, size)

    def invalidate(self) -> None:
        """Walk again at the next measure (the disk said it was full)."""
        self._walked_at = -math.inf

    def full_error(self, exc: BaseException, doing: str) -> InsufficientStorage:
        """The 507 of ``exc``, the disk saying it is full while ``doing``."""
        self.invalidate()
        try:
            state = self.state()
            figures = (
                f"$SYNCBN_HOME uses {state.used} bytes ({human(state.used)}, "
                f"{state.budget_text()}); its file system has {state.free} bytes free"
            )
        except Exception:  # the measure itself failed: the error still says what happened
            figures = f"$SYNCBN_HOME: {self.home}"
        cause = getattr(exc, "strerror", None) or str(getattr(exc, "orig", None) or exc)
        logger.error("the disk is full while %s: %s", doing, cause)
        return InsufficientStorage(
            f"the disk of $SYNCBN_HOME ({self.home}) is full ({cause}) while {doing}: nothing "
            f"of it was kept. {figures}. Free space (delete old jobs, datasets or code bundles), "
            "then retry; reads, cancels and deletes still work"
        )


def _refusal(what: str, reason: str, state: DiskState) -> str:
    raise_it = f", or raise {Settings.env_name(SETTING)}" if state.budget is not None else ""
    return (
        f"no room on the disk for {what}: {reason}. Uploads, new jobs and studies are refused "
        f"until space is freed (delete old jobs, datasets or code bundles{raise_it}); reads, "
        "cancels and deletes still work"
    )


class DiskCollector:
    """The ``syncbn_disk_*`` gauges of ``/metrics`` (a scrape reuses a fresh walk)."""

    def __init__(self, meter: DiskMeter) -> None:
        self.meter = meter

    def collect(self) -> Iterator[Any]:
        try:
            state = self.meter.state()
        except Exception:  # never fail the scrape
            logger.exception("measuring the disk of $SYNCBN_HOME failed")
            return
        yield GaugeMetricFamily(
            "syncbn_disk_used_bytes",
            "bytes under $SYNCBN_HOME (walked at most every SYNCBN_DISK_CHECK_INTERVAL_S)",
            value=state.used,
        )
        yield GaugeMetricFamily(
            "syncbn_disk_budget_bytes",
            "bytes $SYNCBN_HOME may use: SYNCBN_DISK_BUDGET_BYTES, else used plus free",
            value=state.limit,
        )
        yield GaugeMetricFamily(
            "syncbn_disk_free_bytes", "free bytes of the file system of $SYNCBN_HOME", state.free
        )
