"""The role table, one case per row: admin, member and viewer, on their own and on others'
objects, for every write route (jobs, studies, datasets, code bundles); reads are open to
everyone signed in; quotas name the quota and the use; fair share in the real scheduler."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import teamkit
from bundlekit import zip_bytes
from fastapi import FastAPI
from fastapi.testclient import TestClient
from inprocess import GOOD, LOCAL, local_client, tick
from teamkit import NET, ROLES, ROWS, Member, check_row, npz_bytes

from service.files import uploads


def as_token(app: FastAPI, token: str) -> TestClient:
    return TestClient(app, base_url=LOCAL, headers={"Authorization": f"Bearer {token}"})


def add_user(admin: TestClient, app: FastAPI, name: str, role: str, **quotas: int) -> TestClient:
    body: dict[str, Any] = {"name": name, "role": role}
    if quotas:
        body["quotas"] = quotas
    response = admin.post("/v1/users", json=body)
    assert response.status_code == 201, response.text
    return as_token(app, response.json()["token"]["token"])


@pytest.fixture
def team(app: FastAPI, client: TestClient) -> dict[str, TestClient]:
    """The bootstrap admin, a second admin, two members and a viewer."""
    others = {name: add_user(client, app, name, role) for name, role in ROLES.items()}
    return {"admin": client, **others}


def objects_of(user: TestClient) -> dict[str, str]:
    return teamkit.objects_of(user, GOOD)


@pytest.mark.parametrize(("actor", "owner", "allowed"), ROWS)
def test_each_write_route_by_role_and_owner(team, actor, owner, allowed):
    members = {name: Member(client, name) for name, client in team.items()}
    check_row(members, actor, owner, allowed, GOOD)


def test_a_viewer_creates_nothing_and_reads_everything(team):
    ids = objects_of(team["alice"])
    vera = team["vera"]
    refusals = [
        vera.post("/v1/jobs", json=GOOD),
        vera.post("/v1/studies", json={"base": GOOD, "seeds": [0], "arms": ["sync"]}),
        vera.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())}),
        vera.post("/v1/code", files={"file": ("b.zip", zip_bytes({"net.py": NET}))}),
    ]
    what = ["submit jobs", "create studies", "upload files", "upload files"]
    for response, action in zip(refusals, what, strict=True):
        assert response.status_code == 403, response.text
        assert f"a viewer may not {action}" in response.json()["detail"]
        assert "a member or an admin may (you are vera, a viewer)" in response.json()["detail"]
    reads = [
        f"/v1/jobs/{ids['job']}",
        f"/v1/studies/{ids['study']}",
        "/v1/jobs",
        "/v1/studies",
        "/v1/datasets",
        "/v1/code",
        f"/v1/jobs/{ids['job']}/workers",
        f"/v1/jobs/{ids['job']}/metrics",
    ]
    for path in reads:
        assert vera.get(path).status_code == 200, path


def test_owners_are_shown_and_lists_filter_by_owner(team):
    alice, bob = objects_of(team["alice"]), objects_of(team["bob"])
    admin = team["admin"]
    job = admin.get(f"/v1/jobs/{alice['job']}").json()
    assert job["owner"] == "alice"
    assert admin.get(f"/v1/studies/{bob['study']}").json()["owner"] == "bob"
    listed = admin.get("/v1/jobs", params={"owner": "alice"}).json()
    assert {j["owner"] for j in listed["jobs"]} == {"alice"}
    assert listed["total"] == 2  # her job and her study's one job
    studies = admin.get("/v1/studies", params={"owner": "bob"}).json()["studies"]
    assert [s["id"] for s in studies] == [bob["study"]]
    datasets = admin.get("/v1/datasets").json()["datasets"]
    assert {d["owner"] for d in datasets} == {"alice", "bob"}
    assert {b["owner"] for b in admin.get("/v1/code").json()["bundles"]} == {"alice", "bob"}


def test_a_member_runs_jobs_on_their_own_or_an_admins_uploads_only(team):
    mine, bobs, shared = (
        objects_of(team["alice"]),
        objects_of(team["bob"]),
        objects_of(team["admin"]),
    )
    alice = team["alice"]
    code_job = {**GOOD, "model": "net:build_model", "batch_size_per_worker": 4}
    for ids in (mine, shared):
        ok = alice.post(
            "/v1/jobs", json={**code_job, "dataset": ids["dataset"], "code": ids["code"]}
        )
        assert ok.status_code == 201, ok.text
    theirs = alice.post(
        "/v1/jobs", json={**GOOD, "dataset": bobs["dataset"], "batch_size_per_worker": 4}
    )
    assert theirs.status_code == 403
    assert f"dataset {bobs['dataset']} belongs to bob" in theirs.json()["detail"]
    theirs = alice.post(
        "/v1/jobs", json={**code_job, "dataset": mine["dataset"], "code": bobs["code"]}
    )
    assert theirs.status_code == 403
    assert f"code bundle {bobs['code']} belongs to bob" in theirs.json()["detail"]


def test_quotas_name_the_quota_and_the_use(team, app):
    admin = team["admin"]
    capped = add_user(admin, app, "carol", "member", max_queued_jobs=1, max_running_workers=1)
    wide = capped.post("/v1/jobs", json=GOOD)  # 2 workers
    assert wide.status_code == 422
    (error,) = wide.json()["detail"]
    assert error["loc"][-1] == "workers"
    assert (
        "over carol's quota of 1 running at once (max_running_workers, set for them by an "
        "admin; 0 running now)" in error["msg"]
    )
    narrow = {**GOOD, "workers": 1}
    assert capped.post("/v1/jobs", json=narrow).status_code == 201
    full = capped.post("/v1/jobs", json=narrow)
    assert full.status_code == 429
    assert "carol has 1 job(s) queued and may queue 1 (max_queued_jobs)" in full.json()["detail"]
    study = capped.post("/v1/studies", json={"base": narrow, "seeds": [0], "arms": ["sync"]})
    assert study.status_code == 429  # a study's jobs are its owner's
    small = add_user(admin, app, "dan", "member", max_upload_bytes=100)
    upload = small.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())})
    assert upload.status_code == 422
    (error,) = upload.json()["detail"]
    assert error["loc"][-1] == "file"
    assert "over their quota of 100 (max_upload_bytes, set for them by an admin)" in error["msg"]
    assert admin.get("/v1/datasets").json()["datasets"] == []  # nothing kept


def test_two_uploads_at_once_never_both_pass_the_upload_quota(team, app, monkeypatch):
    """The quota check and the row's insert are one step: the second upload sees the first."""
    admin = team["admin"]
    sent = admin.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())}).json()
    size = sent["size_bytes"]
    erin = add_user(admin, app, "erin", "member", max_upload_bytes=size * 3 // 2)
    checked = uploads.check_upload_quota

    def slow_check(*args: Any) -> None:  # both uploads are checked before either is inserted
        checked(*args)
        time.sleep(0.3)

    monkeypatch.setattr(uploads, "check_upload_quota", slow_check)
    token = erin.headers["Authorization"]
    clients = [TestClient(app, base_url=LOCAL, headers={"Authorization": token}) for _ in "ab"]
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda c: c.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())}), clients
            )
        )
    assert sorted(a.status_code for a in answers) == [201, 422]
    owners = [d["owner"] for d in admin.get("/v1/datasets").json()["datasets"]]
    assert sorted(owners) == ["admin", "erin"]


def test_the_scheduler_shares_fairly_between_users(team, app):
    """A queues 3 jobs, then B queues 1: with room for one job (the FakeRay cluster has 2
    CPUs: one 2-worker job at a time), B's goes next after A's first: they take turns."""
    a_jobs = [team["alice"].post("/v1/jobs", json=GOOD).json()["id"] for _ in range(3)]
    b_job = team["bob"].post("/v1/jobs", json=GOOD).json()["id"]
    tick(app)
    admin = team["admin"]
    state = {j: admin.get(f"/v1/jobs/{j}").json()["state"] for j in [*a_jobs, b_job]}
    assert state[a_jobs[0]] == "pending" and state[b_job] == "queued"
    admin.post(f"/v1/jobs/{a_jobs[0]}/cancel")
    tick(app)  # Ray reports the job stopped: its slot is free
    tick(app)
    assert admin.get(f"/v1/jobs/{b_job}").json()["state"] == "pending"  # before A's 2nd
    waiting = admin.get(f"/v1/jobs/{a_jobs[1]}").json()
    assert waiting["state"] == "queued"
    assert waiting["reason"] == "waiting for resources: needs 2 CPU, 0 of 2 free"  # next


def test_a_paused_then_revoked_users_queued_job_starts_when_an_admin_raises_the_quota(team, app):
    """Pause (a workers quota of 0), revoke: the job waits; a revoked user's quotas still
    change (their role does not), so the admin can let it run instead of cancelling it."""
    admin, alice = team["admin"], team["alice"]
    job = alice.post("/v1/jobs", json=GOOD).json()["id"]
    quotas = {"max_running_workers": 0}
    assert admin.patch("/v1/users/alice", json={"quotas": quotas}).status_code == 200
    assert admin.delete("/v1/users/alice").status_code == 200
    tick(app)
    waiting = admin.get(f"/v1/jobs/{job}").json()
    assert waiting["state"] == "queued" and "raises the quota" in waiting["reason"]
    demote = admin.patch("/v1/users/alice", json={"role": "viewer"})
    assert demote.status_code == 409 and "their quotas can" in demote.json()["detail"]
    raised = admin.patch("/v1/users/alice", json={"quotas": {"max_running_workers": None}})
    assert raised.status_code == 200 and raised.json()["revoked_at"] is not None
    tick(app)
    assert admin.get(f"/v1/jobs/{job}").json()["state"] == "pending"
    assert alice.get("/v1/me").status_code == 401  # still revoked


def test_a_quota_refusal_names_the_setting_or_the_users_own_quota(make_app):
    admin = local_client(make_app(quota_max_running_workers=1))
    error = admin.post("/v1/jobs", json=GOOD).json()["detail"][0]  # the default applies
    assert "(max_running_workers; 0 running now)" in error["msg"]
    assert error["msg"].endswith("(set by SYNCBN_QUOTA_MAX_RUNNING_WORKERS)")
    patch = {"quotas": {"max_running_workers": 1}}
    assert admin.patch("/v1/users/admin", json=patch).status_code == 200
    error = admin.post("/v1/jobs", json=GOOD).json()["detail"][0]  # now admin's own
    assert "(max_running_workers, set for them by an admin; 0 running now)" in error["msg"]
    assert "SYNCBN_" not in error["msg"]


def test_past_the_model_bytes_quota_the_next_submit_is_a_429_naming_it(team, app, tmp_path):
    """Counted: the ``.safetensors`` files of the user's checkpoint folders; a link planted by
    a job, or a file outside a checkpoint folder, is not."""
    admin = team["admin"]
    erin = add_user(admin, app, "erin", "member", max_model_bytes=1000)
    job = erin.post("/v1/jobs", json=GOOD).json()["id"]
    run = app.state.settings.layout.runs / job
    (run / "checkpoint_000000").mkdir(parents=True)
    (run / "checkpoint_000000" / "model.safetensors").write_bytes(b"x" * 600)
    (run / "stray.safetensors").write_bytes(b"x" * 5000)  # not in a checkpoint folder
    elsewhere = tmp_path / "big"
    elsewhere.mkdir()
    (elsewhere / "model.safetensors").write_bytes(b"x" * 5000)
    (run / "checkpoint_000001").symlink_to(elsewhere)  # a link: not followed
    assert erin.post("/v1/jobs", json=GOOD).status_code == 201  # 600 of 1000
    assert erin.get("/v1/me").json()["usage"]["model_bytes"] == 600
    (run / "checkpoint_000000" / "model.safetensors").write_bytes(b"x" * 1000)
    refused = erin.post("/v1/jobs", json=GOOD)
    assert refused.status_code == 429
    assert "erin's trained models use 1000 bytes, at their quota of 1000" in refused.text
    assert "(max_model_bytes)" in refused.text
    assert team["alice"].post("/v1/jobs", json=GOOD).status_code == 201  # others go on
