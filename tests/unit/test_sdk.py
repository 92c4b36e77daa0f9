"""The Python SDK (``client.sdk.Client``) against the in-process app: typed answers for every
route, typed errors (status, field, setting), the version warning, finding a local service's
URL and token, and the user guide's notebook example run as written. A real ``make run``
service is in ``tests/e2e/test_safe_defaults.py`` (``made``: as ``make run`` starts it)."""

from __future__ import annotations

import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from bundlekit import NETWORK, zip_bytes
from fakeray import FakeRay
from fastapi.testclient import TestClient
from inprocess import GOOD, LOCAL, TOKEN, local_client, tick
from test_cli_models import checkpoint
from test_service_inprocess import report

from client import Client, sdk
from client.commands.base import plain
from client.errors import (
    ApiError,
    Busy,
    Conflict,
    Forbidden,
    InsufficientStorage,
    NotFound,
    Rejected,
    SyncbnError,
    Unauthorized,
    Unreachable,
    WaitTimeout,
)
from client.events import EndEvent, StateEvent
from client.http import Download
from contract.api import JobList, JobOut, PredictOut, StudyOut
from contract.layout import Layout
from contract.protocol import ReportEvent
from contract.spec import JobSpec
from contract.team import (
    AuditList,
    CreatedUser,
    MeOut,
    Quotas,
    TokenCreated,
    TokenOut,
    UserList,
    UserOut,
)
from contract.version import package_version
from workers.data.builtin import load_digits

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"
SDK_MARKER = "<!-- sdk example -->"


def connect(app, token: str | None = TOKEN) -> Client:
    """The SDK on ``app`` (its requests through a ``TestClient`` that adds no header)."""
    return Client(LOCAL, token, http=TestClient(app, base_url=LOCAL))


@pytest.fixture
def c(app) -> Client:
    return connect(app)


def finish(app, job_id: str, accuracy: float = 0.9) -> None:
    """The job runs on the fake Ray: two epoch reports, then SUCCEEDED."""
    http = local_client(app)
    tick(app)
    for epoch in (1, 2):
        report(http, job_id, "epoch", epoch, 64 * epoch, test_accuracy=accuracy)
    app.state.services.ray.set_status(job_id, "SUCCEEDED", logs='{"status": 0}')
    tick(app)


def test_submit_wait_and_list_give_the_service_types(app, c):
    job = c.submit(GOOD)
    assert isinstance(job, JobOut) and job.state == "queued" and job.spec.workers == 2
    finish(app, job.id)
    reports, events = [], []
    done = c.wait(job.id, on_report=reports.append, on_event=events.append, timeout_s=30)
    assert isinstance(done, JobOut) and done.state == "succeeded"
    assert done.result is not None and done.result.test_accuracy == pytest.approx(0.9)
    assert [(r.kind, r.epoch) for r in reports] == [("epoch", 1), ("epoch", 2)]
    assert all(isinstance(r, ReportEvent) and len(r.workers) == 2 for r in reports)
    states = [e.state for e in events if isinstance(e, StateEvent)]
    assert states == ["queued", "pending", "running", "succeeded"]
    assert isinstance(events[-1], EndEvent) and events[-1].state == "succeeded"
    assert [type(e).__name__ for e in c.events(job.id)] == [type(e).__name__ for e in events]

    other = c.submit(JobSpec(dataset="synthetic", workers=1, epochs=1))
    listing = c.jobs()
    assert isinstance(listing, JobList) and listing.total == 2
    assert [j.id for j in listing.jobs] == [other.id, job.id]
    assert [j.id for j in c.jobs(state="succeeded").jobs] == [job.id]
    assert [j.id for j in c.jobs(limit=1, offset=1).jobs] == [job.id]
    assert c.workers(job.id).step == 128 and len(c.metrics(job.id).evaluations) == 2
    assert c.logs(job.id, tail=5).job_id == job.id
    assert c.job(job.id).transitions[-1].state == "succeeded"
    assert c.health().version == package_version() and c.ready().status == "ready"


def test_cancel_delete_and_typed_errors(app, c):
    job = c.submit(GOOD)
    with pytest.raises(Conflict) as busy:
        c.delete_job(job.id)  # not over yet
    assert busy.value.status == 409 and "queued" in busy.value.message
    assert c.cancel(job.id).state == "cancelled"
    assert c.delete_job(job.id) is None
    with pytest.raises(NotFound) as missing:
        c.job(job.id)
    assert missing.value.status == 404 and job.id in missing.value.message
    assert str(missing.value) == f"HTTP 404: {missing.value.message}"

    with pytest.raises(Rejected) as bad:
        c.submit({**GOOD, "workers": 0})
    error = bad.value
    assert error.status == 422 and error.field == "workers" and error.setting is None
    assert "greater than or equal to 1" in error.message and isinstance(error.detail, list)
    assert str(error).startswith("HTTP 422:\n  workers: ")
    with pytest.raises(Unauthorized) as stranger:
        connect(app, token="not-the-token").jobs()
    assert stranger.value.status == 401 and isinstance(stranger.value, ApiError)


def test_a_limit_names_its_setting(make_app, tmp_path):
    c = connect(make_app(max_upload_bytes=1000, max_queued_jobs=0))
    path = tmp_path / "big.npz"
    np.savez(path, x=np.zeros((100, 8)), y=np.arange(100) % 2)
    with pytest.raises(Rejected) as big:
        c.upload_dataset(path)
    assert big.value.status == 413 and big.value.setting == "SYNCBN_MAX_UPLOAD_BYTES"
    with pytest.raises(Busy) as full:  # a full queue: no Retry-After, so not asked again
        c.submit(GOOD)
    assert full.value.status == 429 and "queue is full" in full.value.message
    (tmp_path / "filler").write_bytes(b"1" * 100_000)  # the disk budget: a 507 names it
    with pytest.raises(InsufficientStorage) as no_room:  # after "$SYNCBN_HOME (...) uses"
        connect(make_app(disk_budget_bytes=1000)).submit(GOOD)
    assert "$SYNCBN_HOME" in no_room.value.message
    assert no_room.value.setting == "SYNCBN_DISK_BUDGET_BYTES"


def test_studies(app, c):
    study = c.create_study(
        {"dataset": "synthetic", "workers": 2, "epochs": 1}, seeds=[0], arms=["local", "sync"]
    )
    assert isinstance(study, StudyOut) and [a.name for a in study.arms] == ["local", "sync"]
    assert c.study(study.id).state == "running" and c.studies().studies[0].id == study.id
    with pytest.raises(WaitTimeout):
        c.wait_study(study.id, poll_s=0, timeout_s=0)
    cancelled = c.cancel_study(study.id)
    assert cancelled.state == "cancelled"
    assert c.wait_study(study.id, poll_s=0).state == "cancelled"
    c.delete_study(study.id)
    assert c.studies().studies == []
    with pytest.raises(Rejected) as bad:
        c.create_study({"dataset": "synthetic", "workers": 0}, arms=["sync"])
    assert bad.value.field == "base.workers"


def test_users_tokens_me_and_the_audit_log(app, c):
    made = c.add_user("alice", quotas={"max_queued_jobs": 4})
    assert isinstance(made, CreatedUser) and isinstance(made.token, TokenCreated)
    assert (made.user.name, made.user.role, made.token.name) == ("alice", "member", "default")
    assert made.user.quotas == Quotas(max_queued_jobs=4)
    alice = connect(app, made.token.token)
    me = alice.me()
    assert isinstance(me, MeOut) and (me.name, me.role) == ("alice", "member")
    assert me.quotas.max_queued_jobs == 4 and me.usage.queued_jobs == 0
    assert alice.me_name == "alice"

    ours, hers = c.submit(GOOD), alice.submit(GOOD)
    assert (ours.owner, hers.owner) == ("admin", "alice")
    asked: list[str] = []
    alice.transport.http.event_hooks["request"].append(lambda r: asked.append(r.url.path))
    fresh = connect(app, made.token.token)
    fresh.transport.http.event_hooks["request"].append(lambda r: asked.append(r.url.path))
    assert [j.id for j in fresh.jobs(mine=True).jobs] == [hers.id]
    assert [j.id for j in fresh.jobs(mine=True).jobs] == [hers.id]
    assert asked.count("/v1/me") == 1  # the name is asked once, then kept
    assert [j.id for j in c.jobs(owner="alice").jobs] == [hers.id]
    assert [j.id for j in c.jobs(mine=True).jobs] == [ours.id]
    study = alice.create_study({"dataset": "synthetic", "workers": 1, "epochs": 1}, seeds=[0])
    assert [s.id for s in alice.studies(mine=True).studies] == [study.id]
    assert c.studies(mine=True).studies == [] and c.studies(owner="alice").studies[0].owner
    with pytest.raises(ValueError, match="not both"):
        c.jobs(owner="alice", mine=True)

    with pytest.raises(Forbidden) as refused:
        alice.users()
    assert refused.value.status == 403 and "(you are alice, a member)" in refused.value.message
    listing = c.users()
    assert isinstance(listing, UserList) and [u.name for u in listing.users] == ["admin", "alice"]
    changed = c.update_user("alice", role="viewer", quotas=Quotas(max_upload_bytes=10))
    assert isinstance(changed, UserOut) and changed.role == "viewer"
    assert changed.quotas == Quotas(max_upload_bytes=10)  # replaced: the queue back to default
    assert c.update_user("alice", role="member").quotas == changed.quotas
    assert c.user("alice").role == "member"

    laptop = c.add_token("alice", "laptop")
    assert isinstance(laptop, TokenCreated) and laptop.token != made.token.token
    old = c.revoke_token("alice", "default")
    assert isinstance(old, TokenOut) and old.revoked_at is not None
    with pytest.raises(Unauthorized):
        connect(app, made.token.token).me()
    assert connect(app, laptop.token).me().name == "alice"
    gone = c.revoke_user("alice")
    assert isinstance(gone, UserOut) and gone.revoked_at is not None
    with pytest.raises(Unauthorized):
        connect(app, laptop.token).me()
    with pytest.raises(NotFound):
        c.user("nobody")

    log = c.audit()
    assert isinstance(log, AuditList) and log.total == len(log.entries)
    assert [(e.actor, e.action, e.count) for e in log.entries] == [
        ("admin", "users-revoke", 1),
        (None, "sign-in", 2),  # the revoked tokens: one row a minute, from its first
        ("admin", "users-revoke-token", 1),
        ("admin", "users-add-token", 1),
        ("admin", "users-update", 1),
        ("admin", "users-update", 1),
        ("alice", "studies-create", 1),
        ("alice", "jobs-submit", 1),
        ("admin", "jobs-submit", 1),
        ("admin", "users-create", 1),
    ]
    alice_made = c.audit(actor="alice", status=201).entries
    assert [e.action for e in alice_made] == ["studies-create", "jobs-submit"]
    assert [e.object_id for e in c.audit(action="jobs-submit").entries] == [hers.id, ours.id]
    assert c.audit(object_id=hers.id, limit=1).entries[0].actor == "alice"
    assert c.audit(since=log.entries[0].at).total >= 1
    assert c.audit(since="2000-01-01T00:00:00").total == log.total
    assert c.audit(limit=2, offset=1).entries == log.entries[1:3]


def test_datasets_and_code_bundles(c, tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(20, 3)), y=np.arange(20) % 2)
    dataset = c.upload_dataset(path)
    assert dataset.n_train == 16 and dataset.input_shape == [3]
    assert [d.id for d in c.datasets().datasets] == [dataset.id]
    c.delete_dataset(dataset.id)
    assert c.datasets().datasets == []

    archive = tmp_path / "net.zip"
    archive.write_bytes(zip_bytes({"tinynet.py": NETWORK}))
    bundle = c.upload_code(archive)
    assert bundle.modules == ["tinynet"] and c.code_bundle(bundle.id).sha256 == bundle.sha256
    assert [b.id for b in c.code_bundles().bundles] == [bundle.id]
    c.delete_code(bundle.id)
    with pytest.raises(NotFound):
        c.code_bundle(bundle.id)


def test_models_download_and_predict(app, c, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = c.submit({"dataset": "digits", "epochs": 3})
    with pytest.raises(Conflict, match="no checkpoint yet"):
        c.download_model(job.id)
    for epoch in (2, 3):
        checkpoint(app.state.settings, job.id, epoch, load_digits(), JobSpec(dataset="digits"))
    models = c.models(job.id)
    assert [m.epoch for m in models.models] == [2, 3] and models.recipe["epoch"] == 3
    saved = c.download_model(job.id)
    assert isinstance(saved, Download) and saved.epoch == 3
    assert saved.path == Path(f"{job.id}-epoch3.safetensors") and saved.path.exists()
    assert saved.sha256 == models.models[1].sha256
    older = c.download_model(job.id, output=tmp_path / "m.safetensors", epoch=2)
    assert older.path == tmp_path / "m.safetensors" and older.sha256 == models.models[0].sha256

    from sklearn.datasets import load_digits as sk_digits

    images = sk_digits().images[:4]
    out = c.predict(job.id, images)  # an array, or a list: images.tolist()
    assert isinstance(out, PredictOut) and len(out.predictions) == 4
    assert c.predict(job.id, images.tolist(), epoch=2).epoch == 2
    with pytest.raises(Rejected) as bad:
        c.predict(job.id, images[:, :4].tolist())
    assert bad.value.field == "inputs"


def test_the_clis_json_is_the_services_json(app, c):
    """``syncbn --json`` prints ``plain(answer)``: the fields the service sent, as it sent
    them (no default added, datetimes and numbers unchanged)."""
    http = local_client(app)
    job = c.submit(GOOD)
    finish(app, job.id)
    study = c.create_study({"dataset": "synthetic", "workers": 1, "epochs": 1}, seeds=[1])
    for answer, path in (
        (c.job(job.id), f"/v1/jobs/{job.id}"),
        (c.jobs(), "/v1/jobs?limit=50&offset=0"),
        (c.workers(job.id), f"/v1/jobs/{job.id}/workers"),
        (c.metrics(job.id), f"/v1/jobs/{job.id}/metrics"),
        (c.study(study.id), f"/v1/studies/{study.id}"),
        (c.studies(), "/v1/studies"),
        (c.health(), "/healthz"),
        (c.me(), "/v1/me"),
        (c.users(), "/v1/users"),
        (c.audit(), "/v1/audit"),
    ):
        assert plain(answer) == http.get(path).json(), path


def serving(version: str, seen: list[httpx.Request]) -> httpx.Client:
    """An httpx client whose service says it is ``version`` and has no jobs."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok", "version": version})
        return httpx.Response(200, json={"jobs": [], "total": 0, "limit": 50, "offset": 0})

    return httpx.Client(transport=httpx.MockTransport(answer))


def test_another_major_version_warns_once_per_client():
    seen: list[httpx.Request] = []
    c = Client("http://127.0.0.1:8000", "t", http=serving("999.0.0", seen))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert c.jobs().total == 0 and c.jobs().total == 0
        c.health()
    assert [str(w.message) for w in caught if w.category is RuntimeWarning] == [
        f"the service at http://127.0.0.1:8000 runs syncbn-service 999.0.0, this client is "
        f"{package_version()}: requests or answers may not match (upgrade the older one)"
    ]
    assert [r.url.path for r in seen] == ["/v1/jobs", "/healthz", "/v1/jobs", "/healthz"]

    seen.clear()
    same = Client("http://127.0.0.1:8000", "t", http=serving(package_version(), seen))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.health()
        same.jobs()
    assert [r.url.path for r in seen] == ["/healthz", "/v1/jobs"]  # its answer was enough


def test_a_local_service_and_its_token_are_found_in_syncbn_home(tmp_path, monkeypatch):
    for name in ("SYNCBN_URL", "SYNCBN_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SYNCBN_HOME", str(tmp_path))
    assert Client().url == sdk.DEFAULT_URL
    layout = Layout.of(tmp_path)
    layout.service_url.write_text("http://127.0.0.1:8123\n")
    layout.api_token.write_text("home-token\n")
    seen: list[httpx.Request] = []

    def sent(c: Client) -> httpx.Request:
        """The request of ``c.jobs()`` (the version check follows it)."""
        seen.clear()
        c.jobs()
        return seen[0]

    found = Client(http=serving(package_version(), seen))
    assert found.url == "http://127.0.0.1:8123"
    request = sent(found)
    assert str(request.url).startswith("http://127.0.0.1:8123/v1/jobs")
    assert request.headers["Authorization"] == "Bearer home-token"

    monkeypatch.setenv("SYNCBN_API_TOKEN", "env-token")
    monkeypatch.setenv("SYNCBN_URL", "http://127.0.0.1:9000")
    request = sent(Client(http=serving(package_version(), seen)))
    assert request.headers["Authorization"] == "Bearer env-token" and request.url.port == 9000
    monkeypatch.delenv("SYNCBN_API_TOKEN")
    elsewhere = Client("http://syncbn.example:8000", http=serving(package_version(), seen))
    assert "Authorization" not in sent(elsewhere).headers  # the home's token stays here


def test_no_service_is_unreachable():
    with pytest.raises(Unreachable) as error:
        Client("http://127.0.0.1:9", "t", timeout_s=2).jobs()
    assert isinstance(error.value, SyncbnError) and error.value.url == "http://127.0.0.1:9"


def guide_example() -> str:
    """The guide's notebook example (the python block after ``SDK_MARKER``)."""
    text = GUIDE.read_text().split(SDK_MARKER, 1)[1]
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_guides_notebook_example_runs_as_written(make_app, monkeypatch, tmp_path, capsys):
    """The example on the in-process service: ``Client()`` reaches it, and each poll of the
    study runs its jobs on the fake Ray (reports, a model file, SUCCEEDED)."""
    app = make_app(ray=FakeRay(cpus=8))
    http, digits = local_client(app), load_digits()
    monkeypatch.setenv("SYNCBN_API_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    real = sdk.Transport
    monkeypatch.setattr(
        sdk, "Transport", lambda url, token, timeout_s, _: real(url, token, timeout_s, http)
    )

    def drive(seconds: float) -> None:
        tick(app)
        for job in http.get("/v1/jobs").json()["jobs"]:
            if job["state"] in ("pending", "running"):
                spec = JobSpec.model_validate(job["spec"])
                accuracy = 0.6 if spec.norm == "local" else 0.95
                for epoch in range(1, spec.epochs + 1):
                    report(http, job["id"], "epoch", epoch, epoch, test_accuracy=accuracy)
                checkpoint(app.state.settings, job["id"], spec.epochs, digits, spec)
                app.state.services.ray.set_status(job["id"], "SUCCEEDED", logs="{}")
        tick(app)

    monkeypatch.setattr(sdk, "pause", drive)
    exec(compile(guide_example(), str(GUIDE), "exec"), {})
    out = capsys.readouterr().out
    assert "recommended: sync" in out and "predictions: [" in out, out
