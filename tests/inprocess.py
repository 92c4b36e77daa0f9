"""The in-process tier's client: the app with ``FakeRay``, called through ``TestClient`` as a
client on this machine would call it (``Host: 127.0.0.1``, the API token in the header)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

LOCAL = "http://127.0.0.1"


def local_client(app: FastAPI, **headers: str) -> TestClient:
    """A ``TestClient`` of ``app`` on loopback with its API token (and ``headers``)."""
    token = app.state.settings.api_token
    return TestClient(app, base_url=LOCAL, headers={"Authorization": f"Bearer {token}", **headers})
