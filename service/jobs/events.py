"""The live event streams of jobs (``GET /v1/jobs/{id}/events``): woken by commits, not polled,
and capped.

Every ``events`` row is written through a session of the service's ``Database`` (a state change,
a report, worker exceptions: from the scheduler's thread and from request handlers alike).
``EventHub`` listens on those sessions: ``after_flush`` notes the jobs of new ``Event`` rows,
``after_commit`` wakes the streams of those jobs (``after_rollback`` forgets them). So a stream
that has read everything waits on an ``asyncio.Event``, with no query and no thread hop, until a
commit concerns its job. It subscribes before it reads: a commit between its read and its wait
still wakes it. ``notify`` is thread-safe: one ``call_soon_threadsafe`` per event loop and
commit, however many streams it wakes.

The streams of a job woken together share their reads (``EventHub.read``): a result is reused
for the same job and cursor until the job's next commit, for at most ``SHARED_READ_S``. So a
new event reaches 1000 streams of a job for one read, not 1000.

A stream also reads without a wake-up, on average every ``FALLBACK_S``: the writers this
process cannot see (another replica against PostgreSQL, a script on the SQLite file) show up
within that. With more than ``FALLBACK_S * FALLBACK_READS_PER_S`` streams open the interval
grows, so that these reads stay at ``FALLBACK_READS_PER_S`` in all: idle streams cost the
same however many there are. The first wait is a random part of the interval, so streams
opened together do not read together.

``StreamSlots`` caps the open streams: per API token (kept as its SHA-256, never the token) and
in total, past either a 429 naming its setting. A slot is held from the request until its
response is over: the stream ended, or the client went away.

Here, in ``jobs``, not in ``storage``: the database only offers the session hook
(``Database.on_session``); which commits matter and who is woken is about jobs' streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, NamedTuple, TypeVar

from sqlalchemy.orm import Session

from service.errors import QueueFull
from service.settings import Settings
from service.storage.db import Database
from service.storage.tables import Event

T = TypeVar("T")
logger = logging.getLogger("service.jobs.events")
FALLBACK_S = 15.0
"""How often a stream reads without a wake-up (x0.8-1.2), for writers in other processes."""
FALLBACK_READS_PER_S = 20.0
"""The most such reads per second, all streams together (beyond 300 streams, fewer each)."""
SHARED_READ_S = 1.0
"""How long one stream's read answers the others of its job at the same cursor (if no commit
concerned the job meanwhile); it bounds how stale a shared read is for another process's
writes."""
MAX_SHARED_READS = 16
"""Reads kept per job (at different cursors: streams that resumed at different events)."""
PENDING_KEY = "syncbn.event_jobs"
"""``Session.info`` key: the jobs whose new events the session flushed, not yet committed."""
FD_HEADROOM = 256
"""File descriptors kept for everything but streams (database, Ray clients, other requests)."""


class Wake:
    """One stream's wake-up: set by ``EventHub.notify`` from any thread."""

    __slots__ = ("event", "hub", "loop", "waited")

    def __init__(self, hub: EventHub, loop: asyncio.AbstractEventLoop) -> None:
        self.hub, self.loop = hub, loop
        self.event = asyncio.Event()
        self.waited = False

    def clear(self) -> None:
        """Before a read: a commit from now on wakes the next ``wait``."""
        self.event.clear()

    async def wait(self) -> bool:
        """Until a commit added events of the job (True) or the fallback time passed (False)."""
        interval = self.hub.fallback_interval()
        timeout = interval * (random.uniform(0.8, 1.2) if self.waited else random.random())
        self.waited = True
        try:
            async with asyncio.timeout(timeout):
                await self.event.wait()
        except TimeoutError:
            return False
        return True


class SharedRead(NamedTuple):
    """A stream's read that the others of its job may reuse (``EventHub.read``)."""

    commits: int
    """The job's notified commits when it began: after another, it is stale."""
    at: float
    """When it began (``time.monotonic``)."""
    result: Any


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


class EventHub:
    """Wakes the streams of a job after a commit that added events for it; holds the
    ``StreamSlots`` of the service's event streams."""

    def __init__(self, db: Database, settings: Settings, fallback_s: float = FALLBACK_S) -> None:
        self.db, self.fallback_s = db, fallback_s
        self.slots = StreamSlots(settings.max_event_streams, settings.max_event_streams_per_token)
        self._lock = threading.Lock()
        self._wakes: dict[str, set[Wake]] = {}
        self._count = 0
        self._commits: dict[str, int] = {}
        """Per job with streams: how many commits with its events were notified (a read made
        before the latest of them is not shared)."""
        self._shared: dict[str, dict[int, SharedRead]] = {}
        """Per job with streams, per cursor: the latest read since its latest commit."""
        db.on_session("after_flush", self._flushed)
        db.on_session("after_commit", self._committed)
        db.on_session("after_rollback", self._rolled_back)

    @staticmethod
    def _flushed(session: Any, _context: Any) -> None:
        # In after_flush, session.new still lists what this flush inserted.
        jobs = {row.job_id for row in session.new if isinstance(row, Event)}
        if jobs:
            session.info.setdefault(PENDING_KEY, set()).update(jobs)

    def _committed(self, session: Any) -> None:
        jobs = session.info.pop(PENDING_KEY, None)
        if jobs:
            self.notify(*jobs)

    @staticmethod
    def _rolled_back(session: Any) -> None:
        session.info.pop(PENDING_KEY, None)

    def notify(self, *job_ids: str) -> None:
        """Wake every stream of ``job_ids`` (from any thread)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
        with self._lock:
            for job_id in job_ids:
                if job_id in self._commits:
                    self._commits[job_id] += 1
                    self._shared.pop(job_id, None)
                for wake in self._wakes.get(job_id, ()):
                    by_loop.setdefault(wake.loop, []).append(wake.event)
        for loop, events in by_loop.items():
            with suppress(RuntimeError):  # that loop is closed: its streams are gone
                loop.call_soon_threadsafe(_set_all, events)

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[Wake]:
        """The wake-up of a stream of ``job_id`` on the running event loop, while inside."""
        wake = Wake(self, asyncio.get_running_loop())
        with self._lock:
            self._wakes.setdefault(job_id, set()).add(wake)
            self._commits.setdefault(job_id, 0)
            self._count += 1
        try:
            yield wake
        finally:
            with self._lock:
                self._count -= 1
                wakes = self._wakes[job_id]
                wakes.discard(wake)
                if not wakes:
                    del self._wakes[job_id], self._commits[job_id]
                    self._shared.pop(job_id, None)

    def subscribed(self, job_id: str | None = None) -> int:
        """Streams waiting on ``job_id`` (None: on any job)."""
        with self._lock:
            return self._count if job_id is None else len(self._wakes.get(job_id, ()))

    def fallback_interval(self) -> float:
        """The mean time between a stream's reads without a wake-up."""
        return max(self.fallback_s, self._count / FALLBACK_READS_PER_S)

    async def read(self, job_id: str, cursor: int, fn: Callable[[Session], T]) -> T:
        """``db.read(fn)``, the read of a subscribed stream of ``job_id`` after ``cursor``; or
        the result of the same read by another of its streams, made after the job's latest
        commit and at most ``SHARED_READ_S`` ago."""
        with self._lock:
            commits = self._commits.get(job_id)
            shared = self._shared.get(job_id, {}).get(cursor)
        now = time.monotonic()
        if shared is not None and shared.commits == commits and now - shared.at < SHARED_READ_S:
            return shared.result
        result = await self.db.read(fn)
        with self._lock:
            if commits is not None and self._commits.get(job_id) == commits:
                reads = self._shared.setdefault(job_id, {})
                if len(reads) >= MAX_SHARED_READS:
                    reads.clear()
                reads[cursor] = SharedRead(commits, now, result)
        return result


class StreamSlots:
    """Open event streams, per API token (by SHA-256) and in total: ``QueueFull`` (429) naming
    ``max_event_streams_per_token`` or ``max_event_streams`` past either."""

    def __init__(self, total: int, per_token: int) -> None:
        self.total, self.per_token = total, per_token
        self.open = 0
        self._by_token: dict[str, int] = {}
        self._lock = threading.Lock()
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        most, setting = min(
            (per_token, "max_event_streams_per_token"), (total, "max_event_streams")
        )
        if soft != resource.RLIM_INFINITY and soft < most + FD_HEADROOM:
            logger.warning(
                "%s=%d streams (one socket each) need about %d file descriptors, but this "
                "process may open %d (ulimit -n): past that every request fails, not only "
                "streams. Raise the limit or lower the setting.",
                Settings.env_name(setting), most, most + FD_HEADROOM, soft,
            )  # fmt: skip

    @contextmanager
    def slot(self, credential: str | None) -> Iterator[None]:
        """A stream's slot, for the ``credential`` that signed the caller in (a token's
        SHA-256, or ``proxy:<name>``; kept only as its SHA-256)."""
        digest = hashlib.sha256((credential or "").encode()).hexdigest()
        with self._lock:
            mine = self._by_token.get(digest, 0)
            if mine >= self.per_token:
                raise QueueFull(self._refusal(f"{mine} with this token", "per_token"))
            if self.open >= self.total:
                raise QueueFull(self._refusal(f"{self.open} in all", "total"))
            self._by_token[digest] = mine + 1
            self.open += 1
        try:
            yield
        finally:
            with self._lock:
                self.open -= 1
                left = self._by_token[digest] - 1
                if left:
                    self._by_token[digest] = left
                else:
                    del self._by_token[digest]

    def _refusal(self, count: str, which: str) -> str:
        setting = "max_event_streams_per_token" if which == "per_token" else "max_event_streams"
        limit = self.per_token if which == "per_token" else self.total
        return (
            f"too many open event streams ({count}, the most at once: "
            f"{Settings.env_name(setting)}={limit}): close one first"
        )
