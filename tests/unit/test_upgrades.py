"""Upgrading a database that earlier releases made (``docs/operations.md#upgrading``), on
SQLite: for every revision of ``service/storage/migrations/versions``, a database built at that
revision and filled with representative rows of every table it has is upgraded to the newest,
as the service does on start (``service.storage.db.upgrade``); every row survives with its
values, the columns added since hold their defaults (``owner='admin'``...), every value reads
back through the models, and the schema is exactly the models'. A one-step downgrade with the
documented command line (``alembic -c service/storage/migrations/alembic.ini downgrade -1``)
works on a filled database, and so does the upgrade back. A database that a newer release
upgraded is refused, with both revisions named: by ``make_engine`` and by ``python -m
service`` (exit 2, no traceback).

A new revision that adds a table needs rows in ``ROWS``; one that adds a column with a server
default needs its value in ``NEW_COLUMN_VALUES``: the tests say so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from migrationkit import assert_matches_models, stored_revision

from service.storage.db import (
    SchemaTooNew,
    alembic_config,
    check_schema,
    head_revision,
    make_engine,
    upgrade,
)
from service.storage.tables import Base

ROOT = Path(__file__).parents[2]
REVISIONS = [
    script.revision
    for script in reversed(list(ScriptDirectory.from_config(alembic_config()).walk_revisions()))
]
"""Every revision, oldest first (0001_initial ... head)."""
AT = "2026-01-02 03:04:05.000000"
SHA = "ab" * 32
ROWS: dict[str, list[dict[str, Any]]] = {
    "studies": [
        {"id": "s-1", "base": '{"dataset": "digits", "epochs": 2}', "seeds": "[0, 1]",
         "arms": '["sync", "local"]', "skipped": '{"group": "too few channels"}',
         "metric": "test_accuracy", "cancelled": 0, "created_at": AT, "owner": "alice"},
    ],
    "jobs": [
        {"id": "j-done", "state": "succeeded", "reason": None,
         "spec": '{"dataset": "digits", "epochs": 2}', "ray_status": "SUCCEEDED",
         "cancel_requested": 0, "steps_per_epoch": 12, "epoch": 2, "step": 24,
         "test_accuracy": 0.91, "test_loss": 0.3, "wall_time_s": 12.5, "created_at": AT,
         "updated_at": AT, "started_at": AT, "finished_at": AT, "test_miou": 0.4,
         "study_id": "s-1", "arm": "sync", "ingest_token_sha256": SHA, "owner": "alice",
         "pinned": 1, "files_removed_at": None},
        {"id": "j-queued", "state": "queued", "reason": "waiting for 2 CPUs", "spec": "{}",
         "ray_status": None, "cancel_requested": 1, "steps_per_epoch": 3, "epoch": 0,
         "step": 0, "test_accuracy": None, "test_loss": None, "wall_time_s": None,
         "created_at": AT, "updated_at": AT, "started_at": None, "finished_at": None},
    ],
    "transitions": [
        {"id": 1, "job_id": "j-done", "state": "queued", "reason": "submitted", "at": AT},
        {"id": 2, "job_id": "j-done", "state": "succeeded", "reason": None, "at": AT},
    ],
    "reports": [
        {"id": 1, "job_id": "j-done", "kind": "epoch", "epoch": 1, "step": 12, "time": 1.5},
    ],
    "worker_stats": [
        {"id": 1, "report_id": 1, "rank": 0, "loss": 0.5, "samples_per_s": 100.0,
         "step_time_s": 0.1, "sync_time_s": 0.01, "data": '{"bn_running": [[0.1, 0.2]]}',
         "allreduce_bytes_per_step": 2048.0},
    ],
    "evaluations": [
        {"id": 1, "job_id": "j-done", "epoch": 1, "step": 12, "test_accuracy": 0.9,
         "test_loss": 0.31, "test_miou": 0.35},
    ],
    "events": [{"id": 1, "job_id": "j-done", "type": "report", "data": '{"epoch": 1}'}],
    "datasets": [
        {"id": "ds-1", "name": "cells.npz", "size_bytes": 1234, "sha256": SHA, "n_train": 40,
         "n_test": 10, "input_shape": "[1, 16, 16]", "num_classes": 3, "created_at": AT,
         "task": "segmentation", "class_names": '["bg", "a", "b"]', "owner": "alice"},
    ],
    "code_bundles": [
        {"id": "code-1", "name": "net.zip", "size_bytes": 99, "sha256": SHA, "files": 2,
         "modules": '["net"]', "requirements": '["timm==1.0"]', "created_at": AT,
         "owner": "alice"},
    ],
    "users": [
        {"name": "alice", "role": "member", "created_at": AT, "revoked_at": None,
         "max_running_workers": 4, "max_queued_jobs": 10, "max_upload_bytes": 5_000_000_000,
         "max_model_bytes": None},
    ],
    "api_tokens": [
        {"id": 1, "user": "alice", "name": "default", "sha256": SHA, "created_at": AT,
         "last_used_at": AT, "revoked_at": None},
    ],
    "audit": [
        {"id": 1, "at": AT, "actor": "admin", "action": "create_user", "object_kind": "user",
         "object_id": "alice", "status": 201, "detail": None, "count": 1},
    ],
}  # fmt: skip
"""Representative rows of every table at head, every column filled where it can be: at an
earlier revision, each row is inserted with the columns that exist there."""
NEW_COLUMN_VALUES: dict[tuple[str, str], Any] = {
    ("datasets", "task"): "classification",
    **{(table, "owner"): "admin" for table in ("jobs", "studies", "datasets", "code_bundles")},
    ("jobs", "pinned"): 0,
}
"""What a row made before a column existed holds in it after the upgrade (its server
default); a new column without one holds NULL."""


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def columns(connection: sa.Connection) -> dict[str, list[str]]:
    inspector = sa.inspect(connection)
    tables = set(inspector.get_table_names()) - {"alembic_version"}
    return {table: [c["name"] for c in inspector.get_columns(table)] for table in tables}


def snapshot(connection: sa.Connection) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, as stored (no type processing), by primary key."""
    result = {}
    for table in columns(connection):
        query = sa.text(f"SELECT * FROM {table} ORDER BY 1")
        result[table] = [dict(row) for row in connection.execute(query).mappings()]
    return result


def build(path: Path, revision: str) -> dict[str, list[dict[str, Any]]]:
    """A database at ``revision`` with ``ROWS``' columns that exist there; its rows."""
    engine = make_engine(url_of(path), migrate=False)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)
            present = columns(connection)
            missing = set(present) - set(ROWS)
            assert not missing, f"add representative rows of {sorted(missing)} to ROWS"
            for table, rows in ROWS.items():
                for row in rows if table in present else ():
                    values = {k: v for k, v in row.items() if k in present[table]}
                    names = ", ".join(f'"{k}"' for k in values)
                    marks = ", ".join(f":{k}" for k in values)
                    insert = f"INSERT INTO {table} ({names}) VALUES ({marks})"
                    connection.execute(sa.text(insert), values)
        with engine.connect() as connection:
            return snapshot(connection)
    finally:
        engine.dispose()


def expected_new_value(connection: sa.Connection, table: str, column: str) -> Any:
    """What a row made before ``table.column`` existed holds in it."""
    if (table, column) in NEW_COLUMN_VALUES:
        return NEW_COLUMN_VALUES[(table, column)]
    info = next(c for c in sa.inspect(connection).get_columns(table) if c["name"] == column)
    assert info.get("default") is None, (
        f"{table}.{column} has the server default {info['default']}: add the value rows made "
        "before it get to NEW_COLUMN_VALUES"
    )
    return None


SEEDED = {("users", "admin")}
"""Rows the migrations add themselves (0006_teams: the bootstrap admin)."""


def key(row: dict[str, Any]) -> Any:
    return next(iter(row.values()))  # the primary key: every table's first column


def assert_rows_survived(path: Path, before: dict[str, list[dict[str, Any]]]) -> None:
    """Every row of ``before`` is there with its values; columns added since hold their
    defaults; every row reads back through the models' types (JSON, UTC datetimes)."""
    engine = make_engine(url_of(path), migrate=False)
    try:
        with engine.connect() as connection:
            after = snapshot(connection)
            for table, rows in before.items():
                now = {key(row): row for row in after[table]}
                added = {(table, k) for k in set(now) - {key(row) for row in rows}}
                assert added <= SEEDED, f"rows appeared in {table}: {added}"
                for row in rows:
                    for column, value in now[key(row)].items():
                        if column in row:
                            wanted = row[column]
                        else:
                            wanted = expected_new_value(connection, table, column)
                        assert value == wanted, f"{table}.{column} of {key(row)}: {value!r}"
            for table in Base.metadata.sorted_tables:  # the models' types read every value
                connection.execute(sa.select(table)).all()
    finally:
        engine.dispose()


def without_seeds(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {t: [r for r in rs if (t, key(r)) not in SEEDED] for t, rs in rows.items()}


@pytest.mark.parametrize("revision", REVISIONS)
def test_a_filled_database_of_every_revision_upgrades_with_every_row(
    tmp_path: Path, revision: str
) -> None:
    path = tmp_path / "syncbn.db"
    before = build(path, revision)
    assert stored_revision(url_of(path)) == revision
    assert sum(len(rows) for rows in before.values()) >= 8
    assert upgrade(url_of(path)) == head_revision()
    assert stored_revision(url_of(path)) == head_revision()
    assert_rows_survived(path, before)
    assert_matches_models(url_of(path))


def test_the_documented_one_step_downgrade_works_and_upgrades_again(tmp_path: Path) -> None:
    """``docs/operations.md#downgrade``'s command on a filled database at head (on SQLite a
    batch ALTER drops a table others refer to: the command line turns foreign keys off while
    it migrates, as the service does)."""
    path = tmp_path / "syncbn.db"
    build(path, head_revision())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCBN_", "DATABASE_URL"))}
    ini = "service/storage/migrations/alembic.ini"
    out = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", ini, "downgrade", "-1"],
        cwd=ROOT, env={**env, "DATABASE_URL": url_of(path)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    previous = REVISIONS[-2]
    assert stored_revision(url_of(path)) == previous
    downgraded = sa.create_engine(url_of(path))
    try:
        with downgraded.connect() as connection:
            kept = snapshot(connection)
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").first() is None
    finally:
        downgraded.dispose()
    fresh = tmp_path / "fresh.db"
    # what a database made at that revision holds (the seeded admin's creation time aside)
    assert without_seeds(kept) == without_seeds(build(fresh, previous))
    assert upgrade(url_of(path)) == head_revision()
    assert_rows_survived(path, kept)
    assert_matches_models(url_of(path))


def newer(path: Path) -> str:
    """A database at head that a newer release then upgraded (its revision unknown here)."""
    url = url_of(path)
    upgrade(url)
    engine = make_engine(url, migrate=False)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    engine.dispose()
    return url


def test_a_schema_newer_than_the_code_is_refused_naming_both_revisions(tmp_path: Path) -> None:
    url = newer(tmp_path / "syncbn.db")
    for attempt in (lambda: make_engine(url), lambda: check_schema(url), lambda: upgrade(url)):
        with pytest.raises(SchemaTooNew) as refused:
            attempt()
        message = str(refused.value)
        assert "'9999_future'" in message and f"{head_revision()!r}" in message
        assert isinstance(refused.value, RuntimeError)
    assert stored_revision(url) == "9999_future"  # left as it was


def test_the_service_refuses_to_start_on_a_newer_schema_with_exit_status_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    newer(home / "syncbn.db")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SYNCBN_", "RAY_", "DATABASE_URL"))
    }
    out = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env={**env, "SYNCBN_HOME": str(home)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "'9999_future'" in out.stderr and f"{head_revision()!r}" in out.stderr
    assert "Traceback" not in out.stderr and "Ray" not in out.stdout
    assert not (home / "ray").exists()  # refused before anything started
