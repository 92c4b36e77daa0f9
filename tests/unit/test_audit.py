"""The audit log (issue 28), in process: every write is in it, who, what, which object, when
and the outcome, refusals included (403, 404, 409, 422); reads, a job's own reports and
predictions are not; failed sign-ins are one row per client address and minute, never the
token; writing it never fails a request; ``GET /v1/audit`` pages and filters, for admins."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from inprocess import GOOD, LOCAL
from test_users import add_user, as_user

from service.teams import audit


def entries(client: TestClient, **filters) -> list[dict]:
    response = client.get("/v1/audit", params={"limit": 500, **filters})
    assert response.status_code == 200, response.text
    return response.json()["entries"]


def summary(rows: list[dict]) -> list[tuple]:
    """(actor, action, object kind, object id, status) of each row, oldest first."""
    keys = ("actor", "action", "object_kind", "object_id", "status")
    return [tuple(row[k] for k in keys) for row in reversed(rows)]


def test_every_write_is_in_the_log_with_its_outcome_refusals_included(client):
    job = client.post("/v1/jobs", json=GOOD)
    job_id = job.json()["id"]
    assert job.headers["location"] == f"/v1/jobs/{job_id}"
    alice = as_user(client, add_user(client, "alice"))
    assert alice.post("/v1/users", json={"name": "mallory"}).status_code == 403
    assert alice.post(f"/v1/jobs/{job_id}/cancel").status_code == 403  # not hers
    assert client.post("/v1/jobs", json={**GOOD, "epochs": 0}).status_code == 422
    assert client.delete("/v1/jobs/j-missing").status_code == 404
    assert client.delete("/v1/users/admin").status_code == 409
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    # reads, predictions and a job's own reports are not writes
    client.get("/v1/jobs")
    client.get(f"/v1/jobs/{job_id}")
    client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[0.0]]})
    client.post(f"/v1/jobs/{job_id}/predict/images", files={"files": ("a.png", b"x")})
    rows = entries(client)
    assert summary(rows) == [
        ("admin", "jobs-submit", "job", job_id, 201),
        ("admin", "users-create", "user", "alice", 201),
        ("alice", "users-create", "user", None, 403),
        ("alice", "jobs-cancel", "job", job_id, 403),
        ("admin", "jobs-submit", "job", None, 422),
        ("admin", "jobs-delete", "job", "j-missing", 404),
        ("admin", "users-revoke", "user", "admin", 409),
        ("admin", "jobs-cancel", "job", job_id, 200),
    ]
    by_status = {row["status"]: row for row in rows}
    assert by_status[403]["detail"].startswith("only an admin may manage users (you are alice")
    assert by_status[422]["detail"].startswith("epochs: ")  # the field named
    assert "cannot be revoked" in by_status[409]["detail"]
    assert rows[-1]["detail"] == f"/v1/jobs/{job_id}"  # a create's Location
    assert all(row["count"] == 1 and row["at"] for row in rows)


def test_token_writes_are_logged_under_the_user_and_token(client):
    add_user(client, "alice")
    client.post("/v1/users/alice/tokens", json={"name": "laptop"})
    client.delete("/v1/users/alice/tokens/laptop")
    client.patch("/v1/users/alice", json={"role": "viewer"})
    client.delete("/v1/users/alice")
    assert summary(entries(client))[1:] == [
        ("admin", "users-add-token", "user", "alice/laptop", 201),
        ("admin", "users-revoke-token", "user", "alice/laptop", 200),
        ("admin", "users-update", "user", "alice", 200),
        ("admin", "users-revoke", "user", "alice", 200),
    ]


def test_a_users_update_says_what_changed(client):
    add_user(client, "alice")
    patches = [
        {"role": "viewer", "quotas": {"max_queued_jobs": 5}},
        {"quotas": {"max_queued_jobs": None, "max_upload_bytes": 1000}},
        {"role": "viewer"},
    ]
    for patch in patches:
        assert client.patch("/v1/users/alice", json=patch).status_code == 200
    details = [row["detail"] for row in entries(client, action="users-update")]
    assert details == [
        "nothing changed",
        "max_queued_jobs 5 -> default; max_upload_bytes default -> 1000",
        "role member -> viewer; max_queued_jobs default -> 5",
    ]


def test_failed_sign_ins_are_counted_per_address_and_minute_without_the_token(client, app):
    secret = "not-a-token-0123456789"
    for _ in range(7):
        assert as_user(client, secret).post("/v1/jobs", json=GOOD).status_code == 401
    other = TestClient(app, base_url=LOCAL, client=("10.1.2.3", 4000))
    for path in ("/v1/jobs", "/metrics", "/v1/internal/jobs/j-1/events"):
        assert other.request("GET" if "internal" not in path else "POST", path).status_code == 401
    rows = entries(client, action="sign-in")
    assert [(r["object_id"], r["count"], r["actor"], r["status"]) for r in rows] == [
        ("10.1.2.3", 3, None, 401),
        ("testclient", 7, None, 401),
    ]
    assert rows[0]["object_kind"] == "client"
    dumped = client.get("/v1/audit").text
    assert secret not in dumped and "Bearer" not in dumped
    assert entries(client, actor="admin") == []  # nothing signed in was written


def test_a_new_minute_starts_a_new_count_and_a_flood_of_addresses_is_bounded(
    client, app, monkeypatch
):
    monkeypatch.setattr(audit, "MAX_COUNTED", 3)
    now = [1_000_000.0]
    monkeypatch.setattr(audit.time, "time", lambda: now[0])
    for n in range(6):
        TestClient(app, base_url=LOCAL, client=(f"10.0.0.{n}", 1)).get("/v1/jobs")
    rows = entries(client, action="sign-in")
    counts = {r["object_id"]: r["count"] for r in rows}
    assert counts == {"10.0.0.0": 1, "10.0.0.1": 1, "10.0.0.2": 1, audit.MANY: 3}
    now[0] += 60
    TestClient(app, base_url=LOCAL, client=("10.0.0.0", 1)).get("/v1/jobs")
    assert len(entries(client, action="sign-in")) == 5


def test_a_write_refused_before_sign_in_is_counted(client):
    rebound = {"Host": "rebound.attacker.example"}
    for _ in range(3):
        assert client.post("/v1/jobs", json=GOOD, headers=rebound).status_code == 403
    assert client.get("/v1/jobs", headers=rebound).status_code == 403  # a read: not logged
    for i in range(3):  # other paths, even unknown ones: the same row (one per address)
        assert client.post(f"/v1/x{i}", headers=rebound).status_code == 403
    (row,) = entries(client)
    assert (row["actor"], row["action"], row["status"], row["count"]) == (
        None, "refused", 403, 6
    )  # fmt: skip


def test_a_user_named_predict_is_audited_like_any_other(client):
    """Only the prediction routes' POSTs are reads; a path that merely ends like one is not."""
    assert client.post("/v1/users", json={"name": "predict"}).status_code == 201
    assert client.patch("/v1/users/predict", json={"role": "viewer"}).status_code == 200
    actions = [e["action"] for e in entries(client)]
    assert actions[:2] == ["users-update", "users-create"]


def test_writing_the_log_never_fails_the_request(client, monkeypatch, caplog):
    def broken(self, entry):
        raise RuntimeError("disk full")

    monkeypatch.setattr(audit.AuditLog, "_insert", broken)
    with caplog.at_level(logging.ERROR, logger="service.audit"):
        assert client.post("/v1/jobs", json=GOOD).status_code == 201
    assert "could not write the audit entry" in caplog.text
    monkeypatch.undo()
    assert summary(entries(client)) == []  # that one was lost, and said so
    assert client.post("/v1/jobs", json=GOOD).status_code == 201
    assert len(entries(client)) == 1


def test_the_log_pages_and_filters_for_admins_only(client):
    ids = [client.post("/v1/jobs", json=GOOD).json()["id"] for _ in range(5)]
    alice = as_user(client, add_user(client, "alice"))
    alice.delete(f"/v1/jobs/{ids[0]}")
    page = client.get("/v1/audit", params={"limit": 2, "offset": 1}).json()
    assert (page["total"], page["limit"], page["offset"]) == (7, 2, 1)
    assert [e["object_id"] for e in page["entries"]] == ["alice", ids[4]]  # newest first
    assert [e["object_id"] for e in entries(client, action="jobs-submit")] == ids[::-1]
    assert [e["action"] for e in entries(client, actor="alice")] == ["jobs-delete"]
    assert [e["actor"] for e in entries(client, object_id=ids[0])] == ["alice", "admin"]
    assert [e["actor"] for e in entries(client, status=403)] == ["alice"]
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert entries(client, since=later) == []
    assert len(entries(client, since="2000-01-01T00:00:00")) == 7
    assert client.get("/v1/audit", params={"limit": 0}).status_code == 422
    assert client.get("/v1/audit", params={"status": 42}).status_code == 422
    refused = alice.get("/v1/audit")
    assert refused.status_code == 403
    assert (
        refused.json()["detail"] == "only an admin may read the audit log (you are alice, a member)"
    )


def test_a_write_refused_before_it_was_routed_is_named_after_its_route(client):
    too_large = {"Content-Length": str(10 << 20), "Content-Type": "application/json"}
    response = client.post("/v1/jobs/j-1/cancel", content=b"{}", headers=too_large)
    assert response.status_code == 413
    (row,) = entries(client)
    assert summary([row]) == [("admin", "jobs-cancel", "job", "j-1", 413)]
    assert "SYNCBN_MAX_BODY_BYTES" in row["detail"]


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_since_out_of_range_in_utc_is_a_422(client, since):
    response = client.get("/v1/audit", params={"since": since})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "since"]
