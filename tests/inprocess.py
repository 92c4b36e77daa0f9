"""The unit tier's service: the app with ``FakeRay`` in this process, and a ``TestClient`` that
calls it as a client on this machine would (``Host: 127.0.0.1``, the API token in the header).

``new_app`` is the one way the tests build an app (``tests/unit/conftest.py`` wraps it in the
``make_app`` fixture; the OpenAPI snapshot script calls it directly). Its scheduler loop is not
started (no lifespan, unless the test enters the ``TestClient``): a test calls ``tick(app)``.
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fakeray import FakeRay
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.storage.db import Database

LOCAL = "http://127.0.0.1"
TOKEN = "unit-token"
FRESH_DATABASE = "fresh"
"""``database_url`` for a new database of its own, already migrated (``fresh_database``)."""
DEFAULTS: dict[str, Any] = {
    "database_url": FRESH_DATABASE,
    "api_token": TOKEN,
    "worker_python": "python",
}
"""The in-process app's settings unless a test says otherwise: a new database of its own,
``TOKEN`` and the workers' ``python``. Always passed, so none of them comes from the calling
shell's ``SYNCBN_*`` or ``DATABASE_URL`` variables."""
SERVICE_DEFAULTS: dict[str, Any] = {"database_url": None, "api_token": None}
"""What ``python -m service`` does without them: SQLite in the home (``syncbn.db``) and an API
token made there on first start (``api-token``)."""
GOOD = {"dataset": "synthetic", "workers": 2, "batch_size_per_worker": 8, "epochs": 2}
"""A small job that fits ``FakeRay(cpus=2)``."""


def new_app(home: Path, ray: FakeRay | None = None, **settings: Any) -> FastAPI:
    """The service on ``home`` with ``ray`` (a ``FakeRay`` with 2 CPUs unless given) and
    ``DEFAULTS`` overridden by ``settings``."""
    options = {"home": home, **DEFAULTS, **settings}
    if options["database_url"] == FRESH_DATABASE:
        options["database_url"] = fresh_database()
    return create_app(Settings(**options), ray=FakeRay(cpus=2) if ray is None else ray)


_copies = itertools.count()
_folder: Path | None = None


def fresh_database() -> str:
    """The URL of a new SQLite file outside any home: a copy of one migrated once per process
    (migrating a new database takes about 65 ms, a copy well under 1; ``test_migrations`` and
    ``test_upgrades`` migrate their own)."""
    global _folder
    if _folder is None:
        _folder = Path(tempfile.mkdtemp(prefix="syncbn-unit-db-"))
        atexit.register(shutil.rmtree, _folder, ignore_errors=True)
        template = Database(f"sqlite:///{_folder / 'template.db'}")
        template.engine.dispose()  # its WAL goes into the file
    copy = _folder / f"{next(_copies)}.db"
    shutil.copyfile(_folder / "template.db", copy)
    return f"sqlite:///{copy}"


def local_client(app: FastAPI, **headers: str) -> TestClient:
    """A ``TestClient`` of ``app`` on loopback with its API token (and ``headers``)."""
    token = app.state.settings.api_token
    return TestClient(app, base_url=LOCAL, headers={"Authorization": f"Bearer {token}", **headers})


def tick(app: FastAPI) -> None:
    """One pass of the scheduler, as its loop would run it."""
    app.state.services.scheduler.tick()
