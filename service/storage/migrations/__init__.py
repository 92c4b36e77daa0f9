"""Alembic migrations of the service database (see ``service.storage.db.upgrade``)."""
