"""The service's files under ``$SYNCBN_HOME``: published durably, swept after a crash, and
removed with their rows.

- ``publish``: a finished file or folder is flushed to disk (fsync), then renamed into place
  and the rename itself flushed (fsync of the folder), so a crash leaves the old state or the
  new one, never a torn file under a final name.
- ``sweep``: at start, what a crashed upload or prediction left: the staging folders
  ``datasets/.upload-*`` and ``code/.upload-*`` (and ``datasets/.*.partial``, ``.converted``
  of earlier releases), ``predictions/*``, the temporary files of an interrupted token
  write, and the staging folders of a killed restore (``.restore-*``, and the database copy
  beside the database file).
- ``remove_*``: a deleted job's run folder, dataset file or code bundle folder. A run folder is
  the job's: a link there is removed, never followed, and ``remove_job_files`` says whether it
  is gone (what could not be removed is logged).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from service.settings import Settings
from service.storage.db import is_memory_url

logger = logging.getLogger("service.files.housekeeping")


def fsync_tree(path: Path) -> None:
    """Flush a file, or every file and folder under a folder, to disk."""
    paths = [path] if path.is_file() else [path, *path.rglob("*")]
    for item in paths:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(source: Path, target: Path) -> None:
    """Flush ``source`` (a file or a folder), rename it to ``target``, flush the rename."""
    fsync_tree(source)
    os.replace(source, target)
    fsync_dir(target.parent)


RESTORE_STAGING = ".restore-*"
"""The staging folder of a restore in the home, and the database copy beside the database
file (``.syncbn.db.restore-*``: ``service.operations.backup``)."""


def restore_leftovers(home: Path, database: Path | None) -> list[Path]:
    """What a killed restore into ``home`` (with the SQLite file ``database``) left."""
    found = list(home.glob(RESTORE_STAGING)) if home.is_dir() else []
    if database is not None and database.parent.is_dir():
        found += database.parent.glob(f".{database.name}{RESTORE_STAGING}")
    return found


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL; None for another database or an in-memory one."""
    if not url.startswith("sqlite") or is_memory_url(url):
        return None
    return Path(url.split("///", 1)[-1].split("?", 1)[0]).absolute()


def _stale(settings: Settings) -> list[Path]:
    home = settings.home.resolve()
    patterns = {
        settings.datasets_dir: (".upload-*", ".*.partial", ".*.converted"),
        settings.code_dir: (".upload-*",),
        settings.predictions_dir: ("*",),
        home: (f".{settings.api_token_file.name}.*",),
    }
    found = [path for folder, globs in patterns.items() for g in globs for path in folder.glob(g)]
    return found + restore_leftovers(home, sqlite_file(settings.db_url))


def sweep(settings: Settings) -> int:
    """Remove what crashed uploads and predictions left behind; how many were removed."""
    removed = 0
    for path in _stale(settings):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.info("removed %d stale temporary files of an earlier run", removed)
    return removed


def remove_job_files(settings: Settings, job_id: str) -> bool:
    """A job's run folder: checkpoints, model files, stats.jsonl (a link there: the link);
    whether it is gone. What could not be removed is logged."""
    path = settings.runs_dir / job_id
    if not os.path.lexists(path):
        return True
    errors: list[str] = []
    try:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        else:
            shutil.rmtree(path, onerror=lambda _f, p, e: errors.append(f"{p}: {e[1]}"))
    except FileNotFoundError:
        pass
    except OSError as exc:
        errors.append(f"{path}: {exc}")
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        logger.warning(
            "job %s: its run folder was not wholly removed: %s%s",
            job_id,
            "; ".join(errors[:3]),
            more,
        )
    return not os.path.lexists(path)


def remove_dataset_file(settings: Settings, dataset_id: str) -> None:
    (settings.datasets_dir / f"{dataset_id}.npz").unlink(missing_ok=True)


def remove_code_bundle(settings: Settings, bundle_id: str) -> None:
    shutil.rmtree(settings.code_dir / bundle_id, ignore_errors=True)
