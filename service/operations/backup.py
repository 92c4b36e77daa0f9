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
(``O_NOFOLLOW``), and one job's bad output is skipped, never the whole backup, which stays
bounded: a link or a special file, a file or folder that cannot be read, a job file that
shrinks while it is read (each is copied aside first) or is over the bound the service reads
it with (``stats.jsonl``, ``outcome.json``, ``driver.log``; a model file: a valid header and
the size it declares), checkpoints past the ``MAX_CHECKPOINTS`` newest, a code bundle's
folders past ``MAX_TREE_DEPTH``. What is skipped is named in the manifest (at most
``MAX_SKIPPED_PER_ENTRY`` paths per job, dataset or code bundle, then how many more) and in
the output (escaped); the manifest never outgrows ``MAX_MANIFEST_BYTES``, what restore reads.

A restore goes into an empty home (no database, nothing in ``datasets/``, ``code/``, ``runs/``;
an ``api-token`` there is kept). The archive is unpacked into a staging folder of the home
first: only plain files, under relative paths without ``..``, each one listed in the manifest
with its size and SHA-256, all checked, and the database's integrity and schema revision too,
before anything is moved into place: the database first (copied beside its file, flushed,
linked to its name), then the folders; a failure on the way moves them back. A bad archive,
or an error of the file system, leaves the home as it was (``OperationError``, never a
traceback); what a killed restore left is removed by the next one.

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
import itertools
import json
import math
import os
import re
import shutil
import sqlite3
import stat
import struct
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from contract.protocol import MAX_OUTCOME_BYTES, OUTCOME_FILE, STATS_FILE
from contract.recipe import MODEL_FILE, RecipeError, _data_end, recipe_from
from contract.version import package_version
from service.files.housekeeping import fsync_dir, restore_leftovers, sqlite_file
from service.files.trained_models import CHECKPOINTS, MAX_CHECKPOINTS, MAX_RUN_ENTRIES
from service.jobs.logs import LOG_FILE
from service.settings import Settings
from service.storage.db import SchemaTooNew, check_known

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
"""The largest manifest a restore reads, and so a backup writes."""
MAX_SKIPPED_PER_ENTRY = 20
"""Skipped paths named per dataset, code bundle or job, at most: then how many more."""
MAX_SHOWN_SKIPPED = 50
"""Skipped paths printed at most (the manifest names them)."""
MAX_TREE_DEPTH = 32
"""Folders deep a code bundle is backed up, at most."""
MAX_STATS_BYTES = 256 << 20
"""The largest ``stats.jsonl`` backed up: what the service reads of one at most
(``contract.protocol.read_events``)."""
MAX_MTIME = 8**11 - 1
"""The latest modification time a tar member gets (a ustar header's; a job may set any)."""
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
    ``FileNotFoundError`` when it is not there; another ``OSError`` when it cannot be read."""
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


def _unreadable(exc: OSError) -> str:
    """The skip reason of a path that cannot be read (``EACCES``: its owner's mode)."""
    return f"cannot be read: {exc.strerror or exc}"


def shown(text: object) -> str:
    """``text`` fit for a line of output: a control character, or a byte of a file name that is
    not UTF-8, escaped (a job chooses its file names)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def _owner(path: PurePosixPath | str) -> str:
    """The dataset, code bundle or job folder a path of the home belongs to."""
    return "/".join(str(path).split("/")[:2])


@dataclass
class _Plan:
    """The files to copy (relative path, size when planned) and what is skipped, why: at most
    ``MAX_SKIPPED_PER_ENTRY`` paths of each dataset, code bundle or job are named, then how
    many more (``summary``)."""

    files: list[tuple[PurePosixPath, int]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def skip(self, path: PurePosixPath | str, reason: str) -> None:
        owner = _owner(path)
        self.counts[owner] = count = self.counts.get(owner, 0) + 1
        if count <= MAX_SKIPPED_PER_ENTRY:
            self.skipped.append({"path": str(path), "reason": reason})

    def summary(self, listed: bool = True) -> list[dict[str, str]]:
        """The skipped paths (``listed``: each, up to the bound; else none), then for each
        dataset, code bundle or job with more, how many."""
        bound = MAX_SKIPPED_PER_ENTRY if listed else 0
        more = [
            {"path": owner, "reason": f"{count - bound} more skipped, not listed"}
            for owner, count in self.counts.items()
            if count > bound
        ]
        return (self.skipped if listed else []) + more

    def entry(self, dir_fd: int, name: str, path: PurePosixPath) -> os.stat_result | None:
        """``name``'s status, or None (skipped, or not there) unless a plain file or folder."""
        try:
            info = _lstat(dir_fd, name)
        except OSError as exc:
            self.skip(path, _unreadable(exc))
            return None
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

    def tree(self, root_fd: int, root: PurePosixPath, max_entries: int) -> None:
        """Every plain file under the folder ``root_fd`` (at ``root``), links skipped: at most
        ``MAX_TREE_DEPTH`` folders deep and ``max_entries`` entries looked at (then the rest is
        skipped, noted). Iterative: as many folders open as it is deep."""
        stack: list[tuple[int, PurePosixPath, Iterator[str]]] = []
        left = max_entries

        def enter(fd: int, path: PurePosixPath) -> bool:
            nonlocal left
            try:
                with os.scandir(fd) as entries:
                    names = sorted(e.name for e in itertools.islice(entries, left + 1))
            except OSError as exc:
                self.skip(path, _unreadable(exc))
                return False
            if len(names) > left:
                self.skip(root, f"over {max_entries} entries: the rest is not backed up")
                names, left = names[:left], 0
            else:
                left -= len(names)
            stack.append((fd, path, iter(names)))
            return True

        enter(root_fd, root)
        try:
            while stack:
                fd, path, names = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    if fd != root_fd:
                        os.close(fd)
                    continue
                info = self.entry(fd, name, path / name)
                if info is None:
                    continue
                if stat.S_ISREG(info.st_mode):
                    self.files.append((path / name, info.st_size))
                elif len(stack) > MAX_TREE_DEPTH:
                    self.skip(path / name, f"over {MAX_TREE_DEPTH} folders deep: not backed up")
                else:
                    with _Folder(self, fd, name, path / name) as sub:
                        if sub.fd is not None and enter(sub.fd, path / name):
                            sub.fd = None  # the stack closes it
        finally:
            for fd, _, _ in stack:
                if fd != root_fd:
                    os.close(fd)

    def folder(self, dir_fd: int | None, name: str, path: PurePosixPath) -> _Folder:
        return _Folder(self, dir_fd, name, path)


class _Folder:
    """``with plan.folder(fd, name, path) as sub``: ``sub.fd``, the folder opened; None when
    it is ``missing`` (or its parent, ``dir_fd`` None, is), or skipped (a link, or it cannot
    be read: noted)."""

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
        except OSError as exc:
            plan.skip(path, _unreadable(exc))

    def __enter__(self) -> _Folder:
        return self

    def __exit__(self, *_: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _plan(home_fd: int, ids: Ids, max_code_entries: int) -> _Plan:
    """What the backup of ``ids``' files copies from the home, and what it skips (a code
    bundle: at most ``max_code_entries`` entries looked at). A queued job has no run folder
    yet; a dataset or code bundle without its file is noted."""
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
            if top.fd is not None and _exists(top.fd, name):
                plan.file(top.fd, name, datasets / name)
            elif top.fd is not None or top.missing:
                plan.skip(datasets / name, "missing: its row has no file")
    with plan.folder(home_fd, "code", code) as top:
        for bundle in safe(ids.code_bundles, code):
            with plan.folder(top.fd, bundle, code / bundle) as sub:
                if sub.fd is not None:
                    plan.tree(sub.fd, code / bundle, max_code_entries)
                elif sub.missing and (top.fd is not None or top.missing):
                    plan.skip(code / bundle, "missing: its row has no folder")
    with plan.folder(home_fd, "runs", runs) as top:
        for job in safe(ids.jobs, runs):
            with plan.folder(top.fd, job, runs / job) as sub:
                if sub.fd is not None:
                    _plan_run(plan, sub.fd, runs / job)
    return plan


def _exists(dir_fd: int, name: str) -> bool:
    try:
        return _lstat(dir_fd, name) is not None
    except OSError:
        return True  # there, unreadable: the plan says why


def _plan_run(plan: _Plan, job_fd: int, path: PurePosixPath) -> None:
    """A job's log, outcome and reports, and the model file of each checkpoint the service
    reads (``_checkpoints``)."""
    for name in RUN_FILES:
        plan.file(job_fd, name, path / name)
    for name in _checkpoints(plan, job_fd, path):
        with plan.folder(job_fd, name, path / name) as sub:
            if sub.fd is not None:
                plan.file(sub.fd, MODEL_FILE, path / name / MODEL_FILE)


def _checkpoints(plan: _Plan, job_fd: int, path: PurePosixPath) -> list[str]:
    """The checkpoint folders of a run folder the service reads, so backs up: among its first
    ``MAX_RUN_ENTRIES`` entries, at most the ``MAX_CHECKPOINTS`` newest by name (links
    skipped); the rest is noted (``service.files.trained_models``)."""
    folders = []
    try:
        with os.scandir(job_fd) as entries:
            for count, entry in enumerate(entries):
                if count == MAX_RUN_ENTRIES:
                    plan.skip(path, f"over {MAX_RUN_ENTRIES} entries: the rest is not looked at")
                    break
                if not fnmatch.fnmatchcase(entry.name, CHECKPOINTS):
                    continue
                if entry.is_symlink():
                    plan.skip(path / entry.name, LINK)
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
    except OSError as exc:
        plan.skip(path, _unreadable(exc))
    folders.sort()
    if len(folders) > MAX_CHECKPOINTS:
        plan.skip(
            path,
            f"{len(folders)} checkpoint folders: only the newest {MAX_CHECKPOINTS} by name are "
            "backed up (the service reads no more)",
        )
    return folders[-MAX_CHECKPOINTS:]


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


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
            raise OperationError(
                f"{shown(self.path)} shrank while it was read: run the backup again"
            )
        self.left -= len(data)
        self.sha.update(data)
        return data


def _add(tar: tarfile.TarFile, name: str, handle: Any, size: int, mtime: float) -> dict[str, Any]:
    """Add ``size`` bytes of the open plain file ``handle`` as ``name``; its manifest entry.
    The time is kept within what a tar header and a restore take (a job may set any)."""
    member = tarfile.TarInfo(name)
    member.size, member.mtime, member.mode = size, min(max(mtime, 0), MAX_MTIME), 0o644
    reader = _Reader(handle, size, name)
    tar.addfile(member, reader)
    return {"path": name, "size": size, "sha256": reader.sha.hexdigest()}


def _add_from_home(
    tar: tarfile.TarFile, home_fd: int, path: PurePosixPath, scratch: Path, settings: Settings
) -> dict[str, Any]:
    """Add the home's file at ``path``: a dataset as it is read (the service's: written once,
    never changed); another file through a copy in ``scratch`` first, so that one a job
    changes, cannot read or made too large is skipped (``_Skip``), never a torn archive."""
    try:
        fd = _open_path(home_fd, path, _FILE)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _Skip(_unreadable(exc)) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Skip("not a plain file")
        os.set_blocking(fd, True)
        if path.parts[0] == "datasets":
            return _add(tar, str(path), handle, info.st_size, info.st_mtime)
        size = _size_to_copy(handle, path, info.st_size, settings)
        copy = scratch / "file"
        with open(copy, "w+b") as out:
            _copy(handle, out, size)
            out.seek(0)
            return _add(tar, str(path), out, size, info.st_mtime)


def _size_to_copy(handle: Any, path: PurePosixPath, size: int, settings: Settings) -> int:
    """The bytes of a job's file (or a code bundle's) that are backed up: all of them, within
    the bound the service reads it with (``_Skip`` past it); a model file's header must be
    valid and declare its size."""
    if path.parts[0] != "runs":
        return size
    if path.name == MODEL_FILE:
        try:
            recipe_from(handle)
            handle.seek(0)
            (header,) = struct.unpack("<Q", handle.read(8))
            declared = 8 + header + _data_end(json.loads(handle.read(header)))
        except RecipeError as exc:
            raise _Skip(f"not a model file the service serves: {exc}") from None
        except OSError as exc:
            raise _Skip(_unreadable(exc)) from None
        handle.seek(0)
        if size > declared:
            raise _Skip(f"{size} bytes, more than the {declared} its header declares")
        return size
    cap, setting = {
        LOG_FILE: (settings.max_job_log_bytes, Settings.env_name("max_job_log_bytes")),
        OUTCOME_FILE: (MAX_OUTCOME_BYTES, "the most the service reads"),
        STATS_FILE: (MAX_STATS_BYTES, "the most the service reads"),
    }.get(path.name, (size, ""))
    if size > cap:
        raise _Skip(f"{size} bytes, over {cap} ({setting}): not backed up")
    return size


def _copy(handle: Any, out: Any, size: int) -> None:
    """``size`` bytes of ``handle`` to ``out``: ``_Skip`` if it cannot be read or has fewer
    (it shrank while it was read); an error writing ``out`` is the backup's."""
    left = size
    while left:
        try:
            block = handle.read(min(CHUNK, left))
        except OSError as exc:
            raise _Skip(_unreadable(exc)) from None
        if not block:
            raise _Skip(f"shrank while it was read ({size - left} of {size} bytes)")
        out.write(block)
        left -= len(block)
    out.flush()


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
    ``files_only``: no database (PostgreSQL's is backed up with ``pg_dump``). A file of the
    home that cannot be read, changes while it is read or is over its bound is skipped (named
    in the manifest); an error writing the archive or reading the database fails the backup
    (``OperationError``), and nothing is left at ``target``."""
    target = Path(target).absolute()
    try:
        return _backup(settings, target, files_only, out)
    except (OSError, sqlite3.Error) as exc:
        raise OperationError(f"the backup failed, {shown(target)} was not written: {exc}") from None


def _backup(settings: Settings, target: Path, files_only: bool, out: TextIO) -> dict[str, Any]:
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
            plan = _plan(home_fd, ids, 2 * settings.max_code_files)
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
                        info = os.fstat(handle.fileno())
                        entries.append(_add(tar, DATABASE, handle, info.st_size, info.st_mtime))
                    progress.add(entries[-1]["size"])
                for path, _ in plan.files:
                    try:
                        entries.append(_add_from_home(tar, home_fd, path, Path(scratch), settings))
                    except FileNotFoundError:
                        plan.skip(path, "removed while the backup ran")
                    except _Skip as exc:  # an error writing the archive is not: it fails
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
                    "skipped": plan.summary(),
                }
                data = _manifest_bytes(manifest, plan)
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mtime, info.mode = len(data), time.time(), 0o644
                tar.addfile(info, io.BytesIO(data))
        finally:
            os.close(home_fd)
        with open(unfinished, "rb") as handle:
            os.fsync(handle.fileno())
        _publish_new(unfinished, target, "backup")
        fsync_dir(target.parent)
    progress.show()
    _say_skipped(progress, manifest["skipped"])
    stored = sum(entry["size"] for entry in entries)
    skipped = sum(plan.counts.values())
    print(
        f"backup: wrote {target} ({_mb(target.stat().st_size)}): {len(entries)} files, "
        f"{_mb(stored)}, schema {revision}, {skipped} skipped"
        + (" (no database: --files-only)" if files_only else ""),
        file=out,
        flush=True,
    )
    return manifest


def _manifest_bytes(manifest: dict[str, Any], plan: _Plan) -> bytes:
    """The manifest's JSON, within ``MAX_MANIFEST_BYTES`` (what a restore reads): indented, else
    compact, else with the skipped paths counted, not listed; else the backup fails (so it
    never writes an archive its restore refuses)."""
    data = json.dumps(manifest, indent=1).encode()
    if len(data) > MAX_MANIFEST_BYTES:
        data = json.dumps(manifest, separators=(",", ":")).encode()
    if len(data) > MAX_MANIFEST_BYTES:
        manifest["skipped"] = plan.summary(listed=False)
        data = json.dumps(manifest, separators=(",", ":")).encode()
    if len(data) > MAX_MANIFEST_BYTES:
        raise OperationError(
            f"the manifest of {len(manifest['files'])} files would be {len(data)} bytes, over "
            f"the {MAX_MANIFEST_BYTES} a restore reads: nothing was written"
        )
    return data


def _say_skipped(progress: _Progress, skipped: list[dict[str, str]]) -> None:
    """The first ``MAX_SHOWN_SKIPPED`` skipped paths, escaped; then how many more."""
    for item in skipped[:MAX_SHOWN_SKIPPED]:
        progress.say(f"skipped {shown(item['path'])}: {shown(item['reason'])}")
    if len(skipped) > MAX_SHOWN_SKIPPED:
        progress.say(f"... and {len(skipped) - MAX_SHOWN_SKIPPED} more lines: see {MANIFEST}")


def _publish_new(source: Path, target: Path, doing: str) -> None:
    """Move ``source`` to ``target`` (in the same folder), never over a file made there
    meanwhile, while ``doing`` ran (a hard link, then the source's name removed; a file
    system without hard links: ``target`` reserved with ``O_EXCL``, then replaced)."""
    made = OperationError(f"{target} was made while the {doing} ran: not overwritten")
    try:
        os.link(source, target)
    except FileExistsError:
        raise made from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise made from None
        os.replace(source, target)
        return
    os.unlink(source)


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
    except (OperationError, OSError) as exc:
        print(f"syncbn-service {args.command}: {shown(exc)}", file=sys.stderr, flush=True)
        return 2
    return 0
