"""Safe by default, in process (FakeRay, a real SQLite file): what a job's reports may write and
what a delete removes. Rows of issue 20's table that need no Ray.

- ingest integrity (rows 6, 13): reports of a finished job (409), past the spec or with huge
  integers (422), NaN (422); Last-Event-ID of 30 or 5000 digits (422);
- DELETE of jobs, studies, datasets and code bundles with their files; stale temporary files
  swept at start.

The app is ``make_app`` of ``conftest.py`` with the service's own defaults.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hostile import zip_bytes
from inprocess import GOOD, LOCAL, SERVICE_DEFAULTS, tick

from contract.protocol import INGEST_TOKEN_ENV


@pytest.fixture
def app_settings() -> dict:
    """The service's own defaults: a SQLite file and an API token made in the home."""
    return SERVICE_DEFAULTS


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


def test_stale_temporary_files_are_swept_at_start(tmp_path, make_app):
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
