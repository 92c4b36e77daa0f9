"""The unit tier's one in-process app: ``make_app``, and the ``app``, ``client`` and ``ray``
built with it.

- ``make_app(home=None, ray=None, **settings)``: ``inprocess.new_app`` on ``home``
  (``tmp_path`` unless given) with ``ray`` (a new ``FakeRay(cpus=2)`` unless given); the
  settings are ``inprocess.DEFAULTS`` (a migrated SQLite file of its own, ``inprocess.TOKEN``,
  the workers' ``python``), then the module's ``app_settings``, then ``settings``.
- ``app_settings``: ``{}``; a module overrides it to change every app it makes (e.g.
  ``inprocess.SERVICE_DEFAULTS``: a SQLite file and a token made in the home).
- ``ray``: the ``FakeRay`` of ``app`` (2 CPUs; a module overrides it for more).
- ``app``: ``make_app(ray=ray)``; ``client``: ``inprocess.local_client(app)``, without the
  lifespan (no scheduler loop: a test calls ``inprocess.tick(app)``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakeray import FakeRay
from fastapi import FastAPI
from fastapi.testclient import TestClient
from inprocess import local_client, new_app

MakeApp = Callable[..., FastAPI]


@pytest.fixture
def app_settings() -> dict[str, Any]:
    return {}


@pytest.fixture
def make_app(tmp_path: Path, app_settings: dict[str, Any]) -> MakeApp:
    def make(home: Path | None = None, ray: FakeRay | None = None, **settings: Any) -> FastAPI:
        return new_app(tmp_path if home is None else home, ray, **{**app_settings, **settings})

    return make


@pytest.fixture
def ray() -> FakeRay:
    return FakeRay(cpus=2)


@pytest.fixture
def app(make_app: MakeApp, ray: FakeRay) -> FastAPI:
    return make_app(ray=ray)


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return local_client(app)
