"""Safe by default, in process (FakeRay, a real SQLite file): who may call the service. Each row
of issue 20's table that needs no Ray, reproduced as the hostile client sent it, and asserted
refused (4xx, never a 500).

- always a credential: a token made on first start (0600, created atomically), 401 without it
  on every data route, on loopback too; unsafe starts refused;
- Host and Origin: a rebound Host and a cross-site POST are 403 (row 1).

The app is ``make_app`` of ``conftest.py`` with the service's own defaults; limits are in
``test_security_limits.py``, ingest and deletion in ``test_security_ingest.py``.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from hostile import zip_bytes
from inprocess import GOOD, LOCAL, SERVICE_DEFAULTS, local_client

from service.api import auth
from service.api.credentials import (
    UnsafeStart,
    check_exposure,
    ensure_api_token,
    weakness,
    write_secret_once,
)
from service.api.middleware import host_name
from service.settings import Settings


@pytest.fixture
def app_settings() -> dict:
    """The service's own defaults: a SQLite file and an API token made in the home."""
    return SERVICE_DEFAULTS


# -- a credential always --------------------------------------------------------------------
def test_a_fresh_home_gets_a_private_token_and_every_data_route_needs_it(tmp_path, make_app):
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


def test_allowed_hosts_and_the_public_url_are_answered(tmp_path, make_app):
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


def every_operation(app) -> list[tuple[str, str]]:
    """Every (method, path) of the API but the open ones, path parameters filled in."""
    out = []
    for path, operations in app.openapi()["paths"].items():
        if auth.is_open(path):
            continue
        filled = re.sub(r"\{[^}]+\}", "x-1", path)
        out += [(method.upper(), filled) for method in operations]
    return out


def test_every_route_without_a_token_or_with_a_foreign_host_is_refused_before_its_body(app):
    """No token: 401; a foreign Host: 403, on every route of the OpenAPI document (the ingest
    route included), before the body is read (the body here never arrives)."""
    operations = every_operation(app)
    assert len(operations) >= 40
    anonymous = TestClient(app, base_url=LOCAL)
    foreign = local_client(app, Host="rebound.attacker.example")
    for method, path in operations:
        assert anonymous.request(method, path).status_code == 401, (method, path)
        assert foreign.request(method, path).status_code == 403, (method, path)


def test_every_admin_route_refuses_a_member_naming_the_role(app, client):
    """The routes of the ``users``, ``audit`` and ``admin`` tags, each with a valid request:
    a member's token gets 403 naming the role (their writes on objects: ``test_roles.py``)."""
    token = client.post("/v1/users", json={"name": "mia", "role": "member"}).json()["token"]
    mia = TestClient(app, base_url=LOCAL, headers={"Authorization": f"Bearer {token['token']}"})
    bodies = {"/v1/users": {"name": "eve"}, "/v1/users/mia": {"role": "admin"}}
    admin_only = [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
        if operation["tags"][0] in ("users", "audit", "admin") and path != "/v1/me"
    ]
    assert len(admin_only) >= 9
    for method, path in admin_only:
        path = path.replace("{name}", "mia").replace("{token}", "default")
        response = mia.request(method, path, json=bodies.get(path))
        assert response.status_code == 403, (method, path, response.text)
        assert "only an admin may" in response.json()["detail"]
        assert "(you are mia, a member)" in response.json()["detail"]
