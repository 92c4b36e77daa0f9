"""The service alone, in this process: FastAPI's ``TestClient``, an in-memory SQLite database
and ``FakeRay`` in place of the Ray Jobs client (the ``app``, ``client`` and ``ray`` fixtures
of ``conftest.py``). Fast feedback on routes, the state machine and the lifecycle; the
end-to-end tests (real Ray, uvicorn, Chromium) remain the proof.

The scheduler's loop is not started (no lifespan): each test calls ``tick()`` itself.
"""

from __future__ import annotations

import json

import pytest
from fakeray import FakeRay
from inprocess import GOOD, tick

from contract.protocol import INGEST_TOKEN_ENV, JobOutcome, WorkerReport, write_outcome
from contract.recipe import STATE_FILE
from contract.states import FINAL_STATES, JobState
from service.jobs.lifecycle import MAX_RESUBMISSIONS, RESUBMITTED


def worker(rank: int, epoch: int, step: int, **extra) -> dict:
    fields = {
        "rank": rank, "world_size": 2, "epoch": epoch, "step": step, "batch_size": 8,
        "samples": 8 * step, "loss": 0.5, "train_accuracy": 0.8, "samples_per_s": 100.0,
        "step_time_s": 0.01, "sync_time_s": 0.001,
        "bn": {"net.1": {"local_count": 8, "global_count": 16, "mean_shift": 0.1,
                         "var_ratio": 1.0}},
    }  # fmt: skip
    return WorkerReport(**{**fields, **extra}).model_dump(mode="json")


def report(client, job_id: str, kind: str, epoch: int, step: int, **extra) -> dict:
    """One report of every rank of the job (as many as its spec's workers), with its token."""
    ranks = range(client.get(f"/v1/jobs/{job_id}").json()["spec"]["workers"])
    event = {
        "type": "report", "kind": kind, "epoch": epoch, "step": step, "time": 1.0,
        "workers": [worker(r, epoch, step, **extra) for r in ranks],
    }  # fmt: skip
    response = client.post(
        f"/v1/internal/jobs/{job_id}/events", json=event, headers=ingest_headers(client, job_id)
    )
    assert response.status_code == 200, response.text
    return response.json()


def ingest_headers(client, job_id: str) -> dict[str, str]:
    """The job's own ingest token, as its Ray Job got it (in the fake Ray's record)."""
    token = client.app.state.services.ray.jobs[job_id].env[INGEST_TOKEN_ENV]
    return {"Authorization": f"Bearer {token}"}


def states(client, job_id: str) -> list[str]:
    return [t["state"] for t in client.get(f"/v1/jobs/{job_id}").json()["transitions"]]


# -- the state machine ---------------------------------------------------------------------
def test_state_machine_moves():
    assert {s for s in JobState if s.is_final} == FINAL_STATES
    assert JobState.QUEUED.can_move_to(JobState.PENDING)
    assert not JobState.QUEUED.can_move_to(JobState.RUNNING)
    assert JobState.RUNNING.can_move_to(JobState.PENDING)  # resubmitted after a lost cluster
    for final in FINAL_STATES:
        assert not any(final.can_move_to(state) for state in JobState)


# -- the lifecycle through the API ---------------------------------------------------------
def test_job_lifecycle_queued_pending_running_succeeded(client, app, ray):
    response = client.post("/v1/jobs", json=GOOD)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["state"] == "queued" and job["progress"]["steps_per_epoch"] == 64
    tick(app)
    assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "pending"
    submitted = ray.jobs[job["id"]]
    assert "--resume" not in submitted.entrypoint
    assert submitted.env["SYNCBN_INGEST_URL"].endswith(f"/v1/internal/jobs/{job['id']}/events")

    assert report(client, job["id"], "step", 1, 16) == {"stored": True}
    assert report(client, job["id"], "step", 1, 16) == {"stored": False}  # duplicate
    assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "running"
    report(client, job["id"], "epoch", 1, 64, test_accuracy=0.9, test_loss=0.3)
    report(client, job["id"], "epoch", 2, 128, test_accuracy=0.95, test_loss=0.2)
    write_outcome(app.state.settings.runs_dir / job["id"], JobOutcome(status=0, wall_time_s=12.5))
    ray.set_status(job["id"], "SUCCEEDED", logs='{"status": 0, "result": {"wall_time_s": 1}}')
    tick(app)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert states(client, job["id"]) == ["queued", "pending", "running", "succeeded"]
    assert done["result"] == {
        "test_accuracy": 0.95, "test_loss": 0.2, "test_miou": None, "epochs_completed": 2,
        "wall_time_s": 12.5,
    }  # fmt: skip
    workers = client.get(f"/v1/jobs/{job['id']}/workers").json()
    assert [w["rank"] for w in workers["workers"]] == [0, 1] and workers["step"] == 128
    assert workers["workers"][0]["bn"]["net.1"]["global_count"] == 16
    history = client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [(r["kind"], r["step"]) for r in history["reports"]] == [
        ("step", 16), ("epoch", 64), ("epoch", 128)
    ]  # fmt: skip
    assert [e["epoch"] for e in history["evaluations"]] == [1, 2]

    # The event stream of a finished job replays everything, then ends.
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        lines = [line for line in stream.iter_lines() if line.startswith(("event:", "data:"))]
    kinds = [line[6:].strip() for line in lines if line.startswith("event:")]
    assert kinds.count("report") == 3 and kinds[-1] == "end"
    assert json.loads(lines[-1][5:]) == {"state": "succeeded"}


def test_failure_takes_the_reason_from_the_drivers_outcome_file(client, app, ray):
    """Not from a JSON-looking line of stdout, which the job's user code shares."""
    job = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    write_outcome(app.state.settings.runs_dir / job["id"], JobOutcome(status=1, error="boom"))
    ray.set_status(job["id"], "FAILED", logs='noise\n{"status": 1, "error": "job j failed: '
                   'printed", "result": null}\n')  # fmt: skip
    tick(app)
    failed = client.get(f"/v1/jobs/{job['id']}").json()
    assert failed["state"] == "failed" and failed["reason"] == "boom"


def test_cancel_queued_never_reaches_ray_and_cancel_running_stops_it(client, app, ray):
    ray.cpus = 2
    first = client.post("/v1/jobs", json=GOOD).json()
    second = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    assert client.get(f"/v1/jobs/{second['id']}").json()["reason"].startswith("waiting for")
    cancelled = client.post(f"/v1/jobs/{second['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and second["id"] not in ray.jobs
    stopped = client.post(f"/v1/jobs/{first['id']}/cancel").json()
    again = client.post(f"/v1/jobs/{first['id']}/cancel").json()
    assert stopped["state"] == again["state"] == "cancelled"
    assert stopped["transitions"] == again["transitions"] and ray.stopped == [first["id"]]
    tick(app)  # Ray now says STOPPED: nothing changes
    assert states(client, first["id"]) == ["queued", "pending", "cancelled"]


def test_a_job_the_restarted_cluster_lost_is_resubmitted_to_resume_then_fails(client, app, ray):
    job = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    report(client, job["id"], "step", 1, 16)
    checkpoint = app.state.settings.runs_dir / job["id"] / "checkpoint_000000"
    for attempt in range(1, MAX_RESUBMISSIONS + 1):
        if attempt == 2:  # the reason says whether there is a checkpoint to continue from
            checkpoint.mkdir(parents=True)
            (checkpoint / STATE_FILE).write_bytes(b"state")
        ray.restart()
        tick(app)
        current = client.get(f"/v1/jobs/{job['id']}").json()
        assert current["state"] == "pending" and current["reason"].startswith(RESUBMITTED)
        assert current["reason"].endswith(
            "resuming from the last checkpoint" if attempt >= 2 else "training starts again"
        )
        assert "--resume" in ray.jobs[job["id"]].entrypoint, attempt
    ray.restart()
    tick(app)
    lost = client.get(f"/v1/jobs/{job['id']}").json()
    assert lost["state"] == "failed" and lost["reason"] == "Ray has no record of this job"
    assert states(client, job["id"]).count("pending") == 1 + MAX_RESUBMISSIONS


def test_queue_waits_for_the_running_limit_and_rejects_what_never_fits(client, app, ray):
    app.state.services.settings.max_running_jobs = 0
    job = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    assert client.get(f"/v1/jobs/{job['id']}").json()["reason"] == (
        "waiting: the service runs at most 0 job(s) at once"
    )
    ray.cpus = 1  # the cluster shrank since submission
    app.state.services.settings.max_running_jobs = None
    tick(app)
    rejected = client.get(f"/v1/jobs/{job['id']}").json()
    assert rejected["state"] == "failed" and rejected["reason"].startswith("infeasible: 2 workers")


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "wrkers": 2}, "wrkers"),
        ({**GOOD, "workers": 0}, "workers"),
        ({**GOOD, "workers": 4}, "workers"),
        ({**GOOD, "model": "resnet"}, "model"),
        ({**GOOD, "dataset": "ds-000000000000"}, "dataset"),
        ({**GOOD, "norm": "instance"}, "norm"),
        ({**GOOD, "norm": "group", "precise_bn_batches": 1}, "precise_bn_batches"),
        ({**GOOD, "dataset": "digits", "model": "mlp", "workers": 1, "batch_size_per_worker": 1},
         "batch_size_per_worker"),
        ({**GOOD, "dataset": "digits", "model": "mlp", "norm": "group", "group_norm_groups": 3},
         "group_norm_groups"),
    ],
)  # fmt: skip
def test_bad_specs_get_a_422_naming_the_field(client, body, field):
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert field in [str(error["loc"][-1]) for error in response.json()["detail"]]


def test_too_many_workers_says_how_to_fit(client):
    response = client.post("/v1/jobs", json={**GOOD, "workers": 4, "batch_size_per_worker": 2})
    (error,) = response.json()["detail"]
    assert "use at most 2 workers or set cpus_per_worker to 0.5 to run 4 workers" in error["msg"]


def test_unknown_jobs_and_reports_that_break_the_protocol(client, app):
    assert client.get("/v1/jobs/j-000000000000").status_code == 404
    assert client.post("/v1/jobs/j-000000000000/cancel").status_code == 404
    job = client.post("/v1/jobs", json=GOOD).json()
    tick(app)
    headers = ingest_headers(client, job["id"])
    url = f"/v1/internal/jobs/{job['id']}/events"
    bad = {"type": "report", "kind": "step", "epoch": 1, "step": 1, "workers": [{"rank": -1}]}
    response = client.post(url, json=bad, headers=headers)
    assert response.status_code == 422 and "rank" in response.text
    response = client.post(url, json={"type": "nonsense"}, headers=headers)
    assert response.status_code == 422
    assert client.post(url, json=bad).status_code == 401


def test_ray_down_at_submission_still_queues_the_job(client, app, ray):
    ray.reachable = False
    response = client.post("/v1/jobs", json=GOOD)
    assert response.status_code == 201 and response.json()["state"] == "queued"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["ray"].startswith("error")


def test_openapi_documents_every_per_worker_field(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    documented = set(schemas["WorkerReport"]["properties"])
    assert set(WorkerReport.model_fields) <= documented
    assert {"rank", "samples_per_s", "step_time_s", "sync_time_s", "bn"} <= documented
    assert schemas["WorkersOut"]["properties"]["workers"]["items"] == {
        "$ref": "#/components/schemas/WorkerReport"
    }


def test_cli_submit_has_a_flag_for_every_jobspec_field():
    from client.cli import parse_args, spec_from_args
    from contract.spec import JobSpec

    args = parse_args(
        ["submit", "--dataset", "digits", "--batch-size", "2", "--cpus-per-worker", "0.5",
         "--norm", "local", "--use-gpu", "--sync-group-size", "2"]
    )  # fmt: skip
    assert spec_from_args(args) == {
        "dataset": "digits", "batch_size_per_worker": 2, "cpus_per_worker": 0.5,
        "norm": "local", "use_gpu": True, "sync_group_size": 2,
    }  # fmt: skip
    assert set(JobSpec.model_fields) <= set(vars(args))
    with pytest.raises(SystemExit):
        parse_args(["submit", "--norm", "instance"])  # choices come from the Literal


def test_the_fake_and_the_real_ray_client_keep_one_protocol():
    """``FakeRay`` stands in for ``RayJobs`` through ``service.cluster.Cluster``: both have
    every method of the protocol with the same parameters."""
    import inspect

    from service.cluster import Cluster
    from service.cluster.ray_jobs import RayJobs

    assert isinstance(FakeRay(), Cluster)
    for name in ("submit", "status", "info_message", "stop", "logs", "capacity"):
        expected = list(inspect.signature(getattr(Cluster, name)).parameters)
        for implementation in (RayJobs, FakeRay):
            assert list(inspect.signature(getattr(implementation, name)).parameters) == expected


def test_healthz_and_syncbn_report_the_package_version(client):
    import syncbn
    from contract.version import package_version

    assert client.get("/healthz").json() == {"status": "ok", "version": package_version(),
                                             "checks": {}}  # fmt: skip
    assert syncbn.__version__ == package_version() != "0+unknown"
