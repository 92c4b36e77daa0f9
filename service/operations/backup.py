"""Back up a home and restore it: ``python -m service backup FILE`` and ``python -m service
restore FILE`` (``docs/operations.md``).

A backup is one tar archive (gzip-compressed when FILE ends with ``.gz`` or ``.tgz``), taken
while the service and its jobs run::

    syncbn.db                   the SQLite database: SQLite's online backup, one read
                                transaction, so a consistent snapshot (writers go on: WAL)
    datasets/<id>.npz           each uploaded dataset the copied database lists
    code/<id>/...               each code bundle it lists (the unpacked files)
    runs/<job>/...              of each job it lists, what serves its models and its log:
                                driver.log, outcome.json, stats.jsonl and every checkpoint's
                                model.safetensors (with its recipe); not the training state
    manifest.json               last: the format and its version, when, the schema revision,
                                the service version, each file's path, size and SHA-256, and
                                what was skipped and why

The database is copied first, then the files of the rows it holds: a file the copy does not
refer to (an upload still being staged, a job made after the copy) is not in the archive. The
API token (``api-token``) is not either: it is a secret, and a restored home keeps its own
(users' tokens are in the database, as digests, and keep working). Job output is untrusted:
every file is opened relative to the folder opened before it, never through a link
(``O_NOFOLLOW``); a link or a special file is skipped and named in the manifest and the output.

A restore goes into an empty home (no database, nothing in ``datasets/``, ``code/``, ``runs/``;
an ``api-token`` there is kept). The archive is unpacked into a staging folder of the home
first: only plain files, under relative paths without ``..``, each one listed in the manifest
with its size and SHA-256, all checked, and the database's integrity and schema revision too,
before anything is moved into place. A bad archive leaves the home as it was.

With PostgreSQL (``DATABASE_URL``), ``pg_dump`` backs up the database and ``backup
--files-only`` the files (``docs/operations.md#postgresql``).
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import stat
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from contract.protocol import OUTCOME_FILE, STATS_FILE
from contract.recipe import MODEL_FILE
from contract.version import package_version
from service.files.housekeeping import fsync_dir
from service.files.trained_models import CHECKPOINTS
from service.jobs.logs import LOG_FILE
from service.settings import Settings
from service.storage.db import SchemaTooNew, check_known, is_memory_url

FORMAT = "syncbn-backup"
FORMAT_VERSION = 1
"""The archive format this release writes and the newest it restores."""
MANIFEST = "manifest.json"
DATABASE = "syncbn.db"
FOLDERS = ("datasets", "code", "runs")
"""The home's folders a backup holds files of (``contract.layout``)."""
RUN_FILES = (LOG_FILE, OUTCOME_FILE, STATS_FILE)
"""The files of a job's run folder a backup holds, besides its checkpoints' model files."""
MAX_MANIFEST_BYTES = 64 << 20
CHUNK = 1 << 20
PROGRESS_EVERY_S = 1.0
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DOCS = "docs/operations.md"

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
LINK = "a symbolic link: not followed"


class OperationError(RuntimeError):
    """Why a backup or a restore is refused or failed; the command prints it, exits 2."""


class _Skip(Exception):
    """A path of the home that is not backed up (a link, not a plain file or folder)."""


@dataclass(frozen=True)
class Ids:
    """The rows whose files a backup holds."""

    jobs: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    code_bundles: list[str] = field(default_factory=list)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL; None for another database or an in-memory one."""
    if not url.startswith("sqlite") or is_memory_url(url):
        return None
    return Path(url.split("///", 1)[-1].split("?", 1)[0]).absolute()


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


class _Progress:
    """``what: n/N files, x of y MB`` on ``out``, at most once a second, and at the end."""

    def __init__(self, out: TextIO, what: str, files: int, size: int) -> None:
        self.out, self.what, self.total_files, self.total_size = out, what, files, size
        self.files = self.size = 0
        self.shown = time.monotonic()

    def say(self, text: str) -> None:
        print(f"{self.what}: {text}", file=self.out, flush=True)

    def add(self, size: int) -> None:
        self.files += 1
        self.size += size
        if time.monotonic() - self.shown >= PROGRESS_EVERY_S:
            self.show()

    def show(self) -> None:
        self.shown = time.monotonic()
        files = f"{self.files}/{self.total_files}" if self.total_files else str(self.files)
        size = f"{_mb(self.size)} of {_mb(self.total_size)}" if self.total_size else _mb(self.size)
        self.say(f"{files} files, {size}")


# -- reading the home without following links ---------------------------------------------
def _open_at(dir_fd: int, name: str, flags: int) -> int:
    """``name`` in the folder ``dir_fd``, not followed if it is a link (``_Skip``);
    ``FileNotFoundError`` when it is not there."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            raise
        try:
            link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        raise _Skip(LINK if link else "not a folder") from None


def _open_path(home_fd: int, path: PurePosixPath, flags: int) -> int:
    """``path`` (relative) under the home, each component opened without following a link."""
    fd = home_fd
    try:
        for part in path.parts[:-1]:
            parent, fd = fd, _open_at(fd, part, _DIR)
            if parent != home_fd:
                os.close(parent)
        return _open_at(fd, path.parts[-1], flags)
    finally:
        if fd != home_fd:
            os.close(fd)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


@dataclass
class _Plan:
    """The files to copy (relative path, size when planned) and what is skipped, why."""

    files: list[tuple[PurePosixPath, int]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, path: PurePosixPath | str, reason: str) -> None:
        self.skipped.append({"path": str(path), "reason": reason})

    def entry(self, dir_fd: int, name: str, path: PurePosixPath) -> os.stat_result | None:
        """``name``'s status, or None (skipped, or not there) unless a plain file or folder."""
        info = _lstat(dir_fd, name)
        if info is None:
            return None
        if stat.S_ISLNK(info.st_mode):
            self.skip(path, LINK)
            return None
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            self.skip(path, "not a plain file or folder")
            return None
        return info

    def file(self, dir_fd: int, name: str, path: PurePosixPath) -> None:
        info = self.entry(dir_fd, name, path)
        if info is not None and stat.S_ISREG(info.st_mode):
            self.files.append((path, info.st_size))
        elif info is not None:
            self.skip(path, "a folder where a file was expected")

    def tree(self, dir_fd: int, path: PurePosixPath) -> None:
        """Every plain file under the folder ``dir_fd`` (at ``path``), links skipped."""
        with os.scandir(dir_fd) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            info = self.entry(dir_fd, name, path / name)
            if info is None:
                continue
            if stat.S_ISREG(info.st_mode):
                self.files.append((path / name, info.st_size))
                continue
            with self.folder(dir_fd, name, path / name) as sub:
                if sub.fd is not None:
                    self.tree(sub.fd, path / name)

    def folder(self, dir_fd: int | None, name: str, path: PurePosixPath) -> _Folder:
        return _Folder(self, dir_fd, name, path)


class _Folder:
    """``with plan.folder(fd, name, path) as sub``: ``sub.fd``, the folder opened; None when
    it is ``missing`` (or its parent, ``dir_fd`` None, is), or skipped (a link: noted)."""

    def __init__(self, plan: _Plan, dir_fd: int | None, name: str, path: PurePosixPath) -> None:
        self.fd: int | None = None
        self.missing = dir_fd is None
        if dir_fd is None:
            return
        try:
            self.fd = _open_at(dir_fd, name, _DIR)
        except FileNotFoundError:
            self.missing = True
        except _Skip as exc:
            plan.skip(path, str(exc))

    def __enter__(self) -> _Folder:
        return self

    def __exit__(self, *_: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _plan(home_fd: int, ids: Ids) -> _Plan:
    """What the backup of ``ids``' files copies from the home, and what it skips. A queued
    job has no run folder yet; a dataset or code bundle without its file is noted."""
    plan = _Plan()
    datasets, code, runs = (PurePosixPath(name) for name in FOLDERS)

    def safe(names: list[str], folder: PurePosixPath) -> list[str]:
        """The ids that are plain file names (the service makes no other)."""
        for name in names:
            if not SAFE_ID.fullmatch(name):
                plan.skip(f"{folder}/{name!r}", "not a plain file name: refused")
        return [name for name in names if SAFE_ID.fullmatch(name)]

    with plan.folder(home_fd, "datasets", datasets) as top:
        for dataset in safe(ids.datasets, datasets):
            name = f"{dataset}.npz"
            if top.fd is not None and _lstat(top.fd, name) is not None:
                plan.file(top.fd, name, datasets / name)
            elif top.fd is not None or top.missing:
                plan.skip(datasets / name, "missing: its row has no file")
    with plan.folder(home_fd, "code", code) as top:
        for bundle in safe(ids.code_bundles, code):
            with plan.folder(top.fd, bundle, code / bundle) as sub:
                if sub.fd is not None:
                    plan.tree(sub.fd, code / bundle)
                elif sub.missing and (top.fd is not None or top.missing):
                    plan.skip(code / bundle, "missing: its row has no folder")
    with plan.folder(home_fd, "runs", runs) as top:
        for job in safe(ids.jobs, runs):
            with plan.folder(top.fd, job, runs / job) as sub:
                if sub.fd is not None:
                    _plan_run(plan, sub.fd, runs / job)
    return plan


def _plan_run(plan: _Plan, job_fd: int, path: PurePosixPath) -> None:
    """A job's log, outcome and reports, and each checkpoint's model file."""
    for name in RUN_FILES:
        plan.file(job_fd, name, path / name)
    with os.scandir(job_fd) as entries:
        folders = sorted(e.name for e in entries if fnmatch.fnmatchcase(e.name, CHECKPOINTS))
    for name in folders:
        with plan.folder(job_fd, name, path / name) as sub:
            if sub.fd is not None:
                plan.file(sub.fd, MODEL_FILE, path / name / MODEL_FILE)


# -- writing the archive ---------------------------------------------------------------------
class _Reader:
    """The first ``size`` bytes of ``handle`` for ``tarfile`` (which wants every byte it was
    told of), hashed as they are read."""

    def __init__(self, handle: Any, size: int, path: str) -> None:
        self.handle, self.left, self.path = handle, size, path
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.handle.read(n) if n else b""
        if len(data) < n:
            raise OperationError(f"{self.path} shrank while it was read: run the backup again")
        self.left -= len(data)
        self.sha.update(data)
        return data


def _add(tar: tarfile.TarFile, name: str, handle: Any, info: os.stat_result) -> dict[str, Any]:
    """Add the open plain file ``handle`` as ``name``; its manifest entry."""
    member = tarfile.TarInfo(name)
    member.size, member.mtime, member.mode = info.st_size, info.st_mtime, 0o644
    reader = _Reader(handle, info.st_size, name)
    tar.addfile(member, reader)
    return {"path": name, "size": info.st_size, "sha256": reader.sha.hexdigest()}


def _add_from_home(tar: tarfile.TarFile, home_fd: int, path: PurePosixPath) -> dict[str, Any]:
    fd = _open_path(home_fd, path, _FILE)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Skip("not a plain file")
        os.set_blocking(fd, True)
        return _add(tar, str(path), handle, info)


def _snapshot(database: Path, copy: Path) -> tuple[str | None, Ids]:
    """A consistent copy of the SQLite ``database`` (its online backup: one read transaction,
    while writers go on), checked; its schema revision and the rows whose files to copy."""
    if database.is_symlink():
        raise OperationError(f"the database {database} is a symbolic link: not followed")
    if not database.is_file():
        raise OperationError(
            f"there is no database at {database}: nothing to back up (is SYNCBN_HOME right?)"
        )
    with (
        closing(sqlite3.connect(database, timeout=30)) as source,
        closing(sqlite3.connect(copy)) as target,
    ):
        source.backup(target)
    with closing(sqlite3.connect(copy)) as connection:
        connection.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        check = connection.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise OperationError(f"the copy of {database} fails SQLite's check: {check}")
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        revision = None
        if "alembic_version" in tables:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        return revision, _ids(tables, lambda sql: [r[0] for r in connection.execute(sql)])


def _ids(tables: set[str], select: Callable[[str], list[Any]]) -> Ids:
    def ids(table: str) -> list[str]:
        return sorted(str(i) for i in select(f"SELECT id FROM {table}")) if table in tables else []

    return Ids(ids("jobs"), ids("datasets"), ids("code_bundles"))


def _live_ids(url: str) -> tuple[str | None, Ids]:
    """The schema revision and the rows of the running service's database (``--files-only``:
    PostgreSQL, backed up by ``pg_dump`` first)."""
    import sqlalchemy as sa

    from service.storage.db import current_revision, make_engine

    engine = make_engine(url, migrate=False)
    try:
        with engine.connect() as connection:
            tables = set(sa.inspect(connection).get_table_names())
            return current_revision(connection), _ids(
                tables, lambda sql: list(connection.scalars(sa.text(sql)))
            )
    finally:
        engine.dispose()


def backup(
    settings: Settings,
    target: str | os.PathLike,
    files_only: bool = False,
    out: TextIO = sys.stderr,
) -> dict[str, Any]:
    """Write the backup of ``settings.home`` (and its database) to ``target``; its manifest.
    ``files_only``: no database (PostgreSQL's is backed up with ``pg_dump``)."""
    target = Path(target).absolute()
    if target.exists() or target.is_symlink():
        raise OperationError(f"{target} exists: give a new file name (a backup never overwrites)")
    if not target.parent.is_dir():
        raise OperationError(f"{target.parent} is not a folder")
    home = settings.home.resolve()
    if not home.is_dir():
        raise OperationError(f"{home} (SYNCBN_HOME) is not a folder: nothing to back up")
    database = sqlite_file(settings.db_url)
    if database is None and not files_only:
        raise OperationError(
            "the database is not a SQLite file of this machine (DATABASE_URL): back it up with "
            "pg_dump, then the files with `python -m service backup --files-only FILE` "
            f"({DOCS}#postgresql)"
        )
    gzipped = target.name.endswith((".gz", ".tgz"))
    with tempfile.TemporaryDirectory(prefix=".syncbn-backup-", dir=target.parent) as scratch:
        copy = Path(scratch) / DATABASE
        copy_size = 0
        if database is None or files_only:
            revision, ids = _live_ids(settings.db_url)
        else:
            revision, ids = _snapshot(database, copy)
            copy_size = copy.stat().st_size
            print(f"backup: database {database}: {_mb(copy_size)}, schema {revision}", file=out)
        home_fd = os.open(home, _DIR)
        try:
            plan = _plan(home_fd, ids)
            files = len(plan.files) + (0 if files_only else 1)
            total = sum(size for _, size in plan.files)
            progress = _Progress(out, "backup", files, total + (0 if files_only else copy_size))
            progress.say(
                f"{len(ids.jobs)} jobs, {len(ids.datasets)} datasets, {len(ids.code_bundles)} "
                f"code bundles: {len(plan.files)} files, {_mb(total)} (files of {home})"
            )
            unfinished = Path(scratch) / "archive.partial"
            entries: list[dict[str, Any]] = []
            with tarfile.open(
                unfinished, "w:gz" if gzipped else "w", format=tarfile.PAX_FORMAT, **_level(gzipped)
            ) as tar:
                if not files_only:
                    with open(copy, "rb") as handle:
                        entries.append(_add(tar, DATABASE, handle, os.fstat(handle.fileno())))
                    progress.add(entries[-1]["size"])
                for path, _ in plan.files:
                    try:
                        entries.append(_add_from_home(tar, home_fd, path))
                    except FileNotFoundError:
                        plan.skip(path, "removed while the backup ran")
                    except _Skip as exc:
                        plan.skip(path, str(exc))
                    else:
                        progress.add(entries[-1]["size"])
                manifest = {
                    "format": FORMAT,
                    "version": FORMAT_VERSION,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "service_version": package_version(),
                    "schema_revision": revision,
                    "database": None if files_only else DATABASE,
                    "home": str(home),
                    "files": entries,
                    "skipped": plan.skipped,
                }
                data = json.dumps(manifest, indent=1).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mtime, info.mode = len(data), time.time(), 0o644
                tar.addfile(info, io.BytesIO(data))
        finally:
            os.close(home_fd)
        with open(unfinished, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(unfinished, target)
        fsync_dir(target.parent)
    progress.show()
    for item in plan.skipped:
        progress.say(f"skipped {item['path']}: {item['reason']}")
    stored = sum(entry["size"] for entry in entries)
    print(
        f"backup: wrote {target} ({_mb(target.stat().st_size)}): {len(entries)} files, "
        f"{_mb(stored)}, schema {revision}, {len(plan.skipped)} skipped"
        + (" (no database: --files-only)" if files_only else ""),
        file=out,
        flush=True,
    )
    return manifest


def _level(gzipped: bool) -> dict[str, Any]:
    """gzip's level 6: most of level 9's gain on JSON and logs; model files and datasets hardly
    compress either way."""
    return {"compresslevel": 6} if gzipped else {}


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
        assert isinstance(version, int) and isinstance(manifest["files"], list)
        for entry in manifest["files"]:
            assert isinstance(entry["path"], str) and isinstance(entry["size"], int)
            assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
    except (ValueError, AssertionError, KeyError, TypeError):
        raise OperationError(f"{MANIFEST} is not a syncbn backup's manifest") from None
    if version > FORMAT_VERSION:
        raise OperationError(
            f"the archive's format version {version} is newer than this release's "
            f"({FORMAT_VERSION}): restore it with syncbn-service {manifest.get('service_version')}"
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
                handle = tar.extractfile(member)
                assert handle is not None
                if name == MANIFEST:
                    if member.size > MAX_MANIFEST_BYTES:
                        raise OperationError(f"{MANIFEST} is over {MAX_MANIFEST_BYTES} bytes")
                    manifest = _manifest(handle.read())
                    continue
                path = staging.joinpath(*name.split("/"))
                path.parent.mkdir(parents=True, exist_ok=True)
                sha, size = hashlib.sha256(), 0
                with open(path, "xb") as out:
                    for block in iter(partial(handle.read, CHUNK), b""):
                        sha.update(block)
                        out.write(block)
                        size += len(block)
                    out.flush()
                    os.fsync(out.fileno())
                os.utime(path, (member.mtime, member.mtime))
                found[name] = (size, sha.hexdigest())
                progress.add(size)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise OperationError(f"{source} is not a readable archive: {exc}") from None
    if manifest is None:
        raise OperationError(f"{source} holds no {MANIFEST}: not a whole syncbn backup")
    return manifest, found


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
    with closing(sqlite3.connect(path)) as connection:
        check = connection.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise OperationError(f"the archive's database fails SQLite's check: {check}")
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            row = None
    revision = row[0] if row else None
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
    files), every checksum verified before anything is moved into place; its manifest."""
    source = Path(source)
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
    made = not home.exists()
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=home))
    try:
        progress = _Progress(out, "restore", 0, 0)
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
            revision = _check_database(staging / manifest["database"], manifest)
        in_use = occupied(home, database)
        if in_use:
            raise OperationError(f"{home} was written to meanwhile: it holds {', '.join(in_use)}")
        for name in FOLDERS:
            if (staging / name).exists():
                if (home / name).is_dir():
                    (home / name).rmdir()  # empty: checked
                os.rename(staging / name, home / name)
        if manifest.get("database"):
            assert database is not None
            database.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(staging / manifest["database"], database)
            fsync_dir(database.parent)
        fsync_dir(home)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made:
            _remove_if_empty(home)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    size = sum(entry["size"] for entry in manifest["files"])
    print(
        f"restore: restored {len(found)} files ({_mb(size)}) into {home}: schema {revision}, "
        f"backed up {manifest.get('created')} by syncbn-service {manifest.get('service_version')}",
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


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):
        folder.rmdir()


# -- the command line --------------------------------------------------------------------------
def main(argv: list[str], settings: Settings | None = None) -> int:
    """``python -m service backup|restore FILE``: 0, or 2 with the reason on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Without a command: run the service. With one: back up or restore "
        f"SYNCBN_HOME and its database ({DOCS}).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser(
        "backup",
        help="write a consistent backup of the home and its SQLite database, while it runs",
        description="Write a tar archive (.tar.gz/.tgz: gzip) of the SQLite database (an "
        "online copy), the uploaded datasets and code bundles, and each job's model files and "
        "kept log, with a manifest of SHA-256s. The API token is not in it.",
    )
    up.add_argument("file", type=Path, help="the archive to write (never overwritten)")
    up.add_argument(
        "--files-only",
        action="store_true",
        help="no database: the files only (PostgreSQL: back the database up with pg_dump first)",
    )
    down = commands.add_parser(
        "restore",
        help="restore a backup into an empty home",
        description="Restore a backup into SYNCBN_HOME, which must hold no database and no "
        "files; every checksum is verified before anything is moved into place.",
    )
    down.add_argument("file", type=Path, help="the archive that backup wrote")
    args = parser.parse_args(argv)
    settings = settings or Settings()
    try:
        if args.command == "backup":
            backup(settings, args.file, files_only=args.files_only)
        else:
            restore(settings, args.file)
    except OperationError as exc:
        print(f"syncbn-service {args.command}: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
