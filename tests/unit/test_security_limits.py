"""Safe by default, in process (FakeRay, a real SQLite file): what a request may cost. Rows of
issue 20's table that need no Ray, reproduced as the hostile client sent them.

- body limits per route (row 11): a code upload over the JSON limit is accepted, a chunked
  body over a route's limit is a 413 naming the setting; heavy requests beyond the cap are 429
  (row 8);
- no Ray call inside a database write transaction (row 9).

The app is ``make_app`` of ``conftest.py`` with the service's own defaults.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import numpy as np
import pytest
from fakeray import FakeRay
from hostile import chunked, unknown_fields_json, zip_bytes
from inprocess import GOOD, LOCAL, SERVICE_DEFAULTS, local_client, tick

from contract.protocol import INGEST_TOKEN_ENV
from service.api.middleware import Gate, RequestLimitsMiddleware, RouteLimits


@pytest.fixture
def app_settings() -> dict:
    """The service's own defaults: a SQLite file and an API token made in the home."""
    return SERVICE_DEFAULTS


# -- body limits and concurrency (rows 8, 11) -------------------------------------------------
def test_code_uploads_take_their_own_limit_not_the_json_one(client):
    asset = np.random.default_rng(0).bytes(3 << 20)  # incompressible, 3 MiB > the 1 MiB JSON cap
    blob = zip_bytes({"net.py": b"def build_model(s, n):\n    return None\n", "weights.bin": asset})
    response = client.post("/v1/code", files={"file": ("b.zip", blob)})
    assert response.status_code == 201, response.text
    assert client.post("/v1/jobs", content=b" " * (2 << 20)).status_code == 413


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/studies/base", "/v1/studies/arms"])
def test_a_body_of_unknown_fields_gets_a_422_of_bounded_size(client, route):
    """70,000 unknown fields: a job's 422 lists the first 20 errors and counts the rest, a
    study's names the first unknown field."""
    body = unknown_fields_json(route)
    assert len(body) <= 1 << 20
    path = route.removesuffix("/base").removesuffix("/arms")
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text[:300]
    assert len(response.content) < 8 << 10
    detail = response.json()["detail"]
    assert detail[0]["msg"].startswith("Extra inputs are not permitted")
    if route == "/v1/jobs":  # a study names the first unknown field only
        assert len(detail) == 21 and detail[-1]["msg"] == "and 69980 more errors", detail[-1]


@pytest.mark.parametrize(
    ("path", "setting", "limit_key"),
    [("/v1/jobs", "SYNCBN_MAX_BODY_BYTES", "max_body_bytes"),
     ("/v1/internal/jobs/j-0/events", "SYNCBN_MAX_INGEST_BYTES", "max_ingest_bytes"),
     ("/v1/jobs/j-0/predict", "SYNCBN_MAX_PREDICT_BYTES", "max_predict_bytes")],
)  # fmt: skip
def test_a_chunked_body_over_the_limit_is_a_413_naming_the_setting(
    tmp_path, make_app, path, setting, limit_key
):
    app = make_app(tmp_path, **{limit_key: 256 << 10})
    c = local_client(app)
    if path.startswith("/v1/internal/"):  # a job's own ingest token: a stranger gets a 401
        job_id = c.post("/v1/jobs", json=GOOD).json()["id"]
        tick(app)
        path = path.replace("j-0", job_id)
        token = app.state.services.ray.jobs[job_id].env[INGEST_TOKEN_ENV]
        c.headers["Authorization"] = f"Bearer {token}"
    response = c.post(path, content=chunked(1 << 20), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert setting in response.json()["detail"]
    declared = c.post(path, content=b"{}", headers={"Content-Length": "9" * 30})
    assert declared.status_code == 413
    garbled = c.post(path, content=b"{}", headers={"Content-Length": "2x"})
    assert garbled.status_code == 400 and "Content-Length" in garbled.json()["detail"]


def test_heavy_requests_beyond_the_cap_get_429_with_retry_after():
    """Requests past a gate's cap are answered at once, before their body is read; the others
    go through; the gate empties when they end."""
    release = asyncio.Event()
    bodies_read: list[int] = []

    async def slow_app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        bodies_read.append(len(body))
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gate = Gate("predict", 2, "max_concurrent_predicts")
    limits = RouteLimits(1 << 20, "max_predict_bytes", "predict")
    app = RequestLimitsMiddleware(slow_app, lambda m, p: limits, {"predict": gate})

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as c:
            held = [asyncio.create_task(c.post("/p", content=b"x")) for _ in range(2)]
            while len(bodies_read) < 2:
                await asyncio.sleep(0.01)
            refused = [await c.post("/p", content=b"y" * 1000) for _ in range(3)]
            release.set()
            return refused + [await task for task in held]

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [429, 429, 429, 200, 200]
    assert responses[0].headers["retry-after"] == "2"
    assert "SYNCBN_MAX_CONCURRENT_PREDICTS=2" in responses[0].json()["detail"]
    assert bodies_read == [1, 1] and gate.inside == 0


# -- no Ray call inside a write transaction (row 9) -------------------------------------------
class LockCheckingRay(FakeRay):
    """Fails a submit or stop made while the service holds SQLite's write lock: another
    connection must be able to write at once (reports arrive during a submit)."""

    db_path: Path | None = None

    def _writable(self) -> None:
        connection = sqlite3.connect(self.db_path, timeout=0.05)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.rollback()
        finally:
            connection.close()

    def submit(self, job_id, entrypoint, env, runtime_env=None):
        self._writable()
        super().submit(job_id, entrypoint, env, runtime_env)

    def stop(self, job_id):
        self._writable()
        super().stop(job_id)


def test_the_scheduler_never_calls_ray_while_holding_the_database(tmp_path, make_app):
    """The second submit of a tick (a code bundle's, whose working_dir Ray uploads) used to run
    after the first job's state change was flushed: under SQLite's write lock."""
    ray = LockCheckingRay(cpus=4)
    ray.db_path = tmp_path / "syncbn.db"
    app = make_app(tmp_path, ray)
    c = local_client(app)
    blob = zip_bytes({"net.py": b"def build_model(s, n):\n    return None\n"})
    bundle = c.post("/v1/code", files={"file": ("b.zip", blob)}).json()
    with_code = {**GOOD, "code": bundle["id"], "model": "net:build_model"}
    jobs = [c.post("/v1/jobs", json=spec).json() for spec in (GOOD, with_code)]
    tick(app)
    assert {c.get(f"/v1/jobs/{j['id']}").json()["state"] for j in jobs} == {"pending"}
    assert "working_dir" in ray.jobs[jobs[1]["id"]].runtime_env
    ray.restart()  # the cluster lost them: they are resubmitted (more submits)
    tick(app)
    assert all(j["id"] in ray.jobs for j in jobs)
    assert c.post(f"/v1/jobs/{jobs[0]['id']}/cancel").json()["state"] == "cancelled"


def test_a_job_cancelled_while_it_is_submitted_is_stopped_on_ray(tmp_path, make_app):
    app_box: list = []

    class CancelDuringSubmit(FakeRay):
        def submit(self, job_id, entrypoint, env, runtime_env=None):
            super().submit(job_id, entrypoint, env, runtime_env)
            app_box[0].state.services.lifecycle.cancel(job_id)  # the user, meanwhile

    ray = CancelDuringSubmit(cpus=2)
    app = make_app(tmp_path, ray)
    app_box.append(app)
    c = local_client(app)
    job = c.post("/v1/jobs", json=GOOD).json()
    tick(app)
    assert c.get(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"
    assert ray.stopped == [job["id"]] and ray.jobs[job["id"]].status == "STOPPED"
