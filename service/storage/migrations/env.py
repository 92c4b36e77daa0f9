"""Alembic environment: runs on the connection ``service.storage.db.upgrade`` hands over.

Without one (the ``alembic`` command line with ``alembic.ini``, e.g. to autogenerate a new
revision, or ``downgrade -1``: ``docs/operations.md``) it connects to ``sqlalchemy.url`` if set,
else to the service's own database URL; on SQLite with foreign keys off while it migrates (a
batch ALTER copies and drops a table others refer to), checked before it commits, as
``service.storage.db.upgrade`` does. Revisions render in batch mode (``render_as_batch``), so
ALTERs also work on SQLite.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from service.storage.tables import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def render_item(kind: str, item: Any, autogen_context: Any) -> str | bool:
    """Render the models' ``UTCDateTime`` as its portable implementation type."""
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        render_item=render_item,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    from service.settings import Settings
    from service.storage.db import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url") or Settings().db_url, False)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            with connection.begin():
                run(connection)
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise RuntimeError("the migration left rows violating foreign keys")
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run them on a database")
run_online()
