"""Storage: the tables (``tables``), the engine and sessions with Alembic migrations (``db``,
``migrations/``), and every query (``store``: no SQL elsewhere)."""
