"""Safe by default, end to end, through ``make run``'s defaults: ``python -m service`` with no
settings but its home (``.syncbn``), an empty ``HOME`` and no ``RAY_*`` variable, so its own
embedded Ray head, a real uvicorn, a real SQLite file, real Chromium.

- a fresh home gets a private token file; the log prints a login link with the token in the
  fragment, and nowhere else;
- the CLI on the same machine works with no flag, and so does the Python SDK (a job followed
  to its model, downloaded, predicting); the page logs in from the printed link and
  drops the token from its address;
- no token: 401; a rebound Host: 403; a cross-site POST: 403;
- the hostile requests of issue 20's table that need no trained model, against this very
  service process: each a 4xx naming its limit (or a cheap 201), and each costing the service
  less than 256 MiB of peak RSS and 5 s of CPU (``hostile.metered``: ``VmHWM``).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hostile
import httpx
import pytest
from playwright.sync_api import Browser, expect
from servicekit import ServiceProcess, made_run
from sklearn.datasets import load_digits

from client import Client
from contract.protocol import ReportEvent

MAX_RSS_MIB = 256
MAX_CPU_S = 5.0
LOGIN_RE = re.compile(r"http://127\.0\.0\.1:(\d+)/#token=([A-Za-z0-9_\-]+)")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Iterator[ServiceProcess]:
    """The service as ``make run`` starts it, in ``<tmp>/.syncbn`` (its default home's name)."""
    with made_run(tmp_path_factory.mktemp("make-run") / ".syncbn") as service:
        yield service


def test_a_fresh_home_gets_a_private_token_and_a_login_link(made):
    token_file = made.home / "api-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert made.token == token and len(token) >= 32
    port, printed = LOGIN_RE.search(made.log_tail(400)).groups()
    assert (int(port), printed) == (made.port, token)
    assert not (made.home / "secret_key").exists()
    assert not (made.user_home / ".ray").exists()


def test_no_token_rebound_host_and_cross_site_are_refused(made):
    assert httpx.get(f"{made.url}/healthz").status_code == 200
    for path in ("/v1/jobs", "/v1/datasets", "/v1/code", "/readyz", "/metrics"):
        assert httpx.get(made.url + path).status_code == 401, path
    rebound = {"Host": f"rebound.attacker.example:{made.port}",
               "Origin": f"http://rebound.attacker.example:{made.port}"}  # fmt: skip
    files = {"file": ("b.zip", hostile.zip_bytes({"m.py": b"def build_model(s, n): pass\n"}))}
    response = made.client.post("/v1/code", files=files, headers=rebound)
    assert response.status_code == 403 and "SYNCBN_ALLOWED_HOSTS" in response.text
    assert made.client.get("/v1/code").json()["bundles"] == []
    job = {"dataset": "digits", "workers": 1, "epochs": 1}
    response = made.client.post("/v1/jobs", json=job, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403 and "cross-site" in response.text
    assert made.client.get("/v1/jobs").json()["total"] == 0


def cli(made: ServiceProcess, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCBN_", "RAY_"))}
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**clean, "SYNCBN_URL": made.url, "COLUMNS": "160", **env},
    )  # fmt: skip


def test_the_cli_on_this_machine_finds_the_token_itself(made, tmp_path):
    done = cli(made, "list", cwd=made.home.parent)  # beside .syncbn, as after make run
    assert done.returncode == 0, done.stderr
    assert "0 job(s)" in done.stdout
    done = cli(made, "datasets", cwd=tmp_path, SYNCBN_HOME=str(made.home))
    assert done.returncode == 0, done.stderr
    recorded = cli(made, "list", cwd=made.home.parent, SYNCBN_URL="")  # its random port
    assert recorded.returncode == 0, recorded.stderr
    assert (made.home / "service-url").read_text().strip() == made.url
    refused = cli(made, "list", cwd=tmp_path)  # no token anywhere: the service says 401
    assert refused.returncode == 2 and "401" in refused.stdout + refused.stderr


def test_the_page_logs_in_from_the_printed_link(made, browser: Browser):
    link = LOGIN_RE.search(made.log_tail(400)).group(0)
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(link)
        expect(page.get_by_test_id("jobs-table")).to_be_visible()
        expect(page.get_by_test_id("token-dialog")).to_be_hidden()
        assert page.evaluate("location.hash") == "#/"  # the token left the address bar
        assert "token" not in page.url
        page.reload()  # kept in the browser's storage
        expect(page.get_by_test_id("jobs-table")).to_be_visible()
        expect(page.get_by_test_id("token-dialog")).to_be_hidden()
    finally:
        context.close()
    # The fragment never reaches the server: the token is in the log once, in the banner.
    assert made.log_path.read_text().count(made.token) == 1


HOSTILE = {
    "ast-bomb-zip": ("/v1/code", "file", hostile.ast_bomb_zip, 422, "SYNCBN_MAX_SOURCE_FILE_BYTES"),
    "nested-expression": ("/v1/code", "file", hostile.nested_zip, 422, "too deeply nested"),
    "pax-bomb-tar-gz": ("/v1/code", "file", hostile.pax_bomb_tar_gz, 422, "SYNCBN_MAX_CODE"),
    "zeros-npz": ("/v1/datasets", "file", hostile.zeros_npz, 201, ""),
    "lying-npz-header": ("/v1/datasets", "file", hostile.lying_npz, 422, "declares shape"),
    "png-bomb-folder": ("/v1/datasets", "file", hostile.png_bomb_folder, 422,
                        "SYNCBN_MAX_DECODED_PIXELS"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_uploads_are_refused_at_a_bounded_cost(made, case):
    path, field, payload, status, text = HOSTILE[case]
    blob = payload()
    assert len(blob) <= 1 << 20  # "no request of at most 1 MiB ..."
    form = {"image_size": "1"} if case == "png-bomb-folder" else {}
    cost = hostile.measure(
        hostile.service_pid(made),
        lambda: made.client.post(path, files={field: ("upload", blob)}, data=form),
    )
    assert cost.status == status, cost
    assert text in cost.detail, cost
    assert cost.rss_mib < MAX_RSS_MIB and cost.cpu_s < MAX_CPU_S, cost


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/studies/base", "/v1/studies/arms"])
def test_a_body_of_unknown_fields_is_refused_at_a_bounded_cost(made, route):
    body = hostile.unknown_fields_json(route)
    path = route.removesuffix("/base").removesuffix("/arms")
    cost = hostile.measure(
        hostile.service_pid(made),
        lambda: made.client.post(path, content=body, headers={"Content-Type": "application/json"}),
    )
    assert cost.status == 422 and "Extra inputs are not permitted" in cost.detail, cost
    assert cost.rss_mib < MAX_RSS_MIB and cost.cpu_s < MAX_CPU_S, cost


def test_a_big_code_bundle_fits_and_chunked_bodies_over_a_limit_are_413(made):
    import numpy as np

    asset = np.random.default_rng(0).bytes(3 << 20)  # over the 1 MiB JSON limit
    files = {"file": ("b.zip", hostile.zip_bytes({"net.py": b"x = 1\n", "w.bin": asset}))}
    assert made.client.post("/v1/code", files=files).status_code == 201
    for path, setting, kind, head in (
        ("/v1/jobs", "SYNCBN_MAX_BODY_BYTES", "application/json", b""),
        ("/v1/code", "SYNCBN_MAX_CODE_BYTES", hostile.MULTIPART, hostile.FILE_PART),
    ):
        body = hostile.chunked(40 << 20, head=head)
        cost = hostile.measure(
            hostile.service_pid(made),
            lambda path=path, kind=kind, body=body: made.client.post(
                path, content=body, headers={"Content-Type": kind}
            ),
        )
        assert cost.status == 413 and setting in cost.detail, cost
        assert cost.rss_mib < MAX_RSS_MIB, cost


@pytest.mark.parametrize("value", ["9" * 30, "9" * 5000])
def test_a_huge_last_event_id_is_a_422(made, value):
    job = made.submit(dataset="digits", workers=1, epochs=1, batch_size_per_worker=64)
    try:
        response = made.client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": value})
        assert response.status_code == 422
    finally:
        made.client.post(f"/v1/jobs/{job['id']}/cancel")


def test_a_team_through_make_run_roles_revocation_and_the_audit_log(made):
    """Issue 28 through ``make run``'s defaults: the service's own token is the admin; users
    get their own tokens; each role's writes on its own and others' jobs; a revoked token is
    a 401 at its next request; the audit log holds every write, refusals included."""
    admin = made.client

    def user(name: str, role: str) -> httpx.Client:
        created = admin.post("/v1/users", json={"name": name, "role": role})
        assert created.status_code == 201, created.text
        token = created.json()["token"]["token"]
        return httpx.Client(base_url=made.url, headers={"Authorization": f"Bearer {token}"})

    alice, bob, vera = user("alice", "member"), user("bob", "member"), user("vera", "viewer")
    assert admin.get("/v1/me").json()["role"] == "admin"
    assert alice.get("/v1/me").json()["name"] == "alice"
    spec = {"dataset": "synthetic", "workers": 1, "batch_size_per_worker": 8, "epochs": 1}
    job = alice.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    assert job.json()["owner"] == "alice"
    for stranger, role in ((bob, "bob, a member"), (vera, "vera, a viewer")):
        refused = stranger.post(f"/v1/jobs/{job_id}/cancel")
        assert refused.status_code == 403
        assert "belongs to alice" in refused.json()["detail"], refused.text
        assert role in refused.json()["detail"]
    assert vera.post("/v1/jobs", json=spec).status_code == 403
    assert vera.get(f"/v1/jobs/{job_id}").status_code == 200  # everyone reads
    assert bob.get("/v1/users").status_code == 403
    assert alice.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    assert admin.delete("/v1/users/alice").status_code == 200
    assert alice.get("/v1/me").status_code == 401  # at the very next request
    forged = {"X-Forwarded-For": "10.9.9.9", "Authorization": "Bearer nope"}
    assert httpx.get(f"{made.url}/v1/me", headers=forged).status_code == 401
    assert bob.get("/v1/me").status_code == 200
    entries = admin.get("/v1/audit", params={"limit": 200}).json()["entries"]
    seen = {(e["actor"], e["action"], e["status"]) for e in entries}
    assert ("alice", "jobs-submit", 201) in seen
    assert ("bob", "jobs-cancel", 403) in seen and ("vera", "jobs-submit", 403) in seen
    assert ("alice", "jobs-cancel", 200) in seen and ("admin", "users-revoke", 200) in seen
    assert any(e["actor"] is None and e["status"] == 401 for e in entries)  # counted
    # under the connection's address: uvicorn does not take X-Forwarded-For from loopback
    assert {e["object_id"] for e in entries if e["actor"] is None} == {"127.0.0.1"}


SDK_JOB = {"dataset": "digits", "workers": 2, "batch_size_per_worker": 16, "epochs": 1}


@pytest.mark.timeout(300)
def test_the_sdk_finds_make_runs_service_and_follows_a_job_to_its_model(
    made, tmp_path, monkeypatch
):
    """The Python SDK as the guide's notebook section uses it (issue 30): with only
    ``SYNCBN_HOME`` set, ``Client()`` finds the service (the URL it recorded) and its token by
    itself; a real job on the embedded Ray head is followed to its end through the event
    stream, then its model is downloaded and predicts raw digits. (Every route in process,
    the guide's study example included: ``tests/unit/test_sdk.py``.)"""
    for name in ("SYNCBN_URL", "SYNCBN_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SYNCBN_HOME", str(made.home))
    with Client() as c:
        assert c.url == made.url  # its random port, from $SYNCBN_HOME/service-url
        job = c.submit(SDK_JOB)
        reports: list[ReportEvent] = []
        done = c.wait(job.id, on_report=reports.append, timeout_s=240)
        assert done.state == "succeeded", f"{done}\n{made.log_tail()}"
        assert reports and reports[-1].kind == "epoch" and reports[-1].epoch == 1
        assert {len(r.workers) for r in reports} == {2}
        assert done.result is not None and done.result.test_accuracy > 0.3

        models = c.models(job.id)
        saved = c.download_model(job.id, output=tmp_path)
        assert saved.path == tmp_path / f"{job.id}-epoch1.safetensors"
        assert saved.sha256 == models.models[-1].sha256 and saved.epoch == 1
        out = c.predict(job.id, load_digits().images[:4])
        assert out.epoch == 1 and len(out.predictions) == 4
        assert len(out.probabilities) == 4 and len(out.probabilities[0]) == 10
