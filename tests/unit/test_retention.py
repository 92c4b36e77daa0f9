"""The retention (``service.jobs.retention``): with ``SYNCBN_RETENTION_DAYS`` a finished job's
run folder (checkpoints, model files, kept log) goes that many days after it ended, unless it is
pinned; its rows stay, its models list is empty with the reason. Unset, nothing goes. Pinning
is a write of the job's owner; the sweep runs from the scheduler's loop, once at start, then at
its own low rate; migration 0007 adds the columns and takes them back."""

from __future__ import annotations

import logging
import os
import shutil
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from inprocess import GOOD, local_client
from test_model_files import model_file
from test_users import add_user, as_user

from contract.spec import JobSpec
from service import app as service_app
from service.jobs import retention
from service.jobs.logs import LOG_FILE
from service.storage.db import head_revision, make_engine, upgrade
from workers.data.builtin import load_digits

LATER = timedelta(days=31)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture
def app_settings():
    return {"retention_days": 30}


def ended_job(client: TestClient, app, digits) -> str:
    """A job that was cancelled now, with a checkpoint and a kept log in its run folder."""
    job = client.post("/v1/jobs", json=GOOD).json()["id"]
    assert client.post(f"/v1/jobs/{job}/cancel").json()["state"] == "cancelled"
    run = app.state.settings.runs_dir / job
    folder = run / "checkpoint_000000"
    folder.mkdir(parents=True)
    model_file(folder, digits, JobSpec(dataset="digits"))
    (run / LOG_FILE).write_text("epoch 1 done\n")
    return job


def sweep(app, after: timedelta = LATER) -> int:
    return app.state.services.retention.sweep(now=datetime.now(UTC) + after)


def test_the_files_of_a_job_ended_long_ago_go_its_rows_stay(app, client, digits):
    job = ended_job(client, app, digits)
    assert len(client.get(f"/v1/jobs/{job}/models").json()["models"]) == 1
    assert sweep(app, timedelta(days=29)) == 0  # not yet
    assert sweep(app) == 1
    assert not (app.state.settings.runs_dir / job).exists()
    shown = client.get(f"/v1/jobs/{job}").json()
    assert shown["state"] == "cancelled" and shown["files_removed_at"] is not None
    models = client.get(f"/v1/jobs/{job}/models")
    assert models.status_code == 200 and models.json()["models"] == []
    reason = models.json()["reason"]
    assert "removed by the retention" in reason and "SYNCBN_RETENTION_DAYS=30" in reason
    download = client.get(f"/v1/jobs/{job}/model")
    assert download.status_code == 404 and "removed by the retention" in download.json()["detail"]
    logs = client.get(f"/v1/jobs/{job}/logs").json()
    assert logs["logs"] == "" and "removed by the retention" in logs["reason"]
    assert client.get(f"/v1/jobs/{job}/metrics").status_code == 200
    assert sweep(app) == 0  # once


def test_pinned_active_and_recent_jobs_keep_their_files(app, client, digits):
    pinned = ended_job(client, app, digits)
    assert client.post(f"/v1/jobs/{pinned}/pin").json()["pinned"] is True
    assert client.post(f"/v1/jobs/{pinned}/pin").json()["pinned"] is True  # idempotent
    queued = client.post("/v1/jobs", json=GOOD).json()["id"]
    (app.state.settings.runs_dir / queued).mkdir(parents=True)
    assert sweep(app) == 0
    assert (app.state.settings.runs_dir / pinned / LOG_FILE).exists()
    assert (app.state.settings.runs_dir / queued).exists()
    assert client.delete(f"/v1/jobs/{pinned}/pin").json()["pinned"] is False
    assert sweep(app) == 1
    refused = client.post(f"/v1/jobs/{pinned}/pin")
    assert refused.status_code == 409 and "nothing left to keep" in refused.json()["detail"]


def test_a_pin_wins_or_loses_against_a_running_sweep_as_a_whole(app, client, digits, monkeypatch):
    """The sweep claims a job with one conditional UPDATE before its files go: a pin before
    the claim keeps them; a pin after it is a 409 (nothing is pinned whose files go)."""
    early, late = ended_job(client, app, digits), ended_job(client, app, digits)
    real_kept, real_remove = retention.why_kept, retention.remove_job_files
    pins = {}

    def pinned_before_the_claim(job):
        if job.id == early:
            pins[early] = client.post(f"/v1/jobs/{early}/pin").status_code
        return real_kept(job)

    def pinned_after_the_claim(settings, job_id):
        pins[job_id] = client.post(f"/v1/jobs/{job_id}/pin").status_code
        return real_remove(settings, job_id)

    monkeypatch.setattr(retention, "why_kept", pinned_before_the_claim)
    monkeypatch.setattr(retention, "remove_job_files", pinned_after_the_claim)
    assert sweep(app) == 1
    assert pins == {early: 200, late: 409}
    kept, removed = (client.get(f"/v1/jobs/{job}").json() for job in (early, late))
    assert kept["pinned"] is True and kept["files_removed_at"] is None
    assert (app.state.settings.runs_dir / early / LOG_FILE).exists()
    assert removed["pinned"] is False and removed["files_removed_at"] is not None
    assert not (app.state.settings.runs_dir / late).exists()


def test_only_what_was_removed_is_marked_and_leftovers_go_later(app, client, digits, monkeypatch):
    """A folder that could not be removed is not marked (the next sweep tries again); a link
    is removed, never followed; a job marked removed whose folder is still there (a sweep
    stopped between its claim and the removal) loses it at the next sweep."""
    stuck, linked, left = (ended_job(client, app, digits) for _ in range(3))
    runs = app.state.settings.runs_dir
    important = runs.parent / "important"
    important.mkdir()
    (important / "keep").write_text("not the job's")
    (runs / linked / "outside").symlink_to(important)
    (runs / stuck / "locked").write_text("")
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):  # a file the service may not remove (root may)
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    assert sweep(app) == 2  # linked and left; stuck stays, unmarked
    assert client.get(f"/v1/jobs/{stuck}").json()["files_removed_at"] is None
    assert (runs / stuck).exists() and sorted(os.listdir(important)) == ["keep"]
    monkeypatch.setattr(os, "unlink", real_unlink)
    (runs / left / "checkpoint_000000").mkdir(parents=True)  # as if the removal never ran
    assert sweep(app) == 1
    assert not (runs / stuck).exists() and not (runs / left).exists()
    assert client.get(f"/v1/jobs/{stuck}").json()["files_removed_at"] is not None

    # a run folder that is a link: the link goes, not what it points to
    other = ended_job(client, app, digits)
    shutil.rmtree(runs / other)
    (runs / other).symlink_to(important)
    assert sweep(app) == 1 and not os.path.lexists(runs / other)
    assert (important / "keep").read_text() == "not the job's"


def test_unset_nothing_is_removed(make_app, digits):
    app = make_app(retention_days=None)
    client = local_client(app)
    job = ended_job(client, app, digits)
    assert sweep(app, timedelta(days=10_000)) == 0
    assert (app.state.settings.runs_dir / job / LOG_FILE).exists()
    assert client.get(f"/v1/jobs/{job}").json()["files_removed_at"] is None


def test_pinning_is_a_write_of_the_owner(app, client):
    alice = as_user(client, add_user(client, "alice"))
    bob = as_user(client, add_user(client, "bob"))
    vera = as_user(client, add_user(client, "vera", "viewer"))
    job = alice.post("/v1/jobs", json=GOOD).json()["id"]
    for other in (bob, vera):
        refused = other.post(f"/v1/jobs/{job}/pin")
        assert refused.status_code == 403 and "alice" in refused.json()["detail"]
        assert other.delete(f"/v1/jobs/{job}/pin").status_code == 403
    assert alice.post(f"/v1/jobs/{job}/pin").json()["pinned"] is True
    assert client.delete(f"/v1/jobs/{job}/pin").json()["pinned"] is False  # an admin
    assert client.post("/v1/jobs/j-none/pin").status_code == 404
    assert vera.get(f"/v1/jobs/{job}").json()["pinned"] is False


def test_the_loop_sweeps_at_start_then_at_its_own_rate(make_app, digits, caplog):
    app = make_app(retention_interval_s=3600)
    client = local_client(app)
    retention = app.state.services.retention
    calls = []
    real = retention.sweep
    retention.sweep = lambda *a: calls.append(a) or real(*a)
    service_app.chores(app.state.services)
    service_app.chores(app.state.services)
    assert len(calls) == 1  # once at start, then an hour later
    retention.sweep = lambda *a: 1 / 0
    retention._next = 0
    with caplog.at_level(logging.ERROR, logger="service"):
        service_app.chores(app.state.services)  # logged, never raised
    assert "the retention's sweep failed" in caplog.text
    assert client.get("/healthz").status_code == 200


def test_migration_0007_adds_the_columns_and_takes_them_back(tmp_path):
    from alembic import command

    from service.storage.db import alembic_config

    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = make_engine(url, migrate=False)
    try:
        with engine.begin() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("jobs")}
            assert {"pinned", "files_removed_at"} <= columns
            command.downgrade(alembic_config(connection), "0006_teams")
        with engine.begin() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("jobs")}
            assert not {"pinned", "files_removed_at"} & columns
    finally:
        engine.dispose()
    assert upgrade(url) == head_revision()
