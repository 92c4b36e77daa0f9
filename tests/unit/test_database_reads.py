"""``Database.read``: the API's small reads run inline on SQLite (a local file; in WAL mode a
reader never waits for a writer) and in a worker thread on a server database, whose reads wait
on the network. Either way the read gets its own session and its errors reach the route."""

from __future__ import annotations

import asyncio
import threading

import pytest
import sqlalchemy as sa

from service.errors import NotFound
from service.storage.db import Database


@pytest.fixture
def db(tmp_path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'syncbn.db'}")
    yield database
    database.close()


def count_jobs(session) -> tuple[int, int]:
    return threading.get_ident(), int(session.scalar(sa.text("SELECT count(*) FROM jobs")) or 0)


def test_sqlite_reads_run_on_the_calling_thread(db: Database) -> None:
    assert db.reads_inline
    assert asyncio.run(db.read(count_jobs)) == (threading.get_ident(), 0)


def test_server_database_reads_run_in_a_worker_thread(db: Database) -> None:
    db.reads_inline = False  # as for PostgreSQL (dialect name "postgresql")
    thread, jobs = asyncio.run(db.read(count_jobs))
    assert (thread != threading.get_ident(), jobs) == (True, 0)


@pytest.mark.parametrize("inline", [True, False])
def test_a_read_error_reaches_the_caller(db: Database, inline: bool) -> None:
    db.reads_inline = inline

    def missing(session) -> None:
        raise NotFound("job", "j-000000000000")

    with pytest.raises(NotFound):
        asyncio.run(db.read(missing))
