"""Schema migrations (Alembic, ``service/storage/migrations``) on SQLite: a new database gets the
newest revision and exactly the tables of ``service.storage.tables`` (a model change without a
migration fails here), in-memory SQLite keeps the migrated schema for every thread, and unknown
schemas are refused. The same on PostgreSQL, and the upgrade of the release before migrations
by the real service, are in ``tests/e2e/test_migrations_e2e.py``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from migrationkit import test_new_database_gets_head_and_the_models_schema  # noqa: F401 (a test)

from service.storage.db import Database, current_revision, head_revision, upgrade


@pytest.fixture(params=["sqlite"])
def database_url(request, tmp_path) -> str:
    """An empty database: a SQLite file."""
    return f"sqlite:///{tmp_path / 'home' / 'syncbn.db'}"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_keeps_the_migrated_schema(url: str) -> None:
    """One shared connection: every thread (FastAPI's thread pool) sees the migrated tables."""
    from concurrent.futures import ThreadPoolExecutor

    db = Database(url)
    try:

        def count_jobs() -> int:
            with db.session() as session:
                return int(session.scalar(sa.text("SELECT count(*) FROM jobs")) or 0)

        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(lambda _: count_jobs(), range(4))) == [0, 0, 0, 0]
        with db.engine.connect() as connection:
            assert current_revision(connection) == head_revision()
    finally:
        db.close()


def test_unknown_schemas_are_refused(tmp_path: Path) -> None:
    partial = tmp_path / "partial.db"
    with sqlite3.connect(partial) as connection:
        connection.execute("CREATE TABLE jobs (id VARCHAR(32) PRIMARY KEY)")
    with pytest.raises(RuntimeError, match="unrecognized database schema"):
        upgrade(f"sqlite:///{partial}")
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        connection.execute("INSERT INTO alembic_version VALUES ('9999_from_the_future')")
    with pytest.raises(RuntimeError, match="unknown to this release"):
        upgrade(f"sqlite:///{newer}")
