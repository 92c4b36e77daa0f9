"""Schema migrations (Alembic, ``service/storage/migrations``) on a real PostgreSQL, and the
upgrade of the release before migrations by the real service, on SQLite and PostgreSQL.

- A database made by the release before migrations (``fixtures/syncbn-v0.sql``: one succeeded
  job with its reports, evaluations and events, one uploaded dataset) is upgraded when the real
  service starts on it, and everything reads back through the REST API.
- A new PostgreSQL database gets the newest revision, and the migrations make exactly the
  tables of ``service.storage.tables`` (the same check on SQLite is in
  ``tests/unit/test_migrations.py``).
- PostgreSQL: ``initdb`` + ``pg_ctl`` from the Debian server binaries, as the ``postgres`` user.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from migrationkit import (
    assert_matches_models,
    stored_revision,
    test_new_database_gets_head_and_the_models_schema,  # noqa: F401 (a test)
)
from servicekit import ServiceProcess

from contract.spec import JobSpec
from service.cluster.embedded_ray import free_ports
from service.storage.db import head_revision

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "syncbn-v0.sql"
PG_BIN = Path(os.environ.get("SYNCBN_PG_BIN", "/usr/lib/postgresql/15/bin"))
BACKENDS = ["sqlite", "postgresql"]


# -- the fixture, read with the sqlite3 module only (not through the service's code) ------------
def fixture_rows() -> dict[str, list[dict[str, Any]]]:
    """Every row of the v0 fixture, per table, ordered by primary key."""
    connection = sqlite3.connect(":memory:")
    connection.row_factory = sqlite3.Row
    connection.executescript(FIXTURE.read_text())
    tables = [
        r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    ]
    rows = {
        t: [dict(r) for r in connection.execute(f"SELECT * FROM {t} ORDER BY id")] for t in tables
    }
    connection.close()
    return rows


def load_fixture_sqlite(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    connection.executescript(FIXTURE.read_text())
    connection.close()


def load_fixture_postgres(url: str) -> None:
    """The v0 database as the old release made it on PostgreSQL: the fixture's own tables
    (reflected from SQLite; ``UTCDateTime`` was ``timestamptz`` there), rows, sequences."""
    with tempfile.TemporaryDirectory() as directory:
        source_path = Path(directory) / "v0.db"
        load_fixture_sqlite(source_path)
        source = sa.create_engine(f"sqlite:///{source_path}")
        metadata = sa.MetaData()
        metadata.reflect(source)
        for table in metadata.tables.values():
            for column in table.columns:
                if isinstance(column.type, sa.DateTime):
                    column.type = sa.DateTime(timezone=True)
                elif isinstance(column.type, sa.JSON):
                    column.type = sa.JSON()
        target = sa.create_engine(url)
        try:
            metadata.create_all(target)
            with source.connect() as reader, target.begin() as writer:
                for table in metadata.sorted_tables:
                    rows = [dict(r._mapping) for r in reader.execute(sa.select(table))]
                    for row in rows:
                        for key, value in row.items():
                            if isinstance(value, datetime):
                                row[key] = value.replace(tzinfo=UTC)
                    if rows:
                        writer.execute(table.insert(), rows)
                    if isinstance(table.c.id.type, sa.Integer):
                        writer.execute(
                            sa.text(
                                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                f"(SELECT max(id) FROM {table.name}))"
                            )
                        )
        finally:
            source.dispose()
            target.dispose()


# -- a real PostgreSQL server --------------------------------------------------------------------
class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (``initdb``, ``pg_ctl``), trust auth."""

    def __init__(self) -> None:
        binary = PG_BIN / "postgres"
        if not binary.exists():
            pytest.fail(
                f"PostgreSQL server binaries not found ({binary}): install the Debian package "
                "postgresql-15 or set SYNCBN_PG_BIN to the directory holding initdb and pg_ctl"
            )
        self.directory = Path(tempfile.mkdtemp(prefix="syncbn-pg-"))
        self.data = self.directory / "data"
        self.port = free_ports(1)[0]
        self._databases = 0
        # postgres refuses to run as root: run its binaries as the postgres system user.
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.prefix:
            shutil.chown(self.directory, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            log = self.directory / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed:\n{result.stdout}\n{result.stderr}\n{tail}")

    def start(self) -> Postgres:
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        options = f"-h 127.0.0.1 -p {self.port} -k {self.directory} -F -c timezone=UTC"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "server.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def new_database(self) -> str:
        """A new empty database; its SQLAlchemy URL (psycopg 3)."""
        self._databases += 1
        name = f"syncbn_{self._databases}"
        admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(params=["postgresql"])
def database_url(request) -> str:
    """An empty database: a new database on the PostgreSQL server."""
    return request.getfixturevalue("postgres").new_database()


@pytest.mark.parametrize("backend", BACKENDS)
def test_service_upgrades_a_v0_database(backend: str, request, tmp_path: Path, ray_head) -> None:
    """The real service starts on the old release's database and serves all of it."""
    home = tmp_path / "home"
    env = {"SYNCBN_MAX_RUNNING_JOBS": "0"}
    if backend == "sqlite":
        url = f"sqlite:///{home / 'syncbn.db'}"
        load_fixture_sqlite(home / "syncbn.db")
    else:
        url = request.getfixturevalue("postgres").new_database()
        load_fixture_postgres(url)
        env["DATABASE_URL"] = url
    assert stored_revision(url) is None  # no alembic_version: made before migrations
    rows = fixture_rows()
    (stored_job,) = rows["jobs"]
    (stored_dataset,) = rows["datasets"]
    job_id = stored_job["id"]

    service = ServiceProcess(home, ray_head.dashboard_url, env=env)
    service.start()
    try:
        client = service.client
        job = service.job(job_id)
        assert job["state"] == "succeeded"
        stored_spec = json.loads(stored_job["spec"])  # newer fields take their defaults
        assert job["spec"] == {**JobSpec.model_validate(stored_spec).model_dump(), **stored_spec}
        assert job["result"] == {
            "test_accuracy": stored_job["test_accuracy"],
            "test_loss": stored_job["test_loss"],
            "test_miou": None,
            "epochs_completed": stored_job["epoch"],
            "wall_time_s": stored_job["wall_time_s"],
        }
        assert job["progress"]["fraction"] == 1.0
        assert job["progress"]["step"] == stored_job["step"]
        assert parse(job["created_at"]) == parse(stored_job["created_at"])
        assert parse(job["finished_at"]) == parse(stored_job["finished_at"])
        assert [(t["state"], t["reason"], parse(t["at"])) for t in job["transitions"]] == [
            (t["state"], t["reason"], parse(t["at"])) for t in rows["transitions"]
        ]

        metrics = client.get(f"/v1/jobs/{job_id}/metrics")
        assert metrics.status_code == 200, metrics.text
        reports = metrics.json()["reports"]
        workers = {r["id"]: [] for r in rows["reports"]}
        for stats in rows["worker_stats"]:
            workers[stats["report_id"]].append(json.loads(stats["data"]))
        assert len(reports) == len(rows["reports"]) == 6
        assert {(r["kind"], r["epoch"], r["step"], r["time"]) for r in reports} == {
            (r["kind"], r["epoch"], r["step"], r["time"]) for r in rows["reports"]
        }
        by_key = {(r["kind"], r["epoch"], r["step"]): r for r in reports}
        for stored in rows["reports"]:
            served = by_key[(stored["kind"], stored["epoch"], stored["step"])]
            expected = sorted(workers[stored["id"]], key=lambda w: w["rank"])
            assert [stats_of(w) for w in served["workers"]] == [stats_of(w) for w in expected]
            assert [w["rank"] for w in served["workers"]] == [0, 1]
        assert metrics.json()["evaluations"] == [
            {k: e.get(k) for k in ("epoch", "step", "test_accuracy", "test_loss", "test_miou")}
            for e in rows["evaluations"]
        ]

        latest = client.get(f"/v1/jobs/{job_id}/workers").json()
        assert (latest["epoch"], latest["step"]) == (2, 44)
        assert [w["rank"] for w in latest["workers"]] == [0, 1]
        assert [stats_of(w) for w in latest["workers"]] == [
            stats_of(json.loads(s["data"])) for s in rows["worker_stats"][-2:]
        ]
        assert stats_of(latest["workers"][1])["test_accuracy"] == stored_job["test_accuracy"]

        listed = client.get("/v1/jobs").json()
        assert listed["total"] == 1
        assert [(j["id"], j["state"]) for j in listed["jobs"]] == [(job_id, "succeeded")]
        assert client.get("/v1/jobs", params={"state": "succeeded"}).json()["total"] == 1

        datasets = client.get("/v1/datasets").json()["datasets"]
        assert [
            {k: d[k] for k in ("id", "name", "size_bytes", "n_train", "n_test", "num_classes")}
            for d in datasets
        ] == [
            {
                k: stored_dataset[k]
                for k in ("id", "name", "size_bytes", "n_train", "n_test", "num_classes")
            }
        ]
        assert datasets[0]["input_shape"] == json.loads(stored_dataset["input_shape"])
        assert parse(datasets[0]["created_at"]) == parse(stored_dataset["created_at"])

        events = client.get(f"/v1/jobs/{job_id}/events", timeout=30)
        assert events.status_code == 200
        assert events.text.count("event: report") == 6
        assert events.text.count("event: state") == 4
    finally:
        service.stop()
    assert stored_revision(url) == head_revision()
    assert_matches_models(url)


STAT_KEYS = (
    "rank",
    "epoch",
    "step",
    "batch_size",
    "samples",
    "loss",
    "train_accuracy",
    "samples_per_s",
    "step_time_s",
    "sync_time_s",
)
BN_KEYS = ("local_count", "global_count", "mean_shift", "var_ratio")


def stats_of(worker: dict[str, Any]) -> dict[str, Any]:
    """The per-worker statistics every release reports (extra fields may come and go)."""
    stats = {key: worker[key] for key in STAT_KEYS}
    stats["bn"] = {name: {k: layer[k] for k in BN_KEYS} for name, layer in worker["bn"].items()}
    for key in ("test_accuracy", "test_loss"):
        if worker.get(key) is not None:
            stats[key] = worker[key]
    return stats


def parse(value: str) -> datetime:
    """An ISO or SQLite (naive UTC) timestamp as an aware datetime."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
