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


def test_rows_made_before_users_existed_belong_to_admin(tmp_path: Path) -> None:
    """0006_teams: an older database's jobs, studies, datasets and code bundles get the owner
    ``admin``, the bootstrap user it adds (the user of the service's own token)."""
    from alembic import command

    from service.storage.db import alembic_config, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url, migrate=False)
    now = "2026-01-01 00:00:00"
    rows = {
        "jobs": "INSERT INTO jobs (id, state, spec, cancel_requested, steps_per_epoch, epoch, "
        f"step, created_at, updated_at) VALUES ('j-old', 'succeeded', '{{}}', 0, 1, 0, 0, "
        f"'{now}', '{now}')",
        "studies": "INSERT INTO studies (id, base, seeds, arms, skipped, metric, cancelled, "
        f"created_at) VALUES ('s-old', '{{}}', '[0]', '[]', '[]', 'test_accuracy', 0, '{now}')",
        "datasets": "INSERT INTO datasets (id, name, size_bytes, sha256, n_train, n_test, "
        "input_shape, num_classes, created_at, task) VALUES ('d-old', 'd', 1, 'x', 1, 0, "
        f"'[1]', 2, '{now}', 'classification')",
        "code_bundles": "INSERT INTO code_bundles (id, name, size_bytes, sha256, files, "
        f"modules, requirements, created_at) VALUES ('c-old', 'c', 1, 'x', '[]', '[]', '[]', "
        f"'{now}')",
    }
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0005_allreduce_bytes")
            for insert in rows.values():
                connection.execute(sa.text(insert))
        upgrade(engine)
        with engine.connect() as connection:
            for table in rows:
                owners = connection.scalars(sa.text(f"SELECT owner FROM {table}")).all()
                assert owners == ["admin"], table
            users = connection.execute(sa.text("SELECT name, role, revoked_at FROM users"))
            assert [tuple(u) for u in users] == [("admin", "admin", None)]
    finally:
        engine.dispose()
