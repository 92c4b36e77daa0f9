"""The disk budget of ``$SYNCBN_HOME`` (``service.operations.disk``): a 507 naming the setting
and the bytes before an upload's body is read, or a job or study is queued; reads, cancels and
deletes go on; the warning at 90 %, the gauges, ``/readyz``; the disk saying it is full while a
request writes (ENOSPC, SQLite's SQLITE_FULL) is the same 507, never a 500; the measure is
reused, not walked per request; ``GET /v1/admin/usage`` by kind and owner, for admins only.
(The real full file system: ``tests/e2e/test_full_disk.py``.)"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sqlite3
from pathlib import Path

import pytest
from bundlekit import zip_bytes
from fastapi.testclient import TestClient
from inprocess import GOOD, LOCAL, TOKEN, local_client
from sqlalchemy.exc import OperationalError
from test_cli_models import service, syncbn  # noqa: F401 (fixture)
from test_roles import NET, add_user, npz_bytes

from client import Client, cli, errors
from service.api.middleware import DiskGuardMiddleware
from service.files import code_bundles, uploads
from service.operations import disk
from service.storage import store

BUDGET = "SYNCBN_DISK_BUDGET_BYTES"
STUDY = {"base": GOOD, "seeds": [0], "arms": ["sync"]}


def writes(client: TestClient) -> dict[str, int]:
    """The status of each guarded write: a dataset, a code bundle, a job, a study."""
    return {
        "dataset": client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())}).status_code,
        "code": client.post(
            "/v1/code", files={"file": ("b.zip", zip_bytes({"net.py": NET}))}
        ).status_code,
        "job": client.post("/v1/jobs", json=GOOD).status_code,
        "study": client.post("/v1/studies", json=STUDY).status_code,
    }


def filler(home: Path, size: int = 200_000) -> int:
    """A file of ``size`` bytes in ``home`` (other data): the bytes it takes on disk."""
    path = home / "filler"
    path.write_bytes(b"\1" * size)
    return path.stat().st_blocks * 512


def test_past_the_budget_writes_are_507_naming_the_setting_and_bytes(
    make_app, tmp_path, monkeypatch
):
    filler(tmp_path)
    app = make_app(disk_budget_bytes=1000)
    client = local_client(app)
    called = []
    monkeypatch.setattr(uploads, "receive", lambda *args: called.append(args))
    statuses = writes(client)
    assert statuses == {"dataset": 507, "code": 507, "job": 507, "study": 507}
    assert not called, "no byte of an upload is written"
    assert not any((tmp_path / "datasets").glob("*")) and not any((tmp_path / "code").glob("*"))
    detail = client.post("/v1/jobs", json=GOOD).json()["detail"]
    used = app.state.services.disk.state().used
    assert f"{BUDGET}=1000" in detail and f"uses {used} bytes" in detail
    assert "reads, cancels and deletes still work" in detail


def test_a_full_disk_refuses_before_the_upload_body_is_read(make_app, tmp_path):
    """The 507 comes from the headers: the body is never received."""
    filler(tmp_path)
    app = make_app(disk_budget_bytes=1000)
    received = []

    async def scope_app(scope, receive, send):  # the middleware alone, around a spy
        received.append(await receive())

    guard = DiskGuardMiddleware(scope_app, app.state.services.disk)
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        raise AssertionError("the body was read")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/datasets",
        "headers": [(b"content-length", b"5000")],
    }
    asyncio.run(guard(scope, receive, send))
    assert sent[0]["status"] == 507 and not received
    assert (b"connection", b"close") in sent[0]["headers"]


def test_reads_cancels_and_deletes_work_while_full(make_app, tmp_path):
    app = make_app()
    client = local_client(app)
    job = client.post("/v1/jobs", json=GOOD).json()["id"]
    other = client.post("/v1/jobs", json=GOOD).json()["id"]
    dataset = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())}).json()["id"]
    filler(tmp_path)
    app.state.settings.disk_budget_bytes = 1000
    app.state.services.disk.invalidate()
    assert client.post("/v1/jobs", json=GOOD).status_code == 507
    assert client.get("/v1/jobs").status_code == 200
    assert client.get(f"/v1/jobs/{job}").status_code == 200
    assert client.get("/v1/datasets").status_code == 200
    assert client.post(f"/v1/jobs/{job}/cancel").json()["state"] == "cancelled"
    assert client.post(f"/v1/jobs/{job}/pin").status_code == 200
    assert client.delete(f"/v1/jobs/{job}").status_code == 204
    assert client.post(f"/v1/jobs/{other}/cancel").status_code == 200
    assert client.delete(f"/v1/datasets/{dataset}").status_code == 204
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["checks"]["disk"].startswith("full: ")


def test_an_upload_that_would_pass_the_budget_is_refused_by_its_length(make_app, tmp_path):
    app = make_app()
    used = app.state.services.disk.state().used
    app.state.settings.disk_budget_bytes = used + 1000
    client = local_client(app)
    assert client.post("/v1/jobs", json=GOOD).status_code == 201  # no length counted
    response = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())})
    assert response.status_code == 507
    assert "this request brings" in response.json()["detail"]


def multipart(data: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body with one file field, ``file``, and its content type."""
    body = (
        b'--XB\r\nContent-Disposition: form-data; name="file"; filename="d.npz"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--XB--\r\n"
    )
    return body, {"content-type": "multipart/form-data; boundary=XB"}


def test_an_upload_without_a_length_is_counted_at_its_limit(make_app, tmp_path):
    """A chunked body has no ``Content-Length``: it is counted as the route's limit
    (``SYNCBN_MAX_UPLOAD_BYTES``) before it is read, so it cannot pass the budget unseen."""
    app = make_app(max_upload_bytes=1 << 20)
    client = local_client(app)
    used = app.state.services.disk.state(refresh=True).used
    app.state.settings.disk_budget_bytes = used + (512 << 10)
    body, headers = multipart(npz_bytes())

    def chunked():
        yield from (body[i : i + 4096] for i in range(0, len(body), 4096))

    response = client.post("/v1/datasets", content=chunked(), headers=headers)
    assert response.status_code == 507, response.text
    detail = response.json()["detail"]
    assert "an upload without Content-Length (counted as SYNCBN_MAX_UPLOAD_BYTES=1048576)" in detail
    assert not any((tmp_path / "datasets").glob("*.npz"))
    assert client.post("/v1/datasets", content=body, headers=headers).status_code == 201
    app.state.settings.disk_budget_bytes = None
    assert client.post("/v1/datasets", content=chunked(), headers=headers).status_code == 201


def test_what_an_upload_stores_is_checked_before_and_counted_after_it_is_published(
    make_app, tmp_path
):
    """An image folder decodes to more bytes than were sent: the decoded ``.npz`` is checked
    against the room left before it is published (507, nothing kept), and counted once it is,
    not the bytes sent."""
    from imagekit import make_zip, solid

    members = {
        f"{c}/{i}.png": solid("RGB", (i, 0, 0), size=(64, 64)) for c in "ab" for i in range(60)
    }
    archive = make_zip(members)
    app = make_app()
    client = local_client(app)
    meter = app.state.services.disk
    used = meter.state(refresh=True).used
    upload = client.post(
        "/v1/datasets", files={"file": ("d.zip", archive)}, data={"image_size": "64"}
    )
    assert upload.status_code == 201, upload.text
    stored = (tmp_path / "datasets" / f"{upload.json()['id']}.npz").stat().st_blocks * 512
    assert stored > 5 * len(archive)
    assert meter.state().used == used + stored  # counted before the next walk
    assert meter.state(refresh=True).used >= used + stored

    app.state.settings.disk_budget_bytes = meter.state().used + 3 * len(archive)
    refused = client.post(
        "/v1/datasets", files={"file": ("d.zip", archive)}, data={"image_size": "64"}
    )
    assert refused.status_code == 507, refused.text
    assert f"this request brings {stored} more" in refused.json()["detail"]
    assert len(list((tmp_path / "datasets").iterdir())) == 1
    assert len(client.get("/v1/datasets").json()["datasets"]) == 1


def test_the_walk_counts_blocks_on_disk_each_file_once_and_runs_last(tmp_path):
    """A sparse file counts what it takes on disk, a file with many hard links once; a job
    with more files than the walk looks at leaves the datasets counted."""
    (tmp_path / "runs" / "j-1").mkdir(parents=True)
    with open(tmp_path / "runs" / "j-1" / "stats.jsonl", "wb") as handle:
        handle.truncate(1 << 40)
    big = tmp_path / "runs" / "j-1" / "big"
    big.write_bytes(b"x" * (1 << 20))
    for i in range(100):
        (tmp_path / "runs" / "j-1" / f"link{i}").hardlink_to(big)
    found = disk.walk(tmp_path)
    assert (1 << 20) <= found.total < 2 << 20
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "ds-1.npz").write_bytes(b"d" * 5000)
    for i in range(200):
        (tmp_path / "runs" / "j-1" / f"f{i}").touch()
    partial = disk.walk(tmp_path, limit=50)
    assert not partial.complete and partial.by_kind["datasets"] >= 5000


def test_at_90_percent_a_warning_the_gauges_and_a_degraded_readiness(make_app, tmp_path, caplog):
    filler(tmp_path)
    app = make_app()
    meter = app.state.services.disk
    used = meter.state().used
    app.state.settings.disk_budget_bytes = int(used / 0.95)
    meter.invalidate()
    client = local_client(app)
    with caplog.at_level(logging.WARNING, logger="service.operations.disk"):
        ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["checks"]["disk"].startswith("degraded: 95% used")
    assert any("degraded" in r.getMessage() for r in caplog.records)
    metrics = client.get("/metrics").text
    assert f"syncbn_disk_used_bytes {float(used)}" in metrics
    assert f"syncbn_disk_budget_bytes {float(int(used / 0.95))}" in metrics
    assert "syncbn_disk_free_bytes " in metrics
    assert client.post("/v1/jobs", json=GOOD).status_code == 201  # warned, not refused


def test_without_a_budget_the_file_system_is_the_limit(make_app):
    client = local_client(make_app())
    ready = client.get("/readyz").json()["checks"]["disk"]
    assert ready.startswith("ok: ") and ready.endswith("free on the file system")
    usage = client.get("/v1/admin/usage").json()
    assert usage["budget_bytes"] is None
    assert usage["limit_bytes"] == usage["used_bytes"] + usage["free_bytes"]


def test_a_full_file_system_is_full_whatever_the_budget():
    state = disk.DiskState(Path("/h"), 10, None, 5 << 20, 1 << 30, disk.Walk())
    assert state.reserve == (1 << 30) // 100 and state.level == "full"
    assert "kept for the database" in (state.why_full() or "")
    assert f"{BUDGET} unset" in (state.why_full() or "")
    roomy = disk.DiskState(Path("/h"), 10, 100, 900 << 20, 1 << 30, disk.Walk())
    assert roomy.level == "ok" and roomy.why_full(89) is None and roomy.why_full(90)


def test_the_home_is_walked_at_most_once_per_interval(make_app, monkeypatch):
    app = make_app(disk_check_interval_s=3600)
    meter = app.state.services.disk
    walks = []
    real = disk.walk
    monkeypatch.setattr(disk, "walk", lambda home: walks.append(home) or real(home))
    client = local_client(app)
    for _ in range(5):
        assert client.post("/v1/jobs", json=GOOD).status_code == 201
    client.get("/readyz")
    client.get("/metrics")
    assert len(walks) == 1
    meter.added(1234)
    assert meter.state().used == meter.state().walk.total + 1234
    meter.invalidate()
    meter.state()
    assert len(walks) == 2
    assert meter.refresh_if_due() is None  # fresh: the loop's chore does nothing


def test_disk_full_tells_the_disk_from_other_errors():
    assert disk.disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk.disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    full = sqlite3.OperationalError("database or disk is full")
    assert disk.disk_full(OperationalError("INSERT", {}, full))
    assert not disk.disk_full(OSError(errno.EACCES, "Permission denied"))
    locked = sqlite3.OperationalError("database is locked")
    assert not disk.disk_full(OperationalError("INSERT", {}, locked))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert disk.disk_full(wrapped)


def test_enospc_while_receiving_an_upload_is_a_507_and_leaves_nothing(
    make_app, tmp_path, monkeypatch
):
    client = local_client(make_app())

    def no_space(source, target, limit, setting):
        target.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uploads, "receive", no_space)
    response = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())})
    assert response.status_code == 507
    detail = response.json()["detail"]
    assert "No space left on device" in detail and "POST /v1/datasets" in detail
    assert BUDGET in detail and "uses" in detail
    assert list((tmp_path / "datasets").iterdir()) == []


def test_a_full_database_is_a_507_and_other_errors_stay_500(make_app, monkeypatch):
    app = make_app()
    client = TestClient(
        app,
        base_url=LOCAL,
        headers={"Authorization": f"Bearer {app.state.settings.api_token}"},
        raise_server_exceptions=False,
    )

    def full(*args, **kwargs):
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(store, "create_job", full)
    response = client.post("/v1/jobs", json=GOOD)
    assert response.status_code == 507 and "database or disk is full" in response.json()["detail"]

    def denied(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(store, "create_job", denied)
    assert client.post("/v1/jobs", json=GOOD).status_code == 500


def test_a_code_bundle_unpacked_on_a_full_disk_is_a_507_not_a_422(make_app, tmp_path, monkeypatch):
    client = local_client(make_app())
    real_open = open

    class Full:  # a file on a full disk: its writes fail
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(code_bundles, "open", lambda p, m: Full(real_open(p, m)), raising=False)
    response = client.post("/v1/code", files={"file": ("b.zip", zip_bytes({"net.py": NET}))})
    assert response.status_code == 507, response.text
    assert "No space left on device" in response.json()["detail"]
    assert not any((tmp_path / "code").iterdir())


def test_usage_by_kind_and_owner_is_for_admins(app, client, tmp_path):
    alice = add_user(client, app, "alice", "member", max_upload_bytes=10**9)
    assert alice.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())}).status_code == 201
    job = alice.post("/v1/jobs", json=GOOD).json()["id"]
    run = tmp_path / "runs" / job
    (run / "checkpoint_000000").mkdir(parents=True)
    (run / "checkpoint_000000" / "model.safetensors").write_bytes(b"\0" * 50_000)
    (run / "driver.log").write_text("hello\n" * 1000)
    (tmp_path / "runs" / "j-gone").mkdir()  # a deleted job's leftover: no owner
    refused = alice.get("/v1/admin/usage")
    assert refused.status_code == 403 and "only an admin" in refused.json()["detail"]
    usage = client.get("/v1/admin/usage", params={"refresh": True}).json()
    assert set(usage["by_kind"]) == set(disk.KINDS)
    assert usage["by_kind"]["datasets"] > 0 and usage["by_kind"]["logs"] >= 6000
    assert usage["by_kind"]["runs"] >= 50_000
    assert usage["used_bytes"] == sum(usage["by_kind"].values())
    (mine,) = [o for o in usage["by_owner"] if o["owner"] == "alice"]
    assert mine["datasets_bytes"] > 0 and mine["runs_bytes"] >= 50_000
    assert mine["logs_bytes"] >= 6000 and mine["code_bytes"] == 0
    assert mine["total_bytes"] == sum(
        mine[k] for k in ("datasets_bytes", "code_bytes", "runs_bytes", "logs_bytes")
    )
    assert mine["max_upload_bytes"] == 10**9 and mine["max_model_bytes"] is None
    assert usage["unowned_bytes"] > 0
    assert usage["state"] == "ok" and usage["complete"] is True


def test_the_walk_counts_kinds_and_stops_at_its_bound(tmp_path):
    (tmp_path / "syncbn.db").write_bytes(b"d" * 5000)
    (tmp_path / "syncbn.db-wal").write_bytes(b"w" * 5000)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray-head.log").write_bytes(b"l" * 5000)
    (tmp_path / "ray" / "head.json").write_text("{}")
    (tmp_path / "code" / "cb-1").mkdir(parents=True)
    (tmp_path / "code" / "cb-1" / "net.py").write_bytes(b"c" * 5000)
    (tmp_path / "elsewhere").write_bytes(b"e" * 5000)
    (tmp_path / "link").symlink_to("/usr")  # not followed
    found = disk.walk(tmp_path)
    assert found.by_kind["database"] >= 10_000 and found.by_kind["logs"] >= 5000
    assert found.by_kind["code"] >= 5000 and found.by_kind["other"] >= 5000
    assert found.by_entry[("code", "cb-1")]["code"] >= 5000
    assert found.total < 1 << 20 and found.complete
    partial = disk.walk(tmp_path, limit=3)
    assert not partial.complete and partial.entries == 3


def test_the_sdk_and_syncbn_admin_usage(service, capsys):  # noqa: F811
    http, settings = service
    alice = add_user(http, http.app, "alice", "member")
    token = alice.headers["authorization"].removeprefix("Bearer ")
    assert alice.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())}).status_code == 201
    c = Client(LOCAL, TOKEN, http=TestClient(http.app, base_url=LOCAL))
    usage = c.admin_usage(refresh=True)
    assert usage.by_kind["datasets"] > 0 and [o.owner for o in usage.by_owner] == ["alice"]
    with pytest.raises(errors.Forbidden, match="only an admin"):
        Client(LOCAL, token, http=TestClient(http.app, base_url=LOCAL)).admin_usage()
    job = c.submit(GOOD).id
    assert c.pin(job).pinned and not c.unpin(job).pinned

    status, out = syncbn(capsys, "admin", "usage", "--refresh")
    assert status == cli.EXIT_OK, out
    assert "by kind" in out and "by owner" in out and "SYNCBN_DISK_BUDGET_BYTES" in out
    assert "alice" in out and "datasets" in out and "ok: " in out and "ok: ok" not in out
    status, out = syncbn(capsys, "--json", "admin", "usage")
    assert status == cli.EXIT_OK and json.loads(out)["state"] == "ok"
    settings.disk_budget_bytes = 1
    http.app.state.services.disk.invalidate()
    status, out = syncbn(capsys, "submit", "--dataset", "synthetic")
    assert status != cli.EXIT_OK and "HTTP 507" in out and "SYNCBN_DISK_BUDGET_BYTES=1" in out
