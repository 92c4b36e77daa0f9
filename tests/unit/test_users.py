"""A team shares the service (issue 28), in process: an admin adds users and their tokens,
changes roles and quotas and revokes; every token signs in its user, once per request, and a
revoked one is refused at its very next request; ``/v1/me``; single sign-on behind a trusted
proxy. Who may change whose jobs and uploads is in the lead's access tests; the audit log in
``test_audit.py``."""

from __future__ import annotations

import anyio
import pytest
from fastapi.testclient import TestClient
from inprocess import GOOD, LOCAL, local_client
from pydantic import ValidationError

from service.api import auth
from service.settings import Settings

ADMIN_ROUTES = [
    ("POST", "/v1/users", {"name": "mallory"}),
    ("GET", "/v1/users", None),
    ("GET", "/v1/users/alice", None),
    ("PATCH", "/v1/users/alice", {"role": "admin"}),
    ("DELETE", "/v1/users/alice", None),
    ("POST", "/v1/users/alice/tokens", {"name": "mine"}),
    ("DELETE", "/v1/users/alice/tokens/default", None),
    ("GET", "/v1/audit", None),
]


def add_user(client: TestClient, name: str, role: str = "member", **quotas: int) -> str:
    """Add ``name`` as the admin ``client``; their first token."""
    response = client.post("/v1/users", json={"name": name, "role": role, "quotas": quotas})
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/users/{name}"
    return response.json()["token"]["token"]


def as_user(client: TestClient, token: str, **kwargs) -> TestClient:
    """A client of the same app signed in with ``token`` (``kwargs``: the TestClient's)."""
    return TestClient(
        client.app, base_url=LOCAL, headers={"Authorization": f"Bearer {token}"}, **kwargs
    )


def test_an_admin_adds_a_member_and_a_viewer_whose_tokens_are_shown_once_and_work(client):
    made = client.post("/v1/users", json={"name": "alice"})
    assert made.status_code == 201
    body = made.json()
    alice_token = body["token"]["token"]
    assert body["user"]["role"] == "member" and body["token"]["name"] == "default"
    assert len(alice_token) >= 43 and body["user"]["tokens"][0]["name"] == "default"
    victor_token = add_user(client, "victor", "viewer")
    for name, token, role in (("alice", alice_token, "member"), ("victor", victor_token, "viewer")):
        user = as_user(client, token)
        assert user.get("/v1/jobs").status_code == 200
        me = user.get("/v1/me").json()
        assert (me["name"], me["role"]) == (name, role)
        shown = client.get(f"/v1/users/{name}").text + client.get("/v1/users").text
        assert token not in shown  # only its SHA-256 is kept
    listed = [u["name"] for u in client.get("/v1/users").json()["users"]]
    assert listed == ["admin", "alice", "victor"]
    assert client.get("/v1/users/nobody").status_code == 404


def test_a_member_or_a_viewer_gets_403_on_every_admin_route_naming_their_role(client):
    tokens = {"member": add_user(client, "alice"), "viewer": add_user(client, "victor", "viewer")}
    for role, token in tokens.items():
        user = as_user(client, token)
        name = "alice" if role == "member" else "victor"
        for method, path, body in ADMIN_ROUTES:
            response = user.request(method, path, json=body)
            assert response.status_code == 403, (role, method, path)
            detail = response.json()["detail"]
            assert (
                detail.startswith("only an admin may") and f"(you are {name}, a {role})" in detail
            )
    assert client.get("/v1/users/alice").json()["revoked_at"] is None  # nothing changed


def test_me_gives_the_quotas_in_force_and_the_use(make_app):
    client = local_client(make_app(quota_max_queued_jobs=5, quota_max_running_workers=8))
    token = add_user(client, "alice", max_running_workers=2)
    me = as_user(client, token).get("/v1/me").json()
    assert me["quotas"]["max_running_workers"] == 2  # her own
    assert me["quotas"]["max_queued_jobs"] == 5  # the default setting
    assert me["quotas"]["max_upload_bytes"] is None  # no limit
    assert me["usage"] == {"running_workers": 0, "queued_jobs": 0, "upload_bytes": 0,
                           "model_bytes": 0}  # fmt: skip
    admin = client.get("/v1/me").json()
    assert (admin["name"], admin["role"]) == ("admin", "admin")
    assert client.post("/v1/jobs", json=GOOD).status_code == 201
    assert client.get("/v1/me").json()["usage"]["queued_jobs"] == 1
    patched = client.patch("/v1/users/alice", json={"quotas": {"max_queued_jobs": 1}})
    assert patched.json()["quotas"]["max_running_workers"] is None  # replaced, back to default
    me = as_user(client, token).get("/v1/me").json()["quotas"]
    assert (me["max_queued_jobs"], me["max_running_workers"]) == (1, 8)


def test_a_revoked_user_is_refused_at_the_very_next_request(client):
    token = add_user(client, "alice")
    alice = as_user(client, token)
    assert alice.get("/v1/jobs").status_code == 200  # now cached
    revoked = client.delete("/v1/users/alice")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert all(t["revoked_at"] for t in revoked.json()["tokens"])
    response = alice.get("/v1/jobs")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert client.delete("/v1/users/alice").status_code == 200  # again: nothing changes
    again = client.post("/v1/users", json={"name": "alice"})
    assert again.status_code == 409 and "never given again" in again.json()["detail"]
    assert client.post("/v1/users/alice/tokens", json={"name": "new"}).status_code == 409
    assert client.patch("/v1/users/alice", json={"role": "admin"}).status_code == 409


def test_revoking_one_token_leaves_the_users_others_working(client):
    first = add_user(client, "alice")
    added = client.post("/v1/users/alice/tokens", json={"name": "laptop"})
    assert added.status_code == 201
    assert added.headers["location"] == "/v1/users/alice/tokens/laptop"
    second = added.json()["token"]
    assert second != first and added.json()["user"] == "alice"
    assert client.post("/v1/users/alice/tokens", json={"name": "laptop"}).status_code == 409
    for token in (first, second):
        assert as_user(client, token).get("/v1/me").json()["name"] == "alice"
    out = client.delete("/v1/users/alice/tokens/default")
    assert out.status_code == 200 and out.json()["name"] == "default" and out.json()["revoked_at"]
    assert as_user(client, first).get("/v1/me").status_code == 401
    assert as_user(client, second).get("/v1/me").status_code == 200
    assert client.delete("/v1/users/alice/tokens/nope").status_code == 404


def test_the_bootstrap_admin_can_be_neither_revoked_nor_demoted(client):
    refused = client.delete("/v1/users/admin")
    assert refused.status_code == 409 and "cannot be revoked" in refused.json()["detail"]
    assert client.patch("/v1/users/admin", json={"role": "member"}).status_code == 409
    assert (
        client.patch("/v1/users/admin", json={"quotas": {"max_queued_jobs": 3}}).status_code == 200
    )
    assert client.get("/v1/me").json()["role"] == "admin"
    assert client.post("/v1/users", json={"name": "admin"}).status_code == 409


def test_a_role_change_applies_at_the_next_request(client):
    alice = as_user(client, add_user(client, "alice"))
    assert alice.get("/v1/me").json()["role"] == "member"
    assert client.patch("/v1/users/alice", json={"role": "viewer"}).json()["role"] == "viewer"
    assert alice.get("/v1/me").json()["role"] == "viewer"
    client.patch("/v1/users/alice", json={"role": "admin"})
    assert alice.get("/v1/users").status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [({"name": "Alice"}, ["body", "name"]), ({"name": "a" * 65}, ["body", "name"]),
     ({"name": "al ice"}, ["body", "name"]), ({"name": "bob", "role": "boss"}, ["body", "role"]),
     ({"name": "bob", "quotas": {"max_queued_jobs": -1}}, ["body", "quotas", "max_queued_jobs"]),
     ({"name": "bob", "quotas": {"gpus": 1}}, ["body", "quotas", "gpus"]),
     ({"name": "bob", "admin": True}, ["body", "admin"])],
)  # fmt: skip
def test_a_bad_user_is_a_422_naming_the_field(client, body, field):
    response = client.post("/v1/users", json=body)
    assert response.status_code == 422
    assert field in [e["loc"] for e in response.json()["detail"]]


def test_a_bad_token_name_or_patch_is_a_422(client):
    add_user(client, "alice")
    bad = client.post("/v1/users/alice/tokens", json={"name": "my laptop"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "name"]
    bad = client.patch("/v1/users/alice", json={"role": "root"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "role"]


def test_last_used_is_written_after_the_answer_at_most_once_a_minute(client, monkeypatch):
    token = add_user(client, "alice")
    alice = as_user(client, token)
    assert client.get("/v1/users/alice").json()["tokens"][0]["last_used_at"] is None
    alice.get("/v1/jobs")
    first = client.get("/v1/users/alice").json()["tokens"][0]["last_used_at"]
    assert first is not None
    alice.get("/v1/jobs")
    assert client.get("/v1/users/alice").json()["tokens"][0]["last_used_at"] == first
    monkeypatch.setattr(auth, "LAST_USED_EVERY_S", 0.0)
    alice.get("/v1/jobs")
    assert client.get("/v1/users/alice").json()["tokens"][0]["last_used_at"] > first


def test_the_cache_keeps_only_signed_in_tokens_and_is_bounded(client, app, monkeypatch):
    monkeypatch.setattr(auth, "MAX_CACHED", 2)
    authenticator = app.state.authenticator
    tokens = [add_user(client, name) for name in ("ann", "bea", "cid")]
    for token in tokens:
        assert as_user(client, token).get("/v1/me").status_code == 200
    assert len(authenticator._callers) == 2
    for n in range(20):
        assert as_user(client, f"guess-{n}").get("/v1/jobs").status_code == 401
    assert len(authenticator._callers) == 2
    assert as_user(client, tokens[0]).get("/v1/me").json()["name"] == "ann"  # read again


# -- single sign-on behind a trusted proxy ---------------------------------------------------
PROXIED = {"trusted_proxy_header": "X-Forwarded-User", "trusted_proxies": "10.0.0.0/24, ::1"}


def from_address(app, address: str, **headers: str) -> TestClient:
    return TestClient(app, base_url=LOCAL, client=(address, 50000), headers=headers)


def test_a_trusted_proxys_header_names_the_user(make_app):
    app = make_app(**PROXIED)
    proxy = from_address(app, "10.0.0.5", **{"X-Forwarded-User": "carol"})
    me = proxy.get("/v1/me")
    assert me.status_code == 200
    assert (me.json()["name"], me.json()["role"]) == ("carol", "member")  # first seen: made
    assert proxy.post("/v1/jobs", json=GOOD).json()["owner"] == "carol"
    admin = local_client(app)
    assert admin.get("/v1/users/carol").json()["tokens"] == []
    (made,) = admin.get("/v1/audit", params={"action": "users-create-by-proxy"}).json()["entries"]
    assert (made["actor"], made["object_id"], made["status"]) == ("carol", "carol", 201)
    assert made["detail"] == "first signed in through the trusted proxy: made a member"
    admin.patch("/v1/users/carol", json={"role": "viewer"})
    assert proxy.get("/v1/me").json()["role"] == "viewer"
    admin.delete("/v1/users/carol")
    refused = proxy.get("/v1/me")
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    odd = from_address(app, "10.0.0.5", **{"X-Forwarded-User": "Carol@example.com"})
    assert odd.get("/v1/me").status_code == 401
    assert "does not name a user" in odd.get("/v1/me").json()["detail"]
    assert from_address(app, "::1", **{"X-Forwarded-User": "dan"}).get("/v1/me").status_code == 200
    admin_named = from_address(app, "10.0.0.5", **{"X-Forwarded-User": "admin"}).get("/v1/me")
    assert admin_named.status_code == 401 and "promotes a proxy user" in admin_named.text


def test_the_proxy_header_from_any_other_address_is_ignored(make_app):
    app = make_app(**PROXIED, proxy_user_role="viewer")
    admin = local_client(app)
    token = add_user(admin, "alice")
    for address in ("10.0.1.5", "192.168.0.7", "testclient"):
        stranger = from_address(app, address, **{"X-Forwarded-User": "admin"})
        assert stranger.get("/v1/jobs").status_code == 401, address
        assert stranger.post("/v1/users", json={"name": "eve"}).status_code == 401
        signed = stranger.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert signed.json()["name"] == "alice"  # the token, not the header
    assert admin.get("/v1/users/eve").status_code == 404
    viewer = from_address(app, "10.0.0.9", **{"X-Forwarded-User": "fay"})
    assert viewer.get("/v1/me").json()["role"] == "viewer"  # SYNCBN_PROXY_USER_ROLE
    # a trusted address without the header: the token as ever
    assert from_address(app, "10.0.0.9").get("/v1/jobs").status_code == 401


def test_the_proxy_header_is_off_by_default(client):
    headers = {"X-Forwarded-User": "admin"}
    assert from_address(client.app, "127.0.0.1", **headers).get("/v1/jobs").status_code == 401


@pytest.mark.parametrize(
    ("settings", "named"),
    [({"trusted_proxy_header": "X-Forwarded-User", "trusted_proxies": "10.0.0.0/33"},
      "SYNCBN_TRUSTED_PROXIES"),
     ({"trusted_proxy_header": "X-Forwarded-User", "trusted_proxies": "proxy.local"},
      "SYNCBN_TRUSTED_PROXIES"),
     ({"trusted_proxy_header": "X-Forwarded-User"}, "SYNCBN_TRUSTED_PROXIES is empty"),
     ({"trusted_proxy_header": "X User", "trusted_proxies": "10.0.0.1"},
      "SYNCBN_TRUSTED_PROXY_HEADER"),
     ({"trusted_proxy_header": "Authorization", "trusted_proxies": "10.0.0.1"},
      "SYNCBN_TRUSTED_PROXY_HEADER")],
)  # fmt: skip
def test_a_bad_proxy_setting_fails_at_start_naming_it(settings, named):
    with pytest.raises(ValidationError, match=named):
        Settings(**settings)


def test_the_credential_is_the_proxys_user_whatever_bearer_token_comes_along(make_app):
    """Per-credential caps (event streams) count a proxy user by name: junk bearer tokens
    beside the header do not make new credentials."""
    app = make_app(**PROXIED)
    authenticator: auth.Authenticator = app.state.authenticator
    credentials = set()
    for junk in ("a", "b", "c"):
        scope = {
            "type": "http",
            "path": "/v1/jobs/j-1/events",
            "client": ("10.0.0.5", 50000),
            "headers": [
                (b"x-forwarded-user", b"carol"),
                (b"authorization", f"Bearer {junk}".encode()),
            ],
        }
        outcome = anyio.run(authenticator.sign_in, scope)
        assert outcome.refusal is None and outcome.caller.name == "carol"
        credentials.add(outcome.credential)
    assert credentials == {"proxy:carol"}


def test_only_a_jobs_ingest_token_reaches_the_ingest_route_whatever_the_id(client):
    """A user's token is no ingest token, for a job id of any length."""
    token = add_user(client, "alice")
    alice = as_user(client, token)
    for job_id in ("j-1", "a" * 201, "a" * 5000):
        response = alice.post(f"/v1/internal/jobs/{job_id}/events", json={"type": "report"})
        assert response.status_code == 401, (len(job_id), response.text)


@pytest.mark.parametrize(
    "quotas",
    [{"max_queued_jobs": 2**31}, {"max_running_workers": 3_000_000_000},
     {"max_upload_bytes": 10**30}, {"max_model_bytes": 2**63}, {"max_queued_jobs": True},
     {"max_queued_jobs": "5"}],
)  # fmt: skip
def test_a_quota_out_of_range_or_not_an_integer_is_a_422_naming_it(client, quotas):
    (name,) = quotas
    for response in (
        client.post("/v1/users", json={"name": "q", "quotas": quotas}),
        client.patch("/v1/users/admin", json={"quotas": quotas}),
    ):
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][-1] == name


def test_a_token_added_without_a_name_gets_one_of_its_own(client):
    add_user(client, "gus")  # its first token: default
    assert client.post("/v1/users/gus/tokens", json={"name": "token-3"}).status_code == 201
    for body, n in (({}, 4), (None, 5), ({"name": None}, 6)):  # token-3 is taken
        created = client.post("/v1/users/gus/tokens", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["name"] == f"token-{n}"
    client.delete("/v1/users/gus/tokens/default")
    assert client.post("/v1/users/gus/tokens").json()["name"] == "token-7"  # revoked: kept


def test_no_token_the_service_makes_starts_with_a_dash(monkeypatch):
    """``syncbn --token -abc`` would be read as an option: a token starting with ``-`` is drawn
    again (the service's own, users' and ingest tokens share ``new_token``)."""
    from service.jobs import ingest_tokens

    draws = iter(["-first", "second"])
    monkeypatch.setattr(ingest_tokens.secrets, "token_urlsafe", lambda n: next(draws))
    assert ingest_tokens.new_token() == "second"
