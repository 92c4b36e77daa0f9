"""Restoring a backup into an empty home: unpacked into staging, every checksum and the
database checked, then moved into place (and back on any failure)."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import zlib
from contextlib import closing, suppress
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from service.files.housekeeping import fsync_dir, restore_leftovers, sqlite_file
from service.operations.backup.archive import (
    CHUNK,
    DATABASE,
    DOCS,
    FOLDERS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_MTIME,
    OperationError,
    _mb,
    _Progress,
)
from service.operations.backup.home import (
    shown,
)
from service.operations.backup.take import (
    _publish_new,
)
from service.settings import Settings
from service.storage.db import SchemaTooNew, check_known


# -- restoring -------------------------------------------------------------------------------
def occupied(home: Path, database: Path | None) -> list[str]:
    """What in ``home`` (and the database file) a restore would overwrite: empty means the
    home may be restored into. An ``api-token``, ``service-url`` or ``ray/`` is not counted."""
    found = []
    if database is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            path = Path(f"{database}{suffix}")
            if path.exists() or path.is_symlink():
                found.append(f"the database {path.name}" if suffix == "" else path.name)
    for name in FOLDERS:
        path = home / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            found.append(f"{name} (not a folder)")
        elif path.is_dir():
            count = sum(1 for _ in path.iterdir())
            if count:
                found.append(f"{name}/ ({count} entries)")
    return found


def _checked_name(member: tarfile.TarInfo) -> str:
    """The member's path, if it is a plain file a backup holds, at a safe relative path."""
    name = member.name
    if not member.isreg():
        kind = "link" if member.issym() or member.islnk() else "folder" if member.isdir() else ""
        raise OperationError(
            f"the archive's member {name!r} is a {kind or 'special file'}: refused (a backup "
            "holds plain files only)"
        )
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\0" in name:
        raise OperationError(f"the archive's member {name!r} has an unsafe path: refused")
    if name not in (MANIFEST, DATABASE) and (parts[0] not in FOLDERS or len(parts) < 2):
        raise OperationError(f"the archive's member {name!r} is not a file a backup holds")
    return name


def _manifest(data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
        assert isinstance(manifest, dict) and manifest.get("format") == FORMAT
        version = manifest["version"]
        assert type(version) is int and isinstance(manifest["files"], list)
        assert manifest.get("database") in (None, DATABASE)
        for entry in manifest["files"]:
            assert isinstance(entry["path"], str) and type(entry["size"]) is int
            assert entry["size"] >= 0 and isinstance(entry["sha256"], str)
            assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
    except (ValueError, AssertionError, KeyError, TypeError, RecursionError):
        raise OperationError(f"{MANIFEST} is not a syncbn backup's manifest") from None
    if version > FORMAT_VERSION:
        raise OperationError(
            f"the archive's format version {version} is newer than this release's "
            f"({FORMAT_VERSION}): restore it with syncbn-service "
            f"{shown(manifest.get('service_version'))}"
        )
    return manifest


def _unpack(source: Path, staging: Path, progress: _Progress) -> tuple[dict, dict]:
    """Every member of ``source`` into ``staging`` (each name checked, each file hashed); the
    manifest and {path: (size, sha256)} of what was unpacked."""
    found: dict[str, tuple[int, str]] = {}
    manifest = None
    try:
        with tarfile.open(source, "r|*") as tar:
            for member in tar:
                name = _checked_name(member)
                if name in found or (name == MANIFEST and manifest is not None):
                    raise OperationError(f"the archive holds {name!r} twice: refused")
                if not (math.isfinite(member.mtime) and 0 <= member.mtime <= MAX_MTIME):
                    raise OperationError(
                        f"the archive's member {name!r} has the time {member.mtime}: refused"
                    )
                handle = tar.extractfile(member)
                assert handle is not None
                if name == MANIFEST:
                    if member.size > MAX_MANIFEST_BYTES:
                        raise OperationError(f"{MANIFEST} is over {MAX_MANIFEST_BYTES} bytes")
                    manifest = _manifest(handle.read())
                    continue
                found[name] = _unpack_file(handle, staging, name, member.mtime)
                progress.add(found[name][0])
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise OperationError(f"{source} is not a readable archive: {exc}") from None
    if manifest is None:
        raise OperationError(f"{source} holds no {MANIFEST}: not a whole syncbn backup")
    return manifest, found


def _unpack_file(handle: Any, staging: Path, name: str, mtime: float) -> tuple[int, str]:
    """The member ``name`` (open as ``handle``) written under ``staging``, flushed; its size
    and SHA-256. A file and a folder at one path is a refusal."""
    path = staging.joinpath(*name.split("/"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise OperationError(
            f"the archive's member {name!r} is at the path of another member's folder, or "
            "under another member's file: refused"
        ) from None
    sha, size = hashlib.sha256(), 0
    with os.fdopen(fd, "wb") as out:
        for block in iter(partial(handle.read, CHUNK), b""):
            sha.update(block)
            out.write(block)
            size += len(block)
        out.flush()
        os.fsync(out.fileno())
    os.utime(path, (mtime, mtime))
    return size, sha.hexdigest()


def _verify(manifest: dict[str, Any], found: dict[str, tuple[int, str]]) -> None:
    """Every file of the manifest was unpacked with its size and SHA-256, and nothing else."""
    listed = {entry["path"]: (entry["size"], entry["sha256"]) for entry in manifest["files"]}
    problems = [f"{p}: listed in {MANIFEST}, missing" for p in sorted(set(listed) - set(found))]
    problems += [f"{p}: not in {MANIFEST}" for p in sorted(set(found) - set(listed))]
    for path in sorted(set(listed) & set(found)):
        (size, sha), (got_size, got_sha) = listed[path], found[path]
        if got_size != size:
            problems.append(f"{path}: {got_size} bytes, its manifest says {size}")
        elif got_sha != sha:
            problems.append(f"{path}: its SHA-256 is not the manifest's")
    if manifest.get("database") and manifest["database"] not in listed:
        problems.append(f"{manifest['database']}: the database, missing")
    if problems:
        more = f"; and {len(problems) - 5} more" if problems[5:] else ""
        shown = "; ".join(problems[:5]) + more
        raise OperationError(f"the archive is damaged, nothing was restored: {shown}")


def _check_database(path: Path, manifest: dict[str, Any]) -> str | None:
    """The unpacked database passes SQLite's integrity check and its revision is known here;
    its revision."""
    try:
        with closing(sqlite3.connect(path)) as connection:
            check = connection.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise OperationError(f"the archive's database fails SQLite's check: {check}")
            try:
                row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            except sqlite3.OperationalError:
                row = None
    except sqlite3.DatabaseError as exc:
        raise OperationError(f"the archive's database is not a SQLite database: {exc}") from None
    revision = row[0] if row else None
    if revision is not None and not isinstance(revision, str):
        raise OperationError(f"the archive's database has the schema revision {revision!r}")
    try:
        check_known(revision)
    except SchemaTooNew as exc:
        raise OperationError(
            f"the archive's schema revision {exc.found!r} is newer than this release's newest "
            f"({exc.head!r}): restore it with the release that made it (syncbn-service "
            f"{manifest.get('service_version')})"
        ) from None
    return revision


def restore(settings: Settings, source: str | os.PathLike, out: TextIO = sys.stderr) -> dict:
    """Restore the backup ``source`` into ``settings.home`` (which holds no database and no
    files), every checksum verified before anything is moved into place; its manifest. Any
    failure (a bad archive, an error of the file system) is an ``OperationError`` and leaves
    the home as it was."""
    source = Path(source)
    try:
        return _restore(settings, source, out)
    except (OSError, sqlite3.Error) as exc:
        raise OperationError(f"the restore failed, nothing was restored: {exc}") from None


def _restore(settings: Settings, source: Path, out: TextIO) -> dict:
    if not source.is_file():
        raise OperationError(f"{source} is not a file")
    home = settings.home.absolute()
    database = sqlite_file(settings.db_url)
    if home.exists() and not home.is_dir():
        raise OperationError(f"{home} (SYNCBN_HOME) is not a folder")
    in_use = occupied(home, database)
    if in_use:
        raise OperationError(
            f"{home} (SYNCBN_HOME) is not empty: it holds {', '.join(in_use)}. Restore into an "
            "empty home: set SYNCBN_HOME to a new folder, or move these away"
        )
    progress = _Progress(out, "restore", 0, 0)
    for stale in restore_leftovers(home, database):
        progress.say(f"removing {shown(stale)}, left by an interrupted restore")
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    made = not home.exists()
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=home))
    try:
        progress.say(f"unpacking {source} into {staging} ...")
        manifest, found = _unpack(source, staging, progress)
        _verify(manifest, found)
        progress.show()
        progress.say(f"every file's size and SHA-256 match {MANIFEST}")
        revision = manifest.get("schema_revision")
        if manifest.get("database"):
            if database is None:
                raise OperationError(
                    "the archive holds a SQLite database, but DATABASE_URL names another "
                    "database: unset DATABASE_URL to restore into SYNCBN_HOME's SQLite, or "
                    f"restore PostgreSQL with pg_restore ({DOCS}#postgresql)"
                )
            revision = _check_database(staging / DATABASE, manifest)
        in_use = occupied(home, database)
        if in_use:
            raise OperationError(f"{home} was written to meanwhile: it holds {', '.join(in_use)}")
        _move_into_place(staging, home, database if manifest.get("database") else None)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made:
            _remove_if_empty(home)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    size = sum(entry["size"] for entry in manifest["files"])
    print(
        f"restore: restored {len(found)} files ({_mb(size)}) into {home}: schema "
        f"{shown(revision)}, backed up {shown(manifest.get('created'))} by syncbn-service "
        f"{shown(manifest.get('service_version'))}",
        file=out,
    )
    if not manifest.get("database"):
        print(
            "restore: the archive holds no database (--files-only): restore it with pg_restore "
            f"({DOCS}#postgresql)",
            file=out,
        )
    print(
        "restore: start the service on it (make run with this SYNCBN_HOME): an older schema is "
        "upgraded on start. The home keeps its own API token (api-token, made on first start "
        "if missing); users' tokens are in the database and keep working.",
        file=out,
        flush=True,
    )
    return manifest


def _move_into_place(staging: Path, home: Path, database: Path | None) -> None:
    """The checked database (when ``database``) and folders of ``staging`` into place: the
    database first, copied beside its file (which may be on another file system), flushed,
    then linked to its name (never over a file made meanwhile); then each folder renamed. On
    any failure what was moved is moved back, and the database copy removed."""
    moved: list[str] = []
    copy: Path | None = None
    placed = False
    try:
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{database.name}.restore-", dir=database.parent)
            copy = Path(name)
            with os.fdopen(fd, "wb") as target, open(staging / DATABASE, "rb") as handle:
                shutil.copyfileobj(handle, target, CHUNK)
                target.flush()
                os.fsync(target.fileno())
            _publish_new(copy, database, "restore")
            placed, copy = True, None
            fsync_dir(database.parent)
        for name in FOLDERS:
            if (staging / name).exists():
                if (home / name).is_dir():
                    (home / name).rmdir()  # empty: checked
                os.rename(staging / name, home / name)
                moved.append(name)
        fsync_dir(home)
    except BaseException:
        for name in reversed(moved):
            with suppress(OSError):
                os.rename(home / name, staging / name)
        if placed and database is not None:
            with suppress(OSError):
                database.unlink()
        if copy is not None:
            with suppress(OSError):
                copy.unlink()
        raise


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):
        folder.rmdir()
