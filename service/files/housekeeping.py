"""The service's files under ``$SYNCBN_HOME``: published durably, swept after a crash, and
removed with their rows.

- ``publish``: a finished file or folder is flushed to disk (fsync), then renamed into place
  and the rename itself flushed (fsync of the folder), so a crash leaves the old state or the
  new one, never a torn file under a final name.
- ``sweep``: at start, what a crashed upload or prediction left: the staging folders
  ``datasets/.upload-*`` and ``code/.upload-*`` (and ``datasets/.*.partial``, ``.converted``
  of earlier releases), ``predictions/*`` and the temporary files of an interrupted token
  write.
- ``remove_*``: a deleted job's run folder, dataset file or code bundle folder.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from service.settings import Settings

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


def _stale(settings: Settings) -> list[Path]:
    home = settings.home.resolve()
    patterns = {
        settings.datasets_dir: (".upload-*", ".*.partial", ".*.converted"),
        settings.code_dir: (".upload-*",),
        settings.predictions_dir: ("*",),
        home: (f".{settings.api_token_file.name}.*",),
    }
    return [path for folder, globs in patterns.items() for g in globs for path in folder.glob(g)]


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


def remove_job_files(settings: Settings, job_id: str) -> None:
    """A job's run folder: checkpoints, model files, stats.jsonl."""
    shutil.rmtree(settings.runs_dir / job_id, ignore_errors=True)


def remove_dataset_file(settings: Settings, dataset_id: str) -> None:
    (settings.datasets_dir / f"{dataset_id}.npz").unlink(missing_ok=True)


def remove_code_bundle(settings: Settings, bundle_id: str) -> None:
    shutil.rmtree(settings.code_dir / bundle_id, ignore_errors=True)
