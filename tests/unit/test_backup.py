"""Backup and restore (``service.operations.backup``, ``docs/operations.md``), in process: a home
with users, jobs (one with model files, its log, reports and outcome), a study, a dataset and a
code bundle is backed up while its app holds the database open, restored into a new home, and
served there: the same rows, files, API answers, model SHA-256s and predictions. A damaged or
hostile archive is refused and leaves the home as it was; links in the home are skipped and
named; a home with data is never restored into. The same with a real service and a job
training while it is backed up: ``tests/e2e/test_backup_e2e.py``.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import pytest
from bundlekit import NETWORK, zip_bytes
from fastapi import FastAPI
from inprocess import GOOD, TOKEN, local_client, new_app, tick
from test_roles import npz_bytes

from contract.recipe import MODEL_FILE
from contract.spec import JobSpec
from service.__main__ import main as service_main
from service.operations.backup import MANIFEST, OperationError, backup, restore
from service.settings import Settings
from service.storage.db import head_revision
from service.storage.tables import Base

CHECKPOINT = "checkpoint_2026-01-01_00-00-01.000000"


def write_model(folder: Path) -> None:
    """A digits model file as rank 0 writes it (untrained: its predictions are what count)."""
    from workers.data.builtin import load_digits
    from workers.export import recipe_for, write_model_file
    from workers.nets import build_model

    spec, data = JobSpec(dataset="digits", norm="local"), load_digits()
    model = build_model(spec.model, data.input_shape, data.num_classes, data.task)
    folder.mkdir(parents=True)
    metrics = {"test_accuracy": 0.5, "test_loss": 1.0, "test_miou": None}
    write_model_file(folder / MODEL_FILE, model, recipe_for(spec, data, 1, metrics))


def home_settings(home: Path) -> Settings:
    """What ``python -m service`` uses in ``home``: its SQLite file, not the test's memory."""
    return Settings(home=home, database_url=None, api_token=TOKEN, worker_python="python")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(database: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(database) as connection:
        return {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in sorted(Base.metadata.tables)
        }


def api_view(app: FastAPI, jobs: list[str]) -> dict[str, Any]:
    """What the API says about everything in the home (the parts a restore must keep)."""
    client = local_client(app)
    view = {
        path: client.get(path).json()
        for path in ("/v1/jobs", "/v1/studies", "/v1/users", "/v1/datasets", "/v1/code")
    }
    for job in jobs:  # the models' epochs and SHA-256s (or why there are none)
        models = client.get(f"/v1/jobs/{job}/models")
        view[job] = (models.status_code, models.json())
    return view


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict[str, Any]:
    """A home in use: its app (the database open), what is in it, and a backup of it."""
    home = tmp_path_factory.mktemp("source") / "home"
    app = new_app(home, database_url=None)
    admin = local_client(app)
    alice = admin.post("/v1/users", json={"name": "alice", "role": "member"})
    assert alice.status_code == 201, alice.text
    dataset = admin.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())}).json()["id"]
    bundle = admin.post("/v1/code", files={"file": ("b.zip", zip_bytes({"net.py": NETWORK}))})
    assert bundle.status_code == 201, bundle.text
    study = admin.post("/v1/studies", json={"base": GOOD, "seeds": [0], "arms": ["sync"]})
    assert study.status_code == 201, study.text
    trained = admin.post("/v1/jobs", json={**GOOD, "dataset": "digits"}).json()["id"]
    linked = admin.post("/v1/jobs", json=GOOD).json()["id"]
    tick(app)

    runs = home / "runs"
    write_model(runs / trained / CHECKPOINT)
    (runs / trained / CHECKPOINT / "state.pt").write_bytes(b"training state: not backed up")
    (runs / trained / "driver.log").write_text("epoch 1 done\n")
    (runs / trained / "stats.jsonl").write_text('{"type": "report"}\n')
    (runs / trained / "outcome.json").write_text('{"status": 0, "wall_time_s": 1.5}')
    outside = home.parent / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not the job's")
    (runs / linked).mkdir(parents=True)
    (runs / linked / "driver.log").symlink_to(outside / "secret")  # job output: untrusted
    (runs / linked / "checkpoint_link").symlink_to(outside)
    (home / "api-token").write_text("the operator's secret\n")

    archive = home.parent / "backup.tar.gz"
    out = io.StringIO()
    manifest = backup(home_settings(home), archive, out=out)
    return {
        "home": home, "app": app, "archive": archive, "manifest": manifest, "out": out.getvalue(),
        "jobs": [trained, linked], "trained": trained, "linked": linked, "dataset": dataset,
        "bundle": bundle.json()["id"],
    }  # fmt: skip


def test_the_archive_holds_the_database_and_the_files_with_their_checksums(source) -> None:
    manifest, home = source["manifest"], source["home"]
    trained, linked = source["trained"], source["linked"]
    assert manifest["format"] == "syncbn-backup" and manifest["version"] == 1
    assert manifest["schema_revision"] == head_revision() and manifest["database"] == "syncbn.db"
    paths = {entry["path"] for entry in manifest["files"]}
    bundle_files = {
        str(p.relative_to(home))
        for p in (home / "code" / source["bundle"]).rglob("*")
        if p.is_file()
    }
    assert paths == {
        "syncbn.db",
        f"datasets/{source['dataset']}.npz",
        *bundle_files,
        f"runs/{trained}/{CHECKPOINT}/{MODEL_FILE}",
        f"runs/{trained}/driver.log",
        f"runs/{trained}/stats.jsonl",
        f"runs/{trained}/outcome.json",
    }
    for entry in manifest["files"]:
        if entry["path"] != "syncbn.db":
            assert entry["sha256"] == sha256(home / entry["path"]), entry
            assert entry["size"] == (home / entry["path"]).stat().st_size
    # links in the home are skipped and named, never followed; the token is not in it
    skipped = {item["path"]: item["reason"] for item in manifest["skipped"]}
    assert set(skipped) == {f"runs/{linked}/driver.log", f"runs/{linked}/checkpoint_link"}
    assert all("symbolic link" in reason for reason in skipped.values())
    assert f"skipped runs/{linked}/driver.log: a symbolic link" in source["out"]
    with tarfile.open(source["archive"]) as tar:
        names = tar.getnames()
        assert names[-1] == MANIFEST and len(names) == len(set(names)) == len(paths) + 1
        assert all(member.isreg() for member in tar.getmembers())
        data = b"".join(tar.extractfile(m).read() for m in tar.getmembers())  # type: ignore[union-attr]
    assert b"the operator's secret" not in data and b"not the job's" not in data


def test_a_restored_home_serves_the_same_rows_files_models_and_predictions(
    source, tmp_path
) -> None:
    home, target = source["home"], tmp_path / "restored"
    target.mkdir()
    (target / "api-token").write_text("the new home's own token\n")  # kept: not in the archive
    restore(home_settings(target), source["archive"], out=io.StringIO())

    assert rows(target / "syncbn.db") == rows(home / "syncbn.db")
    for entry in source["manifest"]["files"]:
        if entry["path"] != "syncbn.db":
            assert sha256(target / entry["path"]) == entry["sha256"], entry["path"]
    assert (target / "api-token").read_text() == "the new home's own token\n"
    assert not list(target.glob(".restore-*"))
    assert not (target / "runs" / source["trained"] / CHECKPOINT / "state.pt").exists()

    restored = new_app(target, database_url=None)
    trained, linked = source["trained"], source["linked"]
    view = api_view(restored, [trained, linked])
    assert view == {**api_view(source["app"], [trained]), linked: view[linked]}
    assert [m["epoch"] for m in view[trained][1]["models"]] == [1]
    assert view[linked] == (200, {"job_id": linked, "models": [], "recipe": None, "reason": None})
    from sklearn.datasets import load_digits

    inputs = {"inputs": load_digits().images[:4].tolist()}
    path = f"/v1/jobs/{source['trained']}/predict"
    before = local_client(source["app"]).post(path, json=inputs)
    after = local_client(restored).post(path, json=inputs)
    assert after.status_code == 200, after.text
    assert after.json()["predictions"] == before.json()["predictions"]


def crafted(
    path: Path,
    members: dict[str, bytes],
    listed: dict[str, bytes] | None = None,
    link: str = "",
    database: Any = None,
    pax: dict[str, str] | None = None,
) -> Path:
    """A tar of ``members`` with a manifest of ``listed`` (default: the members), and a link
    member named ``link``; ``pax``: the members' PAX headers."""
    entries = [
        {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in (members if listed is None else listed).items()
    ]
    manifest = {"format": "syncbn-backup", "version": 1, "database": database, "files": entries}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in {**members, MANIFEST: json.dumps(manifest).encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if pax and name != MANIFEST:
                info.pax_headers = pax
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


def newer_database(path: Path) -> bytes:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        connection.execute("INSERT INTO alembic_version VALUES ('9999_from_the_future')")
    return path.read_bytes()


BAD_ARCHIVES = {
    "a flipped byte": "its SHA-256 is not the manifest's",
    "cut short": "not a readable archive|holds no manifest.json",
    "an absolute path": "unsafe path",
    "a .. path": "unsafe path",
    "a link": "is a link: refused",
    "a file not in the manifest": "runs/j-x/driver.log: not in manifest.json",
    "a file missing": "datasets/d.npz: listed in manifest.json, missing",
    "a newer schema": "schema revision '9999_from_the_future' is newer than this release",
    "a file and a folder at one path": "'runs/j-x/driver.log' is at the path of another",
    "a manifest's database of another type": "manifest.json is not a syncbn backup's manifest",
    "a manifest's database at a dataset's path": "manifest.json is not a syncbn backup's",
    "a database that is not SQLite": "the archive's database is not a SQLite database",
    "an absurd time": "'datasets/d.npz' has the time inf: refused",
}


def bad_archive(kind: str, source: dict[str, Any], tmp_path: Path) -> Path:
    """The archive of ``kind``: the source's backup damaged, or one made by hand."""
    path = tmp_path / "bad.tar"
    good = {"datasets/d.npz": b"npz", "runs/j-x/driver.log": b"log"}
    if kind in ("a flipped byte", "cut short"):
        data = bytearray(gzip.decompress(source["archive"].read_bytes()))
        if kind == "cut short":
            data = data[: len(data) // 2]
        else:
            data[data.index(b"__metadata__") + 200] ^= 0xFF  # inside the model file's tensors
        path.write_bytes(bytes(data))
        return path
    members = {
        "an absolute path": {"/tmp/evil": b"x"},
        "a .. path": {"runs/../../evil": b"x"},
        "a file missing": {"runs/j-x/driver.log": b"log"},
    }
    if kind in members:
        return crafted(path, members[kind], listed=good if kind == "a file missing" else None)
    if kind == "a link":
        return crafted(path, good, link="runs/j-x/model.safetensors")
    if kind == "a file not in the manifest":
        return crafted(path, good, listed={"datasets/d.npz": b"npz"})
    if kind == "a file and a folder at one path":
        return crafted(path, {"runs/j-x": b"x", "runs/j-x/driver.log": b"log"})
    if kind == "a manifest's database of another type":
        return crafted(path, good, database=["syncbn.db"])
    if kind == "a manifest's database at a dataset's path":
        return crafted(path, good, database="datasets/d.npz")
    if kind == "a database that is not SQLite":
        return crafted(path, {"syncbn.db": b"not a database " * 100}, database="syncbn.db")
    if kind == "an absurd time":
        return crafted(path, good, pax={"mtime": "1e400"})
    database = newer_database(tmp_path / "newer.db")
    return crafted(path, {"syncbn.db": database}, database="syncbn.db")


@pytest.mark.parametrize("kind", list(BAD_ARCHIVES))
def test_a_bad_archive_is_refused_and_leaves_the_home_as_it_was(source, tmp_path, kind) -> None:
    archive, message = bad_archive(kind, source, tmp_path), BAD_ARCHIVES[kind]
    existing, new = tmp_path / "existing", tmp_path / "new"
    existing.mkdir()
    (existing / "api-token").write_text("token\n")
    for home in (existing, new):
        with pytest.raises(OperationError, match=message):
            restore(home_settings(home), archive, out=io.StringIO())
    assert sorted(os.listdir(existing)) == ["api-token"] and not new.exists()
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_a_home_with_data_is_not_restored_into_and_the_command_says_why(
    source, tmp_path, monkeypatch, capsys
) -> None:
    home = tmp_path / "busy"
    (home / "runs" / "j-1").mkdir(parents=True)
    (home / "syncbn.db").write_bytes(b"")
    monkeypatch.setenv("SYNCBN_HOME", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert service_main(["restore", str(source["archive"])]) == 2
    error = capsys.readouterr().err
    assert (
        f"{home} (SYNCBN_HOME) is not empty: it holds the database syncbn.db, runs/ (1 entries)"
        in error
    )
    assert sorted(os.listdir(home)) == ["runs", "syncbn.db"]

    # backup: never over an existing file; PostgreSQL's database is pg_dump's
    assert service_main(["backup", str(source["archive"])]) == 2
    assert "exists: give a new file name" in capsys.readouterr().err
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert service_main(["backup", str(tmp_path / "pg.tar")]) == 2
    assert "pg_dump" in capsys.readouterr().err and not (tmp_path / "pg.tar").exists()


def test_the_archives_folder_is_made_when_missing(source, tmp_path) -> None:
    """``python -m service backup backups/…`` on a fresh checkout (``docs/operations.md``)."""
    settings = home_settings(source["home"])
    target = tmp_path / "backups" / "2026" / "syncbn.tar"
    manifest = backup(settings, target, out=io.StringIO())
    assert target.is_file() and manifest["files"] == source["manifest"]["files"]
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OperationError, match=r"cannot make the folder .*a-file"):
        backup(settings, tmp_path / "a-file" / "syncbn.tar", out=io.StringIO())


def test_files_only_holds_the_files_of_the_databases_rows_and_no_database(source, tmp_path):
    """``--files-only`` (PostgreSQL's database is ``pg_dump``'s): the same files, no
    ``syncbn.db``; restored, the home has the files and waits for ``pg_restore``."""
    archive, out = tmp_path / "files.tar", io.StringIO()
    manifest = backup(home_settings(source["home"]), archive, files_only=True, out=out)
    assert manifest["database"] is None and manifest["schema_revision"] == head_revision()
    everything = {e["path"]: e["sha256"] for e in source["manifest"]["files"]}
    assert {e["path"]: e["sha256"] for e in manifest["files"]} == {
        path: digest for path, digest in everything.items() if path != "syncbn.db"
    }
    target, out = tmp_path / "restored", io.StringIO()
    restore(home_settings(target), archive, out=out)
    assert not (target / "syncbn.db").exists() and "pg_restore" in out.getvalue()
    assert (target / "runs" / source["trained"] / "driver.log").read_text() == "epoch 1 done\n"


# -- a job's output is untrusted: its bad files are skipped, never the whole backup -------------
@pytest.fixture
def hostile(source, tmp_path) -> dict[str, Any]:
    """A home whose jobs wrote what they should not: a link per checkpoint name (thousands),
    too many checkpoints, a model file longer than its header says, a sparse ``stats.jsonl``
    over the bound, files that cannot be read; and a code bundle nested too deep."""
    home = tmp_path / "home"
    app = new_app(home, database_url=None)
    client = local_client(app)
    bundle = client.post("/v1/code", files={"file": ("b.zip", zip_bytes({"net.py": NETWORK}))})
    links, many, sparse, locked = (client.post("/v1/jobs", json=GOOD).json()["id"] for _ in "1234")
    runs = home / "runs"
    model = (source["home"] / "runs" / source["trained"] / CHECKPOINT / MODEL_FILE).read_bytes()
    (runs / links).mkdir(parents=True)
    for i in range(1500):  # more than the service looks at (MAX_RUN_ENTRIES)
        (runs / links / f"checkpoint_{i:06d}").symlink_to("/")
    for i in range(12):  # more than the service reads (MAX_CHECKPOINTS): the newest 8
        (runs / many / f"checkpoint_{i:06d}").mkdir(parents=True)
        (runs / many / f"checkpoint_{i:06d}" / MODEL_FILE).write_bytes(model)
    (runs / many / "checkpoint_000011" / MODEL_FILE).write_bytes(model + b"more")
    (runs / many / "driver.log").write_text("epoch 1\n")
    (runs / sparse).mkdir(parents=True)
    with open(runs / sparse / "stats.jsonl", "wb") as handle:
        handle.truncate(300 << 20)  # on disk: nothing; backed up it would be 300 MB
    (runs / sparse / "outcome.json").write_text("{}")
    (runs / locked / "checkpoint_000001").mkdir(parents=True)
    (runs / locked / "checkpoint_000001" / MODEL_FILE).write_bytes(model)
    (runs / locked / "driver.log").write_text("log\n")
    (runs / locked / "stats.jsonl").write_text('{"type": "report"}\n' * 1000)
    deep = home / "code" / bundle.json()["id"]
    for _ in range(40):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "x.py").write_text("")
    return {"home": home, "links": links, "many": many, "sparse": sparse, "locked": locked}


def test_a_jobs_bad_output_is_skipped_with_its_reason_never_the_whole_backup(
    hostile, tmp_path, monkeypatch
) -> None:
    from service.operations.backup import take as module

    home, locked = hostile["home"], hostile["locked"]
    real_open, real_size = os.open, module._size_to_copy

    def no_permission(path, flags, *args, **kwargs):  # chmod 000, as a user without root
        if path in ("driver.log", "checkpoint_000001") and f"/{locked}" in os.readlink(
            f"/proc/self/fd/{kwargs['dir_fd']}"
        ):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    def shrinking(handle, path, size, settings):  # the job starts its file over meanwhile
        copied = real_size(handle, path, size, settings)
        if path.name == "stats.jsonl" and locked in str(path):
            os.truncate(home / path, 10)
        return copied

    monkeypatch.setattr(os, "open", no_permission)
    monkeypatch.setattr(module, "_size_to_copy", shrinking)
    out = io.StringIO()
    manifest = backup(home_settings(home), tmp_path / "b.tar", out=out)
    monkeypatch.undo()

    paths = {entry["path"] for entry in manifest["files"]}
    skipped = [(item["path"], item["reason"]) for item in manifest["skipped"]]
    runs = lambda job: f"runs/{hostile[job]}"  # noqa: E731
    # links: 20 named, then how many more; the run folder is looked at no further than the
    # service does, so one job cannot make the manifest (or the backup) unbounded
    named = [p for p, _ in skipped if p.startswith(runs("links") + "/")]
    assert len(named) == 20
    assert (runs("links"), "981 more skipped, not listed") in skipped
    assert len(json.dumps(manifest)) < 20_000
    # the newest 8 checkpoints, one of them refused: longer than its header declares
    models = sorted(p for p in paths if p.startswith(runs("many")) and p.endswith(MODEL_FILE))
    assert [p.split("/")[2] for p in models] == [f"checkpoint_{i:06d}" for i in range(4, 11)]
    longer = f"{runs('many')}/checkpoint_000011/{MODEL_FILE}"
    assert any(p == longer and "more than the" in r and "header declares" in r for p, r in skipped)
    assert any(p == runs("many") and "only the newest 8" in r for p, r in skipped)
    # over the bound the service reads; unreadable; shrunk while read
    assert (
        f"{runs('sparse')}/stats.jsonl",
        f"{300 << 20} bytes, over {256 << 20} (the most the service reads): not backed up",
    ) in skipped
    assert f"{runs('sparse')}/outcome.json" in paths
    reasons = dict(skipped)
    assert reasons[f"{runs('locked')}/driver.log"] == "cannot be read: Permission denied"
    assert reasons[f"{runs('locked')}/checkpoint_000001"] == "cannot be read: Permission denied"
    assert reasons[f"{runs('locked')}/stats.jsonl"].startswith("shrank while it was read")
    # a code bundle nested deeper than backed up: noted, no RecursionError
    assert any("over 32 folders deep" in r for _, r in skipped)
    # the output names at most 50 skipped paths, then says where the rest is
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("backup: skipped ") for line in lines) == len(skipped) < 50
    many_lines = io.StringIO()
    module._say_skipped(
        module._Progress(many_lines, "backup", 0, 0), [{"path": "p", "reason": "r"}] * 60
    )
    lines = many_lines.getvalue().splitlines()
    assert len(lines) == 51 and lines[-1] == "backup: ... and 10 more lines: see manifest.json"

    restored = tmp_path / "restored"
    restore(home_settings(restored), tmp_path / "b.tar", out=io.StringIO())
    assert (restored / longer).exists() is False
    assert (restored / models[-1]).read_bytes() == (home / models[-1]).read_bytes()


def test_the_manifest_never_outgrows_what_a_restore_reads(hostile, tmp_path, monkeypatch):
    """Too large indented: compact, then the skipped paths counted, not named; still too
    large: the backup fails and writes nothing (never an archive its restore refuses)."""
    from service.operations.backup import take as module

    full = backup(home_settings(hostile["home"]), tmp_path / "full.tar", out=io.StringIO())
    listed = len(json.dumps(full, separators=(",", ":")))
    monkeypatch.setattr(module, "MAX_MANIFEST_BYTES", listed - 100)
    small = backup(home_settings(hostile["home"]), tmp_path / "small.tar", out=io.StringIO())
    assert all(item["reason"].endswith("more skipped, not listed") for item in small["skipped"])
    restore(home_settings(tmp_path / "restored"), tmp_path / "small.tar", out=io.StringIO())
    monkeypatch.setattr(module, "MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(OperationError, match="over the 1000 a restore reads"):
        backup(home_settings(hostile["home"]), tmp_path / "none.tar", out=io.StringIO())
    assert not (tmp_path / "none.tar").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "full.tar",
        "home",
        "restored",
        "small.tar",
    ]


def test_job_chosen_names_are_escaped_and_a_target_made_meanwhile_is_kept(
    source, tmp_path, monkeypatch
) -> None:
    from service.operations.backup import take as module

    home = tmp_path / "home"
    client = local_client(new_app(home, database_url=None))
    job = client.post("/v1/jobs", json=GOOD).json()["id"]
    (home / "runs" / job / "checkpoint_a\nb\x1b[31m").mkdir(parents=True)
    (home / "runs" / job / "checkpoint_a\nb\x1b[31m" / MODEL_FILE).symlink_to("/")
    out = io.StringIO()
    backup(home_settings(home), tmp_path / "b.tar", out=out)
    assert "skipped runs/" + job + "/checkpoint_a\\nb\\x1b[31m/model.safetensors" in out.getvalue()
    assert "\x1b" not in out.getvalue()

    real = module._manifest_bytes

    def someone_writes_the_target(manifest, plan):
        (tmp_path / "late.tar").write_text("someone else's")
        return real(manifest, plan)

    monkeypatch.setattr(module, "_manifest_bytes", someone_writes_the_target)
    with pytest.raises(OperationError, match="was made while the backup ran: not overwritten"):
        backup(home_settings(home), tmp_path / "late.tar", out=io.StringIO())
    assert (tmp_path / "late.tar").read_text() == "someone else's"
    assert not list(tmp_path.glob(".syncbn-backup-*"))

    # an error writing (a full disk) is the backup's, never a skipped file
    def full(handle, out, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "_copy", full)
    with pytest.raises(OperationError, match=r"the backup failed, .*No space left on device"):
        backup(home_settings(source["home"]), tmp_path / "full.tar", out=io.StringIO())
    assert not (tmp_path / "full.tar").exists() and not list(tmp_path.glob(".syncbn-backup-*"))


# -- a restore is all or nothing ------------------------------------------------------------------
def test_a_restore_that_fails_while_moving_into_place_leaves_the_home_as_it_was(
    source, tmp_path, monkeypatch
) -> None:
    """The database is copied beside its file and linked first; a failure after that (a
    folder rename) moves everything back; a failure while copying it (a full disk) leaves no
    copy. Neither is a traceback: the command exits 2."""
    home = tmp_path / "home"
    home.mkdir()
    real_rename = os.rename

    def rename(source_path, target_path, *args, **kwargs):
        if str(target_path).endswith("/runs"):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(target_path))
        return real_rename(source_path, target_path, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OperationError, match=r"nothing was restored: .*cross-device"):
        restore(home_settings(home), source["archive"], out=io.StringIO())
    assert os.listdir(home) == []
    monkeypatch.undo()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("shutil.copyfileobj", full)
    monkeypatch.setenv("SYNCBN_HOME", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert service_main(["restore", str(source["archive"])]) == 2
    assert os.listdir(home) == []
    monkeypatch.undo()

    # a killed restore's staging (in the home, and the database copy beside its file) goes
    (home / ".restore-killed" / "runs").mkdir(parents=True)
    (home / ".syncbn.db.restore-killed").write_bytes(b"half a database")
    restore(home_settings(home), source["archive"], out=io.StringIO())
    assert sorted(os.listdir(home)) == ["code", "datasets", "runs", "syncbn.db"]


def test_the_service_sweeps_a_killed_restores_staging_at_start(tmp_path) -> None:
    from service.files import housekeeping

    (tmp_path / ".restore-abc" / "runs").mkdir(parents=True)
    (tmp_path / ".syncbn.db.restore-abc").write_bytes(b"x")
    settings = home_settings(tmp_path)
    assert housekeeping.sweep(settings) == 2
    assert not list(tmp_path.glob(".*restore-*"))
