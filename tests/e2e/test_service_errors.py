"""Bad input never gives a 5xx: each case gets the right 4xx and a JSON body naming the problem.

Runs against ``idle_service`` (real uvicorn; jobs are queued but never started).
"""

from __future__ import annotations

import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
from servicekit import UPLOAD_LIMIT

from contract.version import package_version

GOOD = {"dataset": "synthetic", "workers": 2, "batch_size_per_worker": 8, "epochs": 1}
JSON = {"Content-Type": "application/json"}


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(content: bytes, name: str = "data.npz") -> dict:
    return {"files": {"file": (name, content, "application/octet-stream")}}


GOOD_NPZ = npz(
    x=np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32),
    y=np.arange(40) % 3,
)

# (id, method, path, request kwargs, status, field named in the error or text in "detail")
CASES = [
    ("invalid-json", "POST", "/v1/jobs", {"content": b"{not json", "headers": JSON}, 422, None),
    ("unknown-field", "POST", "/v1/jobs", {"json": {**GOOD, "wrkers": 2}}, 422, "wrkers"),
    ("workers-0", "POST", "/v1/jobs", {"json": {**GOOD, "workers": 0}}, 422, "workers"),
    ("workers-negative", "POST", "/v1/jobs", {"json": {**GOOD, "workers": -3}}, 422, "workers"),
    ("workers-string", "POST", "/v1/jobs", {"json": {**GOOD, "workers": "two"}}, 422, "workers"),
    ("batch-0", "POST", "/v1/jobs", {"json": {**GOOD, "batch_size_per_worker": 0}}, 422,
     "batch_size_per_worker"),
    ("missing-dataset", "POST", "/v1/jobs", {"json": {"workers": 2}}, 422, "dataset"),
    ("too-many-workers", "POST", "/v1/jobs", {"json": {**GOOD, "workers": 64}}, 422, "workers"),
    ("cpus-beyond-any-node", "POST", "/v1/jobs",
     {"json": {**GOOD, "workers": 1, "cpus_per_worker": 3}}, 422, "workers"),
    ("gpu-on-cpu-cluster", "POST", "/v1/jobs", {"json": {**GOOD, "use_gpu": True}}, 422,
     "use_gpu"),
    ("unknown-dataset", "POST", "/v1/jobs", {"json": {**GOOD, "dataset": "ds-000000000000"}},
     422, "dataset"),
    ("dataset-path", "POST", "/v1/jobs", {"json": {**GOOD, "dataset": "../../etc/passwd"}},
     422, "dataset"),
    ("group-not-divisor", "POST", "/v1/jobs",
     {"json": {**GOOD, "workers": 2, "sync_group_size": 3}}, 422, "sync_group_size"),
    ("model-for-wrong-shape", "POST", "/v1/jobs", {"json": {**GOOD, "model": "resnet"}}, 422,
     "model"),
    ("body-too-large", "POST", "/v1/jobs",
     {"content": b"{" + b" " * (2 << 20) + b"}", "headers": JSON}, 413, "larger than"),
    ("corrupt-upload", "POST", "/v1/datasets", upload(b"PK\x03\x04 definitely not a zip"), 422,
     "file"),
    ("upload-missing-y", "POST", "/v1/datasets", upload(npz(x=np.zeros((8, 3)))), 422, "file"),
    ("upload-nan", "POST", "/v1/datasets",
     upload(npz(x=np.full((8, 3), np.nan), y=np.arange(8) % 2)), 422, "file"),
    ("upload-oversized", "POST", "/v1/datasets", upload(b"\0" * (UPLOAD_LIMIT + 1)), 413,
     "larger than"),
    ("upload-no-file", "POST", "/v1/datasets", {"data": {"x": "1"}}, 422, "file"),
    ("no-such-job", "GET", "/v1/jobs/j-000000000000", {}, 404, "not found"),
    ("cancel-no-such-job", "POST", "/v1/jobs/j-000000000000/cancel", {}, 404, "not found"),
    ("workers-no-such-job", "GET", "/v1/jobs/nope/workers", {}, 404, "not found"),
    ("metrics-no-such-job", "GET", "/v1/jobs/nope/metrics", {}, 404, "not found"),
    ("events-no-such-job", "GET", "/v1/jobs/nope/events", {}, 404, "not found"),
    ("logs-no-such-job", "GET", "/v1/jobs/nope/logs", {}, 404, "not found"),
    ("bad-state-filter", "GET", "/v1/jobs?state=done", {}, 422, "state"),
    ("bad-limit", "GET", "/v1/jobs?limit=0", {}, 422, "limit"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "named"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_gets_a_4xx_json_error(idle_service, method, path, kwargs, status, named):
    response = idle_service.client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    if named is None:
        return
    if isinstance(detail, list):
        fields = [str(error["loc"][-1]) for error in detail]
        assert named in fields, detail
    else:
        assert named in detail, detail


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "missing"), ({"Authorization": "Bearer wrong"}, "invalid"),
     ({"Authorization": "Basic dGVzdA=="}, "missing")],
    ids=["missing-token", "wrong-token", "not-bearer"],
)  # fmt: skip
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/j-x/events"),
     ("GET", "/v1/datasets"), ("GET", "/metrics"), ("GET", "/readyz")],
)  # fmt: skip
def test_token_is_required_everywhere_but_healthz(idle_service, headers, reason, method, path):
    response = httpx.request(method, idle_service.url + path, headers=headers, json=GOOD)
    assert response.status_code == 401
    assert reason in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_open_routes_and_readiness(idle_service):
    health = httpx.get(idle_service.url + "/healthz").json()
    assert health["status"] == "ok" and health["version"] == package_version()
    assert httpx.get(idle_service.url + "/").status_code == 200
    ready = idle_service.client.get("/readyz")
    checks = ready.json()["checks"]
    assert ready.status_code == 200 and checks.keys() == {"database", "ray", "disk"}
    assert checks["database"] == checks["ray"] == "ok"
    assert checks["disk"].startswith(("ok: ", "degraded: "))  # the headroom of $SYNCBN_HOME


def test_ingest_takes_no_token_for_a_job_not_handed_to_ray(idle_service):
    """A queued job has no ingest token yet (it is made when the job goes to Ray, and only its
    Ray Job gets it): nothing the API or an attacker holds can write its statistics. The job's
    own token is tested in process (tests/unit/test_service_inprocess.py), where it can be read."""
    job = idle_service.submit(**GOOD)
    worker = {"rank": 0, "epoch": 1, "step": 1}
    report = {"type": "report", "kind": "step", "epoch": 1, "step": 1, "workers": [worker]}
    url = f"{idle_service.url}/v1/internal/jobs/{job['id']}/events"
    for token in (None, idle_service.token, "x" * 64):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        assert httpx.post(url, json=report, headers=headers).status_code == 401
    assert not (idle_service.home / "secret_key").exists()  # no signing key to steal
    idle_service.client.post(f"/v1/jobs/{job['id']}/cancel")


def test_queue_holds_jobs_in_order_with_the_reason(idle_service):
    jobs = [idle_service.submit(**GOOD) for _ in range(3)]
    idle_service.wait_for(
        jobs[-1]["id"], lambda j: "earlier job" in (j["reason"] or ""), 30, "a queue reason"
    )
    reasons = [idle_service.job(j["id"])["reason"] for j in jobs]
    assert "at most 0 job(s) at once" in reasons[0]
    assert reasons[1].startswith("waiting behind 1 earlier job(s)")
    assert reasons[2].startswith("waiting behind 2 earlier job(s)")
    listed = idle_service.client.get("/v1/jobs", params={"state": "queued"}).json()
    assert [j["id"] for j in listed["jobs"][:3]] == [j["id"] for j in reversed(jobs)]
    assert listed["total"] >= 3
    for job in jobs:
        assert idle_service.client.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == (
            "cancelled"
        )


def test_upload_then_submit_with_the_server_made_id(idle_service):
    response = idle_service.client.post("/v1/datasets", **upload(GOOD_NPZ, "../../evil.npz"))
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["id"].startswith("ds-") and dataset["name"] == "evil.npz"
    assert (dataset["n_train"], dataset["input_shape"], dataset["num_classes"]) == (32, [6], 3)
    assert (idle_service.home / "datasets" / f"{dataset['id']}.npz").exists()
    listed = idle_service.client.get("/v1/datasets").json()["datasets"]
    assert dataset["id"] in [d["id"] for d in listed]
    job = idle_service.submit(**{**GOOD, "dataset": dataset["id"]})
    assert job["progress"]["steps_per_epoch"] == 2  # 32 samples / (2 workers x 8)
    idle_service.client.post(f"/v1/jobs/{job['id']}/cancel")


def test_cli_submit_list_show_cancel_and_errors(idle_service, tmp_path):
    spec = tmp_path / "job.json"
    spec.write_text('{"dataset": "synthetic", "workers": 1, "epochs": 1}')
    submitted = idle_service.cli("--json", "submit", "--file", str(spec), "--batch-size", "4")
    assert submitted.returncode == 0, submitted.stderr
    job = __import__("json").loads(submitted.stdout)
    assert job["spec"]["batch_size_per_worker"] == 4 and job["state"] == "queued"
    listed = idle_service.cli("list", "--state", "queued")
    assert listed.returncode == 0 and job["id"] in listed.stdout
    shown = idle_service.cli("show", job["id"])
    assert shown.returncode == 0 and "queued" in shown.stdout
    cancelled = idle_service.cli("cancel", job["id"])
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout

    bad = idle_service.cli("submit", "--dataset", "synthetic", "--workers", "0")
    assert bad.returncode == 2 and "workers: Input should be greater than or equal to 1" in (
        bad.stdout + bad.stderr
    )
    missing = idle_service.cli("show", "j-000000000000")
    assert missing.returncode == 2 and "not found" in missing.stdout + missing.stderr
    data = tmp_path / "data.npz"
    data.write_bytes(GOOD_NPZ)
    uploaded = idle_service.cli("upload", str(data))
    assert uploaded.returncode == 0 and "dataset ds-" in uploaded.stdout
    unreachable = subprocess.run(
        [sys.executable, "-m", "client.cli", "--url", "http://127.0.0.1:9", "list"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stdout


def test_too_many_workers_says_how_to_fit_and_the_hint_is_accepted(idle_service):
    laptop = {**GOOD, "workers": 4, "batch_size_per_worker": 2}  # the test cluster has 2 CPUs
    response = idle_service.client.post("/v1/jobs", json=laptop)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][-1] == "workers"
    assert "4 workers x 1 CPU = 4 CPU, but the Ray cluster has only 2 CPU" in error["msg"]
    assert "use at most 2 workers or set cpus_per_worker to 0.5" in error["msg"]
    job = idle_service.submit(**{**laptop, "cpus_per_worker": 0.5})
    assert job["state"] == "queued"
    idle_service.client.post(f"/v1/jobs/{job['id']}/cancel")
