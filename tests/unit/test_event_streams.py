"""``GET /v1/jobs/{id}/events`` is woken by commits, not polled, and capped (issue 27, "Caps").

The streams are driven as ASGI calls on the in-process app (``TestClient`` buffers a response
to its end, and a queued job's stream never ends): a request, then a ``receive`` that answers
``http.disconnect`` when the test lets the client go.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial

import pytest
from fastapi import FastAPI
from inprocess import GOOD, TOKEN, local_client
from sqlalchemy import event, insert

from contract.spec import JobSpec
from contract.states import JobState
from service.jobs.events import EventHub
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.storage.tables import Event


class Stream:
    """One ``GET`` on the app as an ASGI call: ``status``, ``body`` so far, ``leave()``."""

    def __init__(self, app: FastAPI, path: str, token: str = TOKEN) -> None:
        self.app, self.path, self.token = app, path, token
        self.messages: list[dict] = []
        self.changed = asyncio.Event()
        self.gone = asyncio.Event()
        self.requested = False
        self.task: asyncio.Task | None = None

    def start(self) -> Stream:
        path, _, query = self.path.partition("?")
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "",
            "query_string": query.encode(), "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "headers": [(b"host", b"127.0.0.1"),
                        (b"authorization", f"Bearer {self.token}".encode())],
        }  # fmt: skip
        self.task = asyncio.create_task(self.app(scope, self.receive, self.send))
        return self

    async def receive(self) -> dict:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.messages.append(message)
        self.changed.set()

    @property
    def status(self) -> int | None:
        return self.messages[0]["status"] if self.messages else None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    @property
    def over(self) -> bool:
        return any(m.get("type") == "http.response.body" and not m.get("more_body")
                   for m in self.messages)  # fmt: skip

    async def until(self, done: Callable[[Stream], bool], timeout_s: float = 5.0) -> float:
        """Seconds until ``done(self)``."""
        start = time.monotonic()
        async with asyncio.timeout(timeout_s):
            while not done(self):
                self.changed.clear()
                await self.changed.wait()
        return time.monotonic() - start

    async def leave(self) -> None:
        """The client disconnects; the response ends."""
        self.gone.set()
        await self.finished()

    async def finished(self) -> None:
        """Until the app's call returns (its dependencies' cleanup done)."""
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


def first_event(stream: Stream) -> bool:
    return stream.status == 200 and b"event: state" in stream.body


def queued_job(app: FastAPI) -> str:
    answer = local_client(app).post("/v1/jobs", json=GOOD)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_past_the_per_token_cap_a_429_names_the_setting_and_a_disconnect_frees_the_slot(
    make_app,
):
    app = make_app(max_event_streams_per_token=2, max_event_streams=10)
    slots = app.state.services.events.slots
    job = queued_job(app)

    async def main() -> None:
        held = [Stream(app, f"/v1/jobs/{job}/events").start() for _ in range(2)]
        for stream in held:
            await stream.until(first_event)
        refused = Stream(app, f"/v1/jobs/{job}/events").start()
        await refused.finished()
        assert refused.status == 429
        assert b"SYNCBN_MAX_EVENT_STREAMS_PER_TOKEN=2" in refused.body
        assert slots.open == 2

        await held[0].leave()
        assert slots.open == 1
        again = Stream(app, f"/v1/jobs/{job}/events").start()
        await again.until(first_event)
        assert slots.open == 2
        for stream in (held[1], again):
            await stream.leave()
        assert slots.open == 0

    asyncio.run(main())


def test_past_the_total_cap_a_429_names_it_and_a_stream_that_ends_frees_its_slot(make_app):
    app = make_app(max_event_streams_per_token=10, max_event_streams=2)
    services = app.state.services
    jobs = [queued_job(app) for _ in range(2)]

    async def main() -> None:
        held = [Stream(app, f"/v1/jobs/{job}/events").start() for job in jobs]
        for stream in held:
            await stream.until(first_event)
        refused = Stream(app, f"/v1/jobs/{jobs[0]}/events").start()
        await refused.until(lambda s: s.over)
        assert refused.status == 429 and b"SYNCBN_MAX_EVENT_STREAMS=2" in refused.body

        await asyncio.to_thread(services.lifecycle.cancel, jobs[0])
        await held[0].finished()
        assert held[0].body.endswith(b'event: end\r\ndata: {"state": "cancelled"}\r\n\r\n')
        assert services.events.slots.open == 1  # the ended stream's slot is free
        await held[1].leave()
        assert services.events.slots.open == 0

    asyncio.run(main())


def test_an_unknown_job_is_a_404_that_frees_its_slot(make_app):
    app = make_app(max_event_streams_per_token=1)

    async def main() -> None:
        for _ in range(2):  # the second would be a 429 if the first kept its slot
            missing = Stream(app, "/v1/jobs/j-000000000000/events").start()
            await missing.finished()
            assert missing.status == 404

    asyncio.run(main())
    assert app.state.services.events.slots.open == 0


def test_an_idle_stream_does_no_query(make_app):
    app = make_app()
    services = app.state.services
    job = queued_job(app)
    services.events.fallback_s = 3600  # no fallback read in the idle second (FALLBACK_S: 15 s)
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    async def main() -> None:
        stream = Stream(app, f"/v1/jobs/{job}/events").start()
        await stream.until(first_event)
        await asyncio.sleep(0.1)  # the read after the replay, then the wait
        assert services.events.subscribed(job) == 1
        event.listen(services.db.engine, "before_cursor_execute", count)
        try:
            await asyncio.sleep(1.2)  # polling every 0.5 s read 2-3 times in this
        finally:
            event.remove(services.db.engine, "before_cursor_execute", count)
        await stream.leave()

    asyncio.run(main())
    assert statements == []
    assert services.events.subscribed() == 0


def test_a_commit_from_another_thread_wakes_the_stream_at_once_in_the_same_format(make_app):
    app = make_app()
    services = app.state.services
    job = queued_job(app)
    with services.db.session() as session:
        first = store.events_after(session, job, 0)[0].id

    async def main() -> tuple[float, Stream, Stream]:
        stream = Stream(app, f"/v1/jobs/{job}/events").start()
        resumed = Stream(app, f"/v1/jobs/{job}/events?after={first}").start()
        await stream.until(first_event)
        await asyncio.sleep(0.3)  # both wait for a wake-up now
        start = time.monotonic()
        threading.Thread(target=services.lifecycle.cancel, args=(job,)).start()
        await stream.until(lambda s: b'"state": "cancelled"' in s.body, timeout_s=1.0)
        latency = time.monotonic() - start
        await stream.until(lambda s: s.over)
        await resumed.until(lambda s: s.over)
        return latency, stream, resumed

    latency, stream, resumed = asyncio.run(main())
    assert latency < 1.0
    with services.db.session() as session:
        second = store.events_after(session, job, first)[0].id
    assert stream.body.startswith(f"id: {first}\r\nevent: state\r\ndata: ".encode())
    assert f"id: {second}\r\nevent: state\r\ndata: ".encode() in stream.body
    assert resumed.body.startswith(f"id: {second}\r\nevent: state\r\n".encode())
    assert resumed.body.endswith(b'event: end\r\ndata: {"state": "cancelled"}\r\n\r\n')


def test_the_hub_wakes_after_a_commit_only_and_streams_of_a_job_share_a_read(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'syncbn.db'}")
    hub = EventHub(db, Settings(home=tmp_path), fallback_s=3600)
    with db.session() as session:
        job = store.create_job(session, JobSpec(**GOOD), 4, JobState.QUEUED).id

    class Abort(Exception):
        pass

    def add_event(commit: bool) -> None:
        with suppress(Abort), db.session() as session:
            session.add(Event(job_id=job, type="state", data={"state": "x"}))
            session.flush()  # the id is taken; only the commit makes it an event
            if not commit:
                raise Abort

    reads: list[int] = []

    def count_events(session, after: int) -> int:
        reads.append(after)
        return len(store.events_after(session, job, after))

    async def main() -> float:
        with hub.subscribe(job) as wake, hub.subscribe(job):
            wake.clear()
            await asyncio.to_thread(add_event, False)  # rolled back: no event
            await asyncio.sleep(0.05)
            assert not wake.event.is_set()
            assert [await hub.read(job, 0, partial(count_events, after=0)) for _ in "ab"] == [1, 1]
            assert reads == [0]  # the second stream's read was the first one's

            start = time.monotonic()
            writer = asyncio.create_task(asyncio.to_thread(add_event, True))
            while not await wake.wait():  # a fallback read would come first (not here)
                pass
            latency = time.monotonic() - start
            await writer
            assert [await hub.read(job, 0, partial(count_events, after=0)) for _ in "ab"] == [2, 2]
            assert reads == [0, 0]  # the commit made the shared read stale: read once more
        return latency

    try:
        assert asyncio.run(main()) < 1.0
        assert hub.subscribed() == 0 and hub.subscribed(job) == 0
    finally:
        db.close()


def test_a_write_no_commit_hook_sees_reaches_the_stream_by_the_fallback_read(make_app):
    app = make_app()
    services = app.state.services
    services.events.fallback_s = 0.3  # FALLBACK_S: 15 s
    job = queued_job(app)

    async def main() -> None:
        stream = Stream(app, f"/v1/jobs/{job}/events").start()
        await stream.until(first_event)
        # as another process would: no session of this Database, so no notification
        with services.db.engine.begin() as connection:
            connection.execute(insert(Event).values(job_id=job, type="state", data={"x": 1}))
        await stream.until(lambda s: b'data: {"x": 1}' in s.body, timeout_s=2.0)
        await stream.leave()

    asyncio.run(main())


@pytest.mark.parametrize("per_token, total", [(0, 5), (5, 0)])
def test_the_caps_are_at_least_one(tmp_path, per_token, total):
    with pytest.raises(ValueError):
        Settings(home=tmp_path, max_event_streams_per_token=per_token, max_event_streams=total)
