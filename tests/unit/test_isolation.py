"""One job, or one stranger, cannot stall or starve the others (issue 27), in process:

- the scheduler isolates jobs: a look-alike outcome line, a broken outcome file, an error while
  following, reconciling or starting one job fails that job alone;
- what a job writes is bounded: outcome files, exception events (size and count), stats lines,
  kept logs (by their tail, never through a link);
- a stranger costs headers only: the token is checked before a slot or a byte of the body, a
  body that does not arrive in time is a 408 that frees its slot;
- the queue cap holds under concurrent submits; the metrics' ``method`` label is a fixed set.
"""

from __future__ import annotations

import asyncio
import os
import threading

import httpx
import pytest
from fakeray import FakeRay
from inprocess import GOOD, LOCAL, SERVICE_DEFAULTS, local_client, tick

from contract.protocol import (
    INGEST_TOKEN_ENV,
    MAX_EXCEPTIONS_PER_JOB,
    OUTCOME_FILE,
)
from service.api.auth import Authenticator
from service.api.middleware import AuthMiddleware, Gate, RequestLimitsMiddleware, RouteLimits
from service.jobs.logs import LOG_FILE
from service.jobs.scheduler import STRIKES

LOOKALIKE = '{"status": "x", "result": "not a mapping", "error": {"a": 1}}'


def state(client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def run_dir(app, job_id: str):
    return app.state.settings.runs_dir / job_id


# -- the scheduler isolates jobs ----------------------------------------------------------------
@pytest.mark.parametrize("ray_status", ["SUCCEEDED", "FAILED"])
def test_a_lookalike_outcome_line_and_a_broken_outcome_file_end_that_job_only(
    client, app, ray, ray_status
):
    first = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    folder = run_dir(app, first["id"])
    folder.mkdir(parents=True)
    (folder / OUTCOME_FILE).write_text(LOOKALIKE)
    ray.set_status(first["id"], ray_status, logs=f"noise\n{LOOKALIKE}\n")
    second = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    tick(app)
    ended = state(client, first["id"])
    assert ended["state"] == ray_status.lower()
    if ray_status == "FAILED":
        assert ended["reason"].startswith("its outcome was refused: outcome.json is not an")
    assert state(client, second["id"])["state"] == "pending"
    ray.set_status(second["id"], "SUCCEEDED")
    tick(app)
    assert state(client, second["id"])["state"] == "succeeded"


def test_an_error_following_one_job_fails_it_and_the_next_job_still_runs(
    client, app, ray, monkeypatch
):
    lifecycle = app.state.services.lifecycle
    broken = client.post("/v1/jobs", json=GOOD).json()["id"]
    tick(app)
    follow = lifecycle.follow

    def failing_follow(job_id, status):
        if job_id == broken:
            raise AttributeError("'str' object has no attribute 'get'")
        follow(job_id, status)

    monkeypatch.setattr(lifecycle, "follow", failing_follow)
    nxt = client.post("/v1/jobs", json=GOOD).json()["id"]
    for _ in range(STRIKES):  # a running job is given STRIKES ticks, then failed
        assert state(client, broken)["state"] in ("pending", "failed")
        tick(app)
    failed = state(client, broken)
    assert failed["state"] == "failed"
    assert (
        "could not go on following it" in failed["reason"] and "AttributeError" in failed["reason"]
    )
    assert ray.jobs[broken].status == "STOPPED"
    tick(app)  # its room freed: the next job starts, and succeeds
    assert state(client, nxt)["state"] == "pending"
    ray.set_status(nxt, "SUCCEEDED")
    tick(app)
    assert state(client, nxt)["state"] == "succeeded"


def test_reconcile_goes_on_past_a_job_it_cannot_backfill(client, app, ray, monkeypatch):
    scheduler, lifecycle = app.state.services.scheduler, app.state.services.lifecycle
    jobs = [client.post("/v1/jobs", json=GOOD).json()["id"] for _ in range(2)]
    ray.cpus = 4
    tick(app)
    backfill = lifecycle.backfill
    monkeypatch.setattr(lifecycle, "backfill", lambda j: backfill(j) if j != jobs[0] else 1 / 0)
    ray.set_status(jobs[1], "SUCCEEDED")
    scheduler.reconcile()
    assert state(client, jobs[1])["state"] == "succeeded"
    assert state(client, jobs[0])["state"] == "pending"  # one strike, not yet failed


def test_a_job_that_cannot_be_handed_to_ray_fails_alone(tmp_path, make_app):
    class OneBadSubmit(FakeRay):
        bad: str = ""

        def submit(self, job_id, entrypoint, env, runtime_env=None):
            if job_id == self.bad:
                raise ValueError("runtime_env refused")
            super().submit(job_id, entrypoint, env, runtime_env)

    ray = OneBadSubmit(cpus=4)
    app = make_app(tmp_path, ray)
    c = local_client(app)
    jobs = [c.post("/v1/jobs", json=GOOD).json()["id"] for _ in range(2)]
    ray.bad = jobs[0]
    tick(app)
    assert state(c, jobs[0])["state"] == "failed"
    assert "handing it to Ray: ValueError: runtime_env refused" in state(c, jobs[0])["reason"]
    assert state(c, jobs[1])["state"] == "pending"


# -- what a job writes is bounded ----------------------------------------------------------------
def ingest(client, ray, job_id: str, event: dict) -> httpx.Response:
    token = ray.jobs[job_id].env[INGEST_TOKEN_ENV]
    return client.post(
        f"/v1/internal/jobs/{job_id}/events",
        json=event,
        headers={"Authorization": f"Bearer {token}"},
    )


def test_exception_events_are_bounded_in_size_and_count(client, app, ray):
    job = client.post("/v1/jobs", json=GOOD).json()["id"]
    tick(app)
    big = ingest(client, ray, job, {"type": "exception", "errors": {"0": "x" * (64 << 10)}})
    assert big.status_code == 422 and "at most 65536 per event" in big.text[:2000]
    for _ in range(MAX_EXCEPTIONS_PER_JOB):
        ok = ingest(client, ray, job, {"type": "exception", "errors": {"0": "boom"}})
        assert ok.status_code == 200
    over = ingest(client, ray, job, {"type": "exception", "errors": {"0": "boom"}})
    assert over.status_code == 422 and over.json()["detail"][0]["loc"] == ["body", "errors"]


def test_the_log_is_kept_when_a_job_ends_and_served_after_ray_forgets_it(client, app, ray):
    job = client.post("/v1/jobs", json=GOOD).json()["id"]
    tick(app)
    lines = [f"line {i}" for i in range(5000)]
    ray.set_status(job, "SUCCEEDED", logs="\n".join(lines) + "\n")
    tick(app)
    kept = run_dir(app, job) / LOG_FILE
    assert kept.read_text().splitlines()[-1] == "line 4999"
    del ray.jobs[job]  # the head and its session folder are gone
    logs = client.get(f"/v1/jobs/{job}/logs", params={"tail": 3}).json()["logs"]
    assert logs.splitlines() == ["line 4997", "line 4998", "line 4999"]


def test_a_kept_log_is_bounded_and_never_read_or_written_through_a_link(tmp_path, make_app):
    ray = FakeRay(cpus=2)
    app = make_app(tmp_path, ray, max_job_log_bytes=4096)
    c = local_client(app)
    job = c.post("/v1/jobs", json=GOOD).json()["id"]
    tick(app)
    folder = run_dir(app, job)
    folder.mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not overwrite me\n")
    os.symlink(secret, folder / LOG_FILE)  # the job plants a link
    ray.set_status(job, "SUCCEEDED", logs="x" * 100_000 + "\nlast line\n")
    tick(app)
    assert secret.read_text() == "do not overwrite me\n"
    kept = folder / LOG_FILE
    assert not kept.is_symlink() and kept.stat().st_size <= 4096
    kept.unlink()
    os.symlink(secret, kept)
    del ray.jobs[job]
    assert "do not overwrite" not in c.get(f"/v1/jobs/{job}/logs").json()["logs"]


# -- a stranger costs headers only ---------------------------------------------------------------
def test_a_tokenless_request_is_refused_before_its_body_is_read(tmp_path, make_app):
    app = make_app(tmp_path)
    reads: list[str] = []

    async def inner(scope, receive, send):  # pragma: no cover - must never run
        reads.append(scope["path"])

    guard = AuthMiddleware(inner, Authenticator("t" * 32, app.state.services.db))

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url=LOCAL) as c:
            body = b"x" * (16 << 20)
            return [
                await c.post("/v1/jobs/j/predict", content=body),
                await c.post("/v1/datasets", content=body, headers={"Authorization": "Bearer no"}),
                await c.post("/v1/internal/jobs/j-1/events", content=b"{}",
                             headers={"Authorization": "Bearer " + "t" * 32}),
            ]  # fmt: skip

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [401, 401, 401]
    assert responses[0].headers["www-authenticate"] == "Bearer" and reads == []


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_frees_its_slot():
    gate = Gate("upload", 1, "max_concurrent_uploads")
    limits = RouteLimits(1 << 20, "max_upload_bytes", "upload", 0.2, "upload_body_timeout_s")
    finished = threading.Event()

    async def reader(scope, receive, send):
        while (await receive())["type"] == "http.request":
            pass
        finished.set()

    app = RequestLimitsMiddleware(reader, lambda m, p: limits, {"upload": gate})
    sent: list[dict] = []

    async def main() -> None:
        chunks = [{"type": "http.request", "body": b"x", "more_body": True}]

        async def receive():
            if chunks:
                return chunks.pop()
            await asyncio.sleep(3600)  # one byte, then nothing: a slow loris

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/datasets", "headers": []}
        await asyncio.wait_for(app(scope, receive, send), 5)

    asyncio.run(main())
    assert sent[0]["status"] == 408 and b"SYNCBN_UPLOAD_BODY_TIMEOUT_S" in sent[1]["body"]
    assert finished.is_set() and gate.inside == 0


# -- caps ----------------------------------------------------------------------------------------
@pytest.fixture
def app_settings() -> dict:
    return SERVICE_DEFAULTS  # a SQLite file: threads write as the real service's would


def test_the_queue_cap_holds_under_concurrent_submits(tmp_path, make_app):
    app = make_app(tmp_path, FakeRay(cpus=2), max_queued_jobs=5, max_running_jobs=0)
    clients = [local_client(app) for _ in range(8)]
    barrier = threading.Barrier(len(clients))
    codes: list[int] = []

    def submit(c) -> None:
        barrier.wait()
        codes.append(c.post("/v1/jobs", json=GOOD).status_code)

    threads = [threading.Thread(target=submit, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201] * 5 + [429] * 3
    assert clients[0].get("/v1/jobs").json()["total"] == 5


def test_made_up_methods_share_one_metrics_label(client):
    for method in ("FOO", "BAR", "BAZ"):
        client.request(method, "/v1/jobs")
    text = client.get("/metrics").text
    assert 'method="other"' in text and 'method="FOO"' not in text


def test_a_ray_error_on_a_route_is_one_503_with_its_reason(client, app, ray):
    """Cancel (of a job, or of a study's jobs) and logs: Ray's error becomes
    ``ClusterUnavailable``, never a 500."""
    job = client.post("/v1/jobs", json=GOOD).json()["id"]
    study = client.post("/v1/studies", json={"base": {**GOOD, "workers": 2}, "arms": ["local"],
                                             "seeds": [0]}).json()  # fmt: skip
    ray.cpus = 4  # both on Ray: cancelling them must stop their Ray Jobs
    tick(app)
    ray.reachable = False
    for path in (f"/v1/jobs/{job}/cancel", f"/v1/studies/{study['id']}/cancel"):
        refused = client.post(path)
        assert refused.status_code == 503, refused.text
        assert "could not stop job" in refused.json()["detail"]
