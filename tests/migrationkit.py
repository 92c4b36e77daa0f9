"""What the migration tests check on every backend (``tests/unit/test_migrations.py``: SQLite,
``tests/e2e/test_migrations_e2e.py``: a real PostgreSQL): the revision a database holds, and
that the migrations made exactly the models' schema.

``test_new_database_gets_head_and_the_models_schema`` is defined once, here, and collected in
both modules, each with its own ``database_url`` fixture (an empty database of its backend).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.storage.db import Database, current_revision, head_revision, make_engine, upgrade
from service.storage.tables import Base


def stored_revision(url: str) -> str | None:
    engine = make_engine(url, migrate=False)
    try:
        with engine.connect() as connection:
            return current_revision(connection)
    finally:
        engine.dispose()


def assert_matches_models(url: str) -> None:
    """The database has exactly the models' tables, columns, types, indexes, constraints."""
    engine = make_engine(url, migrate=False)
    try:
        with engine.connect() as connection:
            tables = set(sa.inspect(connection).get_table_names())
            assert tables == set(Base.metadata.tables) | {"alembic_version"}
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            assert diff == [], f"models and migrations differ (add a migration): {diff}"
    finally:
        engine.dispose()


# -- tests ---------------------------------------------------------------------------------------
def test_new_database_gets_head_and_the_models_schema(database_url: str) -> None:
    assert upgrade(database_url) == head_revision()
    assert stored_revision(database_url) == head_revision()
    assert_matches_models(database_url)
    assert upgrade(database_url) == head_revision()  # an up-to-date database is left alone
    db = Database(database_url)
    try:
        db.ping()
        with db.engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT count(*) FROM alembic_version")) == 1
    finally:
        db.close()
