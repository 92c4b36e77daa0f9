"""A full disk, for real (issue 29): ``$SYNCBN_HOME`` on a 64 MiB tmpfs that this test mounts
(as root; skipped, with the reason, where mounting is not allowed), the service in this process
on a SQLite file there, and the file system filled (``posix_fallocate``, then writes until
``ENOSPC``) during an upload, a database write and a checkpoint.

The service answers 507s that name the disk and the setting, never a 500; reads go on while
full; the database passes ``PRAGMA integrity_check``; a partial model file is ignored; the next
start leaves no staging folder; once space is freed, uploads and jobs work again. With the
budget below the use, the 507 comes before any byte of the upload is written.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from inprocess import GOOD, local_client, new_app

from contract.recipe import MODEL_FILE
from contract.spec import JobSpec
from service.files import uploads

SIZE = "64m"
UPLOAD_LIMIT = 8 << 20
"""``SYNCBN_MAX_UPLOAD_BYTES``: what a chunked upload is counted as before its body is read."""
BOUNDARY = "syncbn-full-disk"


@pytest.fixture
def tmpfs_home(tmp_path: Path) -> Iterator[Path]:
    """A fresh 64 MiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs as $SYNCBN_HOME needs root (the full-disk test)")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command to mount a tmpfs for the full-disk test")
    home = tmp_path / "home"
    home.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(home)]
    mounted = subprocess.run(command, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here: {mounted.stderr.strip()}")
    try:
        yield home
    finally:
        if subprocess.run(["umount", str(home)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(home)], check=False)


class Filler:
    """A file that takes the file system's free space."""

    def __init__(self, home: Path) -> None:
        self.home, self.path = home, home / "filler"

    def free(self) -> int:
        return shutil.disk_usage(self.home).free

    def fill(self, leave: int = 0) -> None:
        """Leave about ``leave`` bytes free (0: write until ``ENOSPC``)."""
        with open(self.path, "ab", buffering=0) as handle:  # unbuffered: no write at close
            more = self.free() - leave
            if more > 0:
                os.posix_fallocate(handle.fileno(), os.fstat(handle.fileno()).st_size, more)
            if leave:
                return
            for chunk in (1 << 16, 1 << 12, 1):
                try:
                    while handle.write(b"\0" * chunk):
                        pass
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        assert self.free() < 1 << 16

    def remove(self) -> None:
        self.path.unlink()


def app_on(home: Path, **settings) -> FastAPI:
    return new_app(home, database_url=f"sqlite:///{home}/syncbn.db", **settings)


def npz(megabytes: float) -> bytes:
    """A valid dataset of about ``megabytes`` (random: tmpfs does not compress)."""
    n = int(megabytes * (1 << 20) / 256)
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.normal(size=(n, 8, 8)).astype(np.float32), y=np.arange(n) % 2)
    return buffer.getvalue()


def upload_chunked(client: TestClient, data: bytes):
    """A dataset upload without a ``Content-Length`` (chunked), so only writing it tells
    whether it fits."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    chunks = (body[i : i + (1 << 20)] for i in range(0, len(body), 1 << 20))
    return client.post(
        "/v1/datasets",
        content=chunks,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


def integrity(home: Path) -> str:
    with sqlite3.connect(home / "syncbn.db") as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def leftovers(home: Path) -> list[str]:
    """Staging folders and partial files of uploads under the home."""
    found = []
    for folder in ("datasets", "code"):
        found += [p.name for p in (home / folder).glob(".upload-*")]
        found += [p.name for p in (home / folder).glob(".*.partial")]
    return found


def model_bytes(tmp_path: Path) -> bytes:
    """A real model file, as rank 0 writes one into a checkpoint."""
    from workers.data.builtin import load_digits
    from workers.export import recipe_for, write_model_file
    from workers.nets import apply_norm, build_model

    data, spec = load_digits(), JobSpec(dataset="digits")
    model = build_model(spec.model, data.input_shape, data.num_classes, data.task)
    model = apply_norm(model, spec.norm, group_norm_groups=spec.group_norm_groups)
    metrics = {"test_accuracy": 0.5, "test_loss": 1.0, "test_miou": None}
    path = tmp_path / MODEL_FILE
    write_model_file(path, model, recipe_for(spec, data, 1, metrics))
    return path.read_bytes()


def test_a_full_disk_is_507_keeps_reads_corrupts_nothing_and_recovers(
    tmpfs_home: Path, tmp_path: Path, monkeypatch
):
    home, filler = tmpfs_home, Filler(tmpfs_home)
    app = app_on(home, max_upload_bytes=UPLOAD_LIMIT)
    client = local_client(app)
    job = client.post("/v1/jobs", json=GOOD)
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    first = client.post("/v1/datasets", files={"file": ("small.npz", npz(0.1))})
    assert first.status_code == 201, first.text
    kept = sorted(p.name for p in (home / "datasets").iterdir())

    # 1. A chunked upload (no Content-Length) is counted as its limit before its body is
    # read: 507 then. One that fills the disk while it is written anyway (the check passed,
    # then something else wrote): 507, nothing of it left.
    filler.fill(leave=3 << 20)
    response = upload_chunked(client, npz(6))
    assert response.status_code == 507, response.text
    assert "without Content-Length (counted as SYNCBN_MAX_UPLOAD_BYTES" in response.text
    with monkeypatch.context() as passed:
        passed.setattr(app.state.services.disk, "check_room", lambda *args: None)
        response = upload_chunked(client, npz(6))
    assert response.status_code == 507, response.text
    detail = response.json()["detail"]
    assert "disk" in detail and "No space left on device" in detail
    assert "POST /v1/datasets" in detail and "SYNCBN_DISK_BUDGET_BYTES" in detail
    assert sorted(p.name for p in (home / "datasets").iterdir()) == kept
    assert leftovers(home) == []

    # 2. Full: uploads, jobs and studies are refused before any byte; reads go on.
    filler.fill()
    for refused in (
        client.post("/v1/datasets", files={"file": ("d.npz", npz(0.01))}),
        client.post("/v1/jobs", json=GOOD),
        client.post("/v1/studies", json={"base": GOOD, "seeds": [0], "arms": ["sync"]}),
    ):
        assert refused.status_code == 507, refused.text
        assert "no room on the disk" in refused.json()["detail"]
    assert client.get("/v1/jobs").json()["total"] == 1
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert len(client.get("/v1/datasets").json()["datasets"]) == 1
    assert client.get("/metrics").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["disk"].startswith("full: ")
    assert client.get("/v1/admin/usage").json()["state"] == "full"

    # 3. A database write on the full disk (the check bypassed, the WAL emptied so the write
    # must grow it): a clean 507, never a 500, and the database intact.
    filler.remove()  # room for the checkpoint to grow the database file
    with sqlite3.connect(home / "syncbn.db") as connection:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0 and (home / "syncbn.db-wal").stat().st_size == 0
    filler.fill()
    monkeypatch.setattr(app.state.services.disk, "check_room", lambda *args: None)
    statuses = [client.post("/v1/jobs", json=GOOD) for _ in range(3)]
    assert {r.status_code for r in statuses} == {507}, [r.text for r in statuses]
    assert "database or disk is full" in statuses[0].json()["detail"]
    assert client.get("/v1/jobs").json()["total"] == 1
    assert integrity(home) == "ok"

    # 4. A checkpoint cut short by the full disk: the partial model file is ignored.
    data = model_bytes(tmp_path)
    filler.remove()
    filler.fill(leave=len(data) // 2)
    checkpoint = home / "runs" / job_id / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    with open(checkpoint / MODEL_FILE, "wb", buffering=0) as handle, pytest.raises(OSError) as full:
        for i in range(0, len(data), 4096):
            handle.write(data[i : i + 4096])
    assert full.value.errno == errno.ENOSPC
    assert 0 < (checkpoint / MODEL_FILE).stat().st_size < len(data)
    models = client.get(f"/v1/jobs/{job_id}/models")
    assert models.status_code == 200 and models.json()["models"] == []
    assert client.get(f"/v1/jobs/{job_id}/model").status_code == 409  # no checkpoint yet
    assert integrity(home) == "ok"

    # 5. Space freed, and what a crash while full leaves: the next start sweeps it; all works.
    app.state.services.db.close()
    filler.remove()
    (home / "datasets" / ".upload-crashed").mkdir()
    (home / "datasets" / ".upload-crashed" / "upload").write_bytes(b"partial")
    (home / "code").mkdir(exist_ok=True)
    (home / "code" / ".upload-crashed").mkdir()
    restarted = app_on(home, max_upload_bytes=UPLOAD_LIMIT)
    with local_client(restarted) as again:
        assert leftovers(home) == []
        assert again.get("/readyz").json()["checks"]["disk"].startswith("ok: ")
        uploaded = upload_chunked(again, npz(6))
        assert uploaded.status_code == 201, uploaded.text
        assert again.post("/v1/jobs", json=GOOD).status_code == 201
        assert again.get(f"/v1/jobs/{job_id}/models").json()["models"] == []
    restarted.state.services.db.close()
    assert integrity(home) == "ok"


def test_a_budget_below_the_use_refuses_before_any_byte_is_written(tmpfs_home: Path, monkeypatch):
    home = tmpfs_home
    app = app_on(home, disk_budget_bytes=1)
    client = local_client(app)
    written = []
    monkeypatch.setattr(uploads, "receive", lambda *args: written.append(args))
    before = shutil.disk_usage(home).used
    response = client.post("/v1/datasets", files={"file": ("d.npz", npz(1))})
    assert response.status_code == 507
    detail = response.json()["detail"]
    used = app.state.services.disk.state().used
    assert "SYNCBN_DISK_BUDGET_BYTES=1" in detail and f"uses {used} bytes" in detail
    assert not written and leftovers(home) == []
    assert not any((home / "datasets").glob("*"))
    assert shutil.disk_usage(home).used - before < 1 << 20  # the audit row at most
    assert client.post("/v1/jobs", json=GOOD).status_code == 507
    assert client.get("/v1/jobs").status_code == 200
    app.state.services.db.close()
