"""Database engine and sessions (SQLAlchemy 2; SQLite in WAL mode by default, PostgreSQL too).

The schema is managed by Alembic (``service/storage/migrations``): ``make_engine`` (and so every
``Database``) brings the database to the newest revision with ``upgrade`` first, and refuses a
database whose revision this release does not know (``SchemaTooNew``: a newer release upgraded
it; ``docs/operations.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

T = TypeVar("T")
logger = logging.getLogger("service.storage.db")
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
BASELINE = "0001_initial"
"""The revision of the schema that releases before migrations made with ``create_all``."""
BASELINE_TABLES = frozenset(
    {"jobs", "transitions", "reports", "worker_stats", "evaluations", "events", "datasets"}
)
MIGRATION_LOCK = 0x5359_4E43_424E  # PostgreSQL advisory lock key: one migrator at a time


class SchemaTooNew(RuntimeError):
    """The database's schema revision is unknown to this release: a newer release upgraded it.
    ``python -m service`` prints the message and exits with status 2."""

    def __init__(self, found: str, head: str) -> None:
        self.found, self.head = found, head
        super().__init__(
            f"the database's schema revision {found!r} is unknown to this release (the newest "
            f"it knows: {head!r}): a newer release upgraded it. Run that release again, or "
            "restore the backup taken before the upgrade (docs/operations.md#a-failed-upgrade)"
        )


def is_memory_url(url: str) -> bool:
    """True for an in-memory SQLite database (``sqlite://``, ``sqlite:///:memory:``)."""
    return url.startswith("sqlite") and url.split("?", 1)[0].split("//", 1)[-1] in ("", "/:memory:")


def make_engine(url: str, migrate: bool = True) -> Engine:
    """An engine for ``url``, upgraded to the newest schema (``upgrade``) unless not ``migrate``.

    For SQLite: the parent directory, WAL, busy timeout, foreign keys; an in-memory database
    is one connection shared by every thread (``StaticPool``), so it outlives the migration.
    """
    if url.startswith("sqlite"):
        options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if is_memory_url(url):
            options["poolclass"] = StaticPool
        else:
            path = url.split("///", 1)[-1].split("?", 1)[0]
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **options)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    else:
        engine = create_engine(url, pool_pre_ping=True)
    if migrate:
        upgrade(engine)
    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, made in code (no ``alembic.ini``); runs on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this release knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision stored in ``alembic_version`` (None: none there)."""
    return MigrationContext.configure(connection).get_current_revision()


def check_known(current: str | None, scripts: ScriptDirectory | None = None) -> None:
    """``SchemaTooNew`` unless ``current`` (a database's revision; None: none yet) is one
    this release knows."""
    scripts = scripts or ScriptDirectory.from_config(alembic_config())
    if current is not None and current not in {rev.revision for rev in scripts.walk_revisions()}:
        head = scripts.get_current_head()
        raise SchemaTooNew(current, str(head))


def check_schema(url: str) -> None:
    """``SchemaTooNew`` if the database at ``url`` was upgraded by a newer release: what
    ``python -m service`` checks before it starts anything."""
    engine = make_engine(url, migrate=False)
    try:
        with engine.connect() as connection:
            check_known(current_revision(connection))
    finally:
        engine.dispose()


def upgrade(engine_or_url: Engine | str) -> str:
    """Bring the database to the newest revision; returns it.

    A new (empty) database gets every revision. One a release before migrations made (its
    tables, no ``alembic_version``) is first stamped at ``BASELINE``. One already at the newest
    revision is left as it is. PostgreSQL: concurrent callers wait on an advisory lock; SQLite:
    foreign keys are off while migrating (batch ALTERs copy tables), then checked.
    """
    if isinstance(engine_or_url, str):
        engine = make_engine(engine_or_url, migrate=False)
        try:
            return upgrade(engine)
        finally:
            engine.dispose()
    engine = engine_or_url
    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    assert head is not None
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        current = current_revision(connection)
        connection.rollback()
        if current == head:
            return head
        check_known(current, scripts)
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                _migrate(connection, scripts, head)
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise RuntimeError("the migration left rows violating foreign keys")
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()
    return head


def _migrate(connection: Connection, scripts: ScriptDirectory, head: str) -> None:
    """Stamp a pre-migrations database, then upgrade to ``head`` (inside the caller's
    transaction, after the lock: another process may have done it meanwhile)."""
    current = current_revision(connection)
    if current == head:
        return
    config = alembic_config(connection)
    if current is None:
        tables = set(inspect(connection).get_table_names()) & BASELINE_TABLES
        if tables == BASELINE_TABLES:
            logger.info("database made before migrations: stamping it at %s", BASELINE)
            command.stamp(config, BASELINE)
            current = BASELINE
        elif tables:
            raise RuntimeError(
                f"unrecognized database schema: some tables ({', '.join(sorted(tables))}) but "
                f"not all of {', '.join(sorted(BASELINE_TABLES))}, and no alembic_version"
            )
    else:
        check_known(current, scripts)
    logger.info("upgrading database schema from %s to %s", current or "nothing", head)
    command.upgrade(config, "head")


class Database:
    """The engine plus a ``session()`` context manager that commits or rolls back, and
    ``read()`` for the API's small reads."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.reads_inline = self.engine.dialect.name == "sqlite"
        """Whether ``read()`` runs on the caller's thread: SQLite is a local file and, in WAL
        mode, a reader never waits for a writer, so a read is pure CPU work that holds the GIL
        in any thread. A server database's reads wait on the network: they go to a thread."""

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    async def read(self, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` for an ``async`` route whose read is small and bounded (one job, a
        page of jobs): inline for SQLite (``reads_inline``), else in a worker thread. Inline,
        ``GET /v1/jobs/{id}`` skips a thread-pool hop that cost 1.3 of its 2.0 ms under load
        (``benchmarks/api_load.py``); the largest such read, a page of 500 jobs, holds the loop
        for about 40 ms. Writes, and reads that grow with a job's history, stay in sync routes
        (the thread pool): they may wait on a lock."""
        if self.reads_inline:
            return self._read(fn)
        return await anyio.to_thread.run_sync(self._read, fn)

    def _read(self, fn: Callable[[Session], T]) -> T:
        with self.session() as session:
            return fn(session)

    def on_session(self, name: str, listener: Callable[..., Any]) -> None:
        """Call ``listener`` on the SQLAlchemy session event ``name`` (``after_flush``,
        ``after_commit``...) of every session made here: ``service.jobs.events`` wakes the
        event streams of a job after a commit that added its events."""
        event.listen(self._sessions, name, listener)

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
