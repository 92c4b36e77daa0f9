"""Taking a backup: the database's online copy, then the files of its rows, into one tar
archive with its manifest."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import sqlite3
import stat
import struct
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from contract.protocol import MAX_OUTCOME_BYTES, OUTCOME_FILE, STATS_FILE
from contract.recipe import MODEL_FILE, RecipeError, _data_end, recipe_from
from contract.version import package_version
from service.files.housekeeping import fsync_dir, sqlite_file
from service.jobs.logs import LOG_FILE
from service.operations.backup.archive import (
    _DIR,
    _FILE,
    CHUNK,
    DATABASE,
    DOCS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_MTIME,
    MAX_SHOWN_SKIPPED,
    MAX_STATS_BYTES,
    Ids,
    OperationError,
    _mb,
    _Progress,
    _Skip,
)
from service.operations.backup.home import (
    _open_path,
    _Plan,
    _plan,
    _unreadable,
    shown,
)
from service.settings import Settings


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
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # e.g. backups/ on the first backup
    except OSError as exc:
        raise OperationError(f"cannot make the folder {target.parent}: {exc}") from None
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
