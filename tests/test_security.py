"""Safe by default, in process (FakeRay, a real SQLite file): each row of issue 20's table that
needs no Ray, reproduced as the hostile client sent it, and asserted refused (4xx, never a 500).

- always a credential: a token made on first start (0600, created atomically), 401 without it
  on every data route, on loopback too; unsafe starts refused;
- Host and Origin: a rebound Host and a cross-site POST are 403 (row 1);
- body limits per route (row 11): a code upload over the JSON limit is accepted, a chunked
  body over a route's limit is a 413 naming the setting; heavy requests beyond the cap are 429;
- ingest integrity (rows 6, 13): reports of a finished job (409), past the spec or with huge
  integers (422), NaN (422); Last-Event-ID of 30 or 5000 digits (422);
- no Ray call inside a database write transaction (row 9);
- DELETE of jobs, studies, datasets and code bundles with their files; stale temporary files
  swept at start.
"""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from fakeray import FakeRay
from fastapi.testclient import TestClient
from hostile import chunked, zip_bytes
from inprocess import LOCAL, local_client

from contract.protocol import INGEST_TOKEN_ENV
from service.api.credentials import (
    UnsafeStart,
    check_exposure,
    ensure_api_token,
    weakness,
    write_secret_once,
)
from service.api.middleware import Gate, RequestLimitsMiddleware, RouteLimits, host_name
from service.app import create_app
from service.settings import Settings

GOOD = {"dataset": "synthetic", "workers": 2, "batch_size_per_worker": 8, "epochs": 2}


def make_app(home: Path, ray: FakeRay | None = None, **settings):
    options = {"home": home, "database_url": f"sqlite:///{home / 'syncbn.db'}", **settings}
    return create_app(Settings(**options), ray=ray or FakeRay(cpus=2))


@pytest.fixture
def ray() -> FakeRay:
    return FakeRay(cpus=2)


@pytest.fixture
def app(tmp_path, ray):
    return make_app(tmp_path, ray)


@pytest.fixture
def client(app) -> TestClient:
    """The app's client without its lifespan: no scheduler loop runs beside the tests' own
    ``tick`` (``test_stale_temporary_files_are_swept_at_start`` runs the lifespan)."""
    return local_client(app)


def tick(app) -> None:
    app.state.services.scheduler.tick()


def ingest(client, job_id: str, event: dict, token: str | None = None) -> httpx.Response:
    ray = client.app.state.services.ray
    token = token or ray.jobs[job_id].env[INGEST_TOKEN_ENV]
    return client.post(
        f"/v1/internal/jobs/{job_id}/events",
        json=event,
        headers={"Authorization": f"Bearer {token}"},
    )


def step_report(epoch: int, step: int, **worker) -> dict:
    return {
        "type": "report", "kind": "step", "epoch": epoch, "step": step,
        "workers": [{"rank": 0, "world_size": 2, "epoch": epoch, "step": step, **worker}],
    }  # fmt: skip


def loc_of(response: httpx.Response) -> list[list]:
    return [error["loc"] for error in response.json()["detail"]]


# -- a credential always --------------------------------------------------------------------
def test_a_fresh_home_gets_a_private_token_and_every_data_route_needs_it(tmp_path):
    app = make_app(tmp_path)
    token_file = tmp_path / "api-token"
    token = token_file.read_text().strip()
    assert len(token) >= 32 and weakness(token) is None
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert app.state.settings.api_token == token
    with TestClient(app, base_url=LOCAL) as anonymous:  # lifespan: the sweep runs too
        for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("POST", "/v1/code"),
                             ("GET", "/v1/datasets"), ("GET", "/readyz"), ("GET", "/metrics"),
                             ("DELETE", "/v1/jobs/j-0"), ("GET", "/v1/studies")]:  # fmt: skip
            assert anonymous.request(method, path).status_code == 401, (method, path)
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/").status_code == 200  # the page shell carries no data
        authed = {"Authorization": f"Bearer {token}"}
        assert anonymous.get("/v1/jobs", headers=authed).status_code == 200
    # A second start (a restart, or a second process) keeps the same token.
    assert make_app(tmp_path).state.settings.api_token == token


def test_the_token_file_is_created_once_even_by_racing_processes(tmp_path):
    target = tmp_path / "home" / "api-token"
    code = (
        "import sys, secrets; from pathlib import Path;"
        "from service.api.credentials import write_secret_once;"
        "print(write_secret_once(Path(sys.argv[1]), secrets.token_urlsafe(32)))"
    )
    racers = [
        subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE)
        for _ in range(6)
    ]
    seen = {racer.communicate(timeout=60)[0].decode().strip() for racer in racers}
    assert seen == {target.read_text().strip()}, "every process must agree on one token"
    assert sorted(p.name for p in target.parent.iterdir()) == ["api-token"]  # no leftovers
    assert write_secret_once(target, "other") == target.read_text().strip()


@pytest.mark.parametrize(
    ("host", "token", "refused"),
    [("127.0.0.1", None, None), ("127.0.0.1", "short", None), ("localhost", "x", None),
     ("0.0.0.0", None, "without SYNCBN_API_TOKEN"),
     ("0.0.0.0", "REPLACE-ME-api-token", "placeholder"),
     ("0.0.0.0", "abcdefghijklmnopqrstuvw", "23 characters, fewer than 24"),
     ("10.0.0.5", "a" * 40, "distinct characters"),
     ("0.0.0.0", "k3Jd9sLq0PzX8vN2mB7tR4wY6u", None)],
)  # fmt: skip
def test_listening_beyond_loopback_needs_a_real_token(host, token, refused):
    settings = Settings(host=host, api_token=token)
    if refused is None:
        check_exposure(settings)
    else:
        with pytest.raises(UnsafeStart, match=refused):
            check_exposure(settings)


def test_the_service_refuses_an_unsafe_start_before_starting_anything(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCBN_", "RAY_"))}
    for token in (None, "REPLACE-ME-api-token", "tiny"):
        run_env = {**env, "SYNCBN_HOME": str(tmp_path), "SYNCBN_HOST": "0.0.0.0", "PORT": "1"}
        if token:
            run_env["SYNCBN_API_TOKEN"] = token
        done = subprocess.run(
            [sys.executable, "-m", "service"], env=run_env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "refusing to start" in done.stderr and "SYNCBN_API_TOKEN" in done.stderr
    assert not (tmp_path / "ray").exists() and not (tmp_path / "api-token").exists()


def test_an_explicit_token_is_used_and_no_file_is_written(tmp_path):
    settings = Settings(home=tmp_path, api_token="operator-secret")
    assert ensure_api_token(settings) == "operator-secret"
    assert not (tmp_path / "api-token").exists()


# -- Host and Origin (row 1) ------------------------------------------------------------------
def test_a_rebound_host_cannot_upload_code_or_submit(client):
    rebound = {
        "Host": "rebound.attacker.example:8000",
        "Origin": "http://rebound.attacker.example:8000",
    }
    bundle = {"file": ("b.zip", zip_bytes({"m.py": b"def build_model(s, n): pass\n"}))}
    response = client.post("/v1/code", files=bundle, headers=rebound)
    assert response.status_code == 403 and "SYNCBN_ALLOWED_HOSTS" in response.json()["detail"]
    assert client.post("/v1/jobs", json=GOOD, headers=rebound).status_code == 403
    assert client.get("/v1/jobs", headers=rebound).status_code == 403
    assert client.get("/", headers=rebound).status_code == 403
    assert client.get("/healthz", headers=rebound).status_code == 200  # probes come by IP
    for name in (
        "localhost:8000",
        "127.0.0.1",
        "[::1]:8000",
        "LOCALHOST.",
        "10.1.2.3:8000",
        "[fe80::1]",
    ):  # an address is no rebinding: its page is on its own origin
        assert client.get("/v1/jobs", headers={"Host": name}).status_code == 200, name


def test_allowed_hosts_and_the_public_url_are_answered(tmp_path):
    app = make_app(
        tmp_path, allowed_hosts="syncbn.example.com", public_url="http://syncbn-service:8000"
    )
    token = app.state.settings.api_token
    c = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    for host, status in [("syncbn.example.com", 200), ("syncbn-service:8000", 200),
                         ("testserver", 403), ("evil.example.com", 403)]:  # fmt: skip
        assert c.get("/v1/jobs", headers={"Host": host}).status_code == status, host


def test_cross_site_requests_that_change_state_are_refused(client):
    job = client.post("/v1/jobs", json=GOOD).json()
    cancel = f"/v1/jobs/{job['id']}/cancel"
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": "http://127.0.0.1:9999"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):  # fmt: skip
        response = client.post(cancel, headers=headers)
        assert response.status_code == 403, headers
        assert "cross-site" in response.json()["detail"]
    assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued"
    same = {"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"}  # the page itself
    assert client.get("/v1/jobs", headers={"Origin": "http://evil.example"}).status_code == 200
    assert client.post(cancel, headers=same).json()["state"] == "cancelled"


def test_host_names_are_parsed_like_browsers_send_them():
    assert host_name("Example.COM:8000") == "example.com"
    assert host_name("[::1]:8000") == "::1" and host_name("::1") == "::1"
    assert host_name("localhost.") == "localhost" and host_name("[broken") == ""


# -- body limits and concurrency (rows 8, 11) -------------------------------------------------
def test_code_uploads_take_their_own_limit_not_the_json_one(client):
    asset = np.random.default_rng(0).bytes(3 << 20)  # incompressible, 3 MiB > the 1 MiB JSON cap
    blob = zip_bytes({"net.py": b"def build_model(s, n):\n    return None\n", "weights.bin": asset})
    response = client.post("/v1/code", files={"file": ("b.zip", blob)})
    assert response.status_code == 201, response.text
    assert client.post("/v1/jobs", content=b" " * (2 << 20)).status_code == 413


@pytest.mark.parametrize(
    ("path", "setting", "limit_key"),
    [("/v1/jobs", "SYNCBN_MAX_BODY_BYTES", "max_body_bytes"),
     ("/v1/internal/jobs/j-0/events", "SYNCBN_MAX_INGEST_BYTES", "max_ingest_bytes"),
     ("/v1/jobs/j-0/predict", "SYNCBN_MAX_PREDICT_BYTES", "max_predict_bytes")],
)  # fmt: skip
def test_a_chunked_body_over_the_limit_is_a_413_naming_the_setting(
    tmp_path, path, setting, limit_key
):
    app = make_app(tmp_path, **{limit_key: 256 << 10})
    c = local_client(app)
    response = c.post(path, content=chunked(1 << 20), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert setting in response.json()["detail"]
    declared = c.post(path, content=b"{}", headers={"Content-Length": "9" * 30})
    assert declared.status_code == 413


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


# -- ingest integrity (rows 6 and 13) ---------------------------------------------------------
def test_reports_of_a_finished_job_are_refused(client, app, ray):
    job = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    assert ingest(client, job["id"], step_report(1, 4, loss=0.5)).json() == {"stored": True}
    ray.set_status(job["id"], "SUCCEEDED")
    tick(app)
    assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "succeeded"
    forged = step_report(2, 128, test_accuracy=1.0)
    forged["kind"] = "epoch"
    response = ingest(client, job["id"], forged)
    assert response.status_code == 409 and "closed" in response.json()["detail"]
    exception = {"type": "exception", "errors": {"0": "rewritten"}}
    assert ingest(client, job["id"], exception).status_code == 409
    assert client.get(f"/v1/jobs/{job['id']}/metrics").json()["evaluations"] == []


@pytest.mark.parametrize(
    ("event", "field"),
    [(step_report(3, 1), "epoch"),  # the spec has 2 epochs
     (step_report(1, 10**6), "step"),  # 2 epochs x 64 steps
     (step_report(1, 2**63), "step"),  # was an OverflowError (500)
     ({**step_report(1, 1), "workers": [{"rank": 2, "epoch": 1, "step": 1}]}, "workers.0"),
     ({**step_report(1, 1), "workers": [{"rank": r, "epoch": 1, "step": 1} for r in range(3)]},
      "workers"),
     (step_report(1, 1, samples=10**30), "samples")],
)  # fmt: skip
def test_reports_outside_the_job_are_422_naming_the_field(client, app, event, field):
    job = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    response = ingest(client, job["id"], event)
    assert response.status_code == 422, response.text
    assert any(field in ".".join(map(str, loc)) for loc in loc_of(response)), response.text


def test_nan_anywhere_in_a_report_is_422_and_nothing_stored(client, app):
    job = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    url = f"/v1/internal/jobs/{job['id']}/events"
    token = app.state.services.ray.jobs[job["id"]].env[INGEST_TOKEN_ENV]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for body in ('{"type":"report","kind":"step","epoch":1,"step":1,"workers":'
                 '[{"rank":0,"epoch":1,"step":1,"loss":NaN}]}',
                 '{"type":"report","kind":"step","epoch":1,"step":1,"extra":{"x":[Infinity]},'
                 '"workers":[]}'):  # fmt: skip
        assert client.post(url, content=body, headers=headers).status_code == 422
    assert client.get(f"/v1/jobs/{job['id']}/metrics").status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}/metrics").json()["reports"] == []


def test_another_jobs_token_or_the_api_token_cannot_write_a_jobs_reports(client, app, ray):
    ray.cpus = 4  # room for both
    first, second = (client.post("/v1/jobs", json=GOOD).json() for _ in range(2))
    tick(app)
    others = [ray.jobs[second["id"]].env[INGEST_TOKEN_ENV], app.state.settings.api_token]
    for token in others:
        assert ingest(client, first["id"], step_report(1, 1), token=token).status_code == 401
    assert ingest(client, first["id"], step_report(1, 1)).json() == {"stored": True}


@pytest.mark.parametrize("value", ["9" * 30, "9" * 5000, "12a", "-1"])
def test_a_bad_last_event_id_is_422_not_a_500_or_a_dead_stream(client, value):
    job = client.post("/v1/jobs", json=GOOD).json()
    response = client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": value})
    assert response.status_code == 422
    assert loc_of(response) == [["header", "last-event-id"]]


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


def test_the_scheduler_never_calls_ray_while_holding_the_database(tmp_path):
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


def test_a_job_cancelled_while_it_is_submitted_is_stopped_on_ray(tmp_path):
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


# -- deletion and sweeping (also: nothing left) -----------------------------------------------
def test_delete_a_finished_job_with_its_files(client, app, ray):
    job = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    run_dir = app.state.settings.runs_dir / job["id"]
    run_dir.mkdir(parents=True)
    (run_dir / "stats.jsonl").write_text("{}\n")
    ingest(client, job["id"], step_report(1, 4))
    response = client.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 409 and "cancel it first" in response.json()["detail"]
    client.post(f"/v1/jobs/{job['id']}/cancel")
    ray.set_status(job["id"], "STOPPED")
    tick(app)
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/metrics").status_code == 404
    assert not run_dir.exists()
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 404


def test_a_job_still_stopping_on_ray_or_in_a_study_is_kept(client, app, ray):
    job = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    ray.stop = lambda job_id: None  # Ray has not stopped it yet
    client.post(f"/v1/jobs/{job['id']}/cancel")
    response = client.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 409 and "still stopping" in response.json()["detail"]
    study = client.post(
        "/v1/studies", json={"base": {**GOOD, "epochs": 1}, "seeds": [0], "arms": ["local"]}
    ).json()
    (arm,) = study["arms"]
    member = arm["jobs"][0]["id"]
    client.post(f"/v1/jobs/{member}/cancel")
    response = client.delete(f"/v1/jobs/{member}")
    assert response.status_code == 409 and study["id"] in response.json()["detail"]
    assert client.delete(f"/v1/studies/{study['id']}").status_code == 204
    assert client.get(f"/v1/jobs/{member}").status_code == 404
    assert client.get(f"/v1/studies/{study['id']}").status_code == 404


def test_a_running_study_cannot_be_deleted(client):
    study = client.post("/v1/studies", json={"base": GOOD, "seeds": [0], "arms": ["local"]}).json()
    response = client.delete(f"/v1/studies/{study['id']}")
    assert response.status_code == 409 and "cancel" in response.json()["detail"]


def npz_bytes() -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, x=rng.normal(size=(40, 4)).astype(np.float32), y=np.arange(40) % 2)
    return buffer.getvalue()


def test_delete_datasets_and_code_bundles_unless_a_live_job_uses_them(client, app):
    dataset = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())}).json()
    blob = zip_bytes({"net.py": b"def build_model(s, n):\n    return None\n"})
    bundle = client.post("/v1/code", files={"file": ("b.zip", blob)}).json()
    settings = app.state.settings
    job = client.post(
        "/v1/jobs", json={**GOOD, "dataset": dataset["id"], "code": bundle["id"],
                          "model": "net:build_model", "batch_size_per_worker": 4},
    ).json()  # fmt: skip
    for path, what in ((f"/v1/datasets/{dataset['id']}", "dataset"),
                       (f"/v1/code/{bundle['id']}", "code bundle")):  # fmt: skip
        response = client.delete(path)
        assert response.status_code == 409, response.text
        assert what in response.json()["detail"] and job["id"] in response.json()["detail"]
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert client.delete(f"/v1/code/{bundle['id']}").status_code == 204
    assert not (settings.datasets_dir / f"{dataset['id']}.npz").exists()
    assert not (settings.code_dir / bundle["id"]).exists()
    assert client.get("/v1/datasets").json()["datasets"] == []
    assert client.get("/v1/code").json()["bundles"] == []
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 404


def test_stale_temporary_files_are_swept_at_start(tmp_path):
    stale = [
        tmp_path / "datasets" / ".upload-x1" / "upload",
        tmp_path / "datasets" / ".ds-0123.partial",
        tmp_path / "datasets" / ".ds-0123.converted",
        tmp_path / "code" / ".upload-abc" / "bundle",
        tmp_path / "predictions" / "predict-1" / "inputs.npy",
        tmp_path / ".api-token.123.ab",
    ]
    kept = [tmp_path / "datasets" / "ds-0123.npz", tmp_path / "code" / "code-1" / "m.py"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    app = make_app(tmp_path)
    with TestClient(app, base_url=LOCAL):
        pass
    assert [p for p in stale if p.exists()] == []
    assert (tmp_path / "code" / ".upload-abc").exists() is False
    assert all(p.exists() for p in kept)
