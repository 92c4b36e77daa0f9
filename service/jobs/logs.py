"""A job's driver log: kept in its run folder when it ends, read by its tail.

Ray keeps a Ray Job's log in the head's session folder, which goes with the head (the embedded
head of ``make run`` deletes it when it stops). So when a job ends, the last
``max_job_log_bytes`` of its log are copied to ``<runs>/<job>/driver.log``, and
``GET /v1/jobs/{id}/logs`` serves that file once it exists: a restart loses no log. The log is
the job's output (user code prints to it), so it is read by its tail, with bounded memory,
whatever its size, and the run folder (which the job can write) is never followed through a
link.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from contract.protocol import open_regular
from service.cluster import Cluster
from service.settings import Settings

logger = logging.getLogger("service.jobs.logs")
LOG_FILE = "driver.log"


def kept_log(settings: Settings, job_id: str) -> Path:
    """Where the job's log is kept once it has ended."""
    return settings.runs_dir / job_id / LOG_FILE


def keep(settings: Settings, ray: Cluster, job_id: str) -> bool:
    """Copy the end of the ended job's Ray log to its run folder (written whole, a link there
    replaced, not followed); False when Ray has none or the run folder is not a plain folder."""
    text = ray.logs(job_id, settings.max_job_log_bytes)
    folder = settings.runs_dir / job_id
    if not text:
        return False
    folder.mkdir(parents=True, exist_ok=True)  # a driver that failed early made none
    if not _plain_folder(settings.runs_dir, folder):
        logger.warning("job %s: its run folder is not a plain folder: its log is not kept", job_id)
        return False
    partial = folder / f".{LOG_FILE}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    try:
        with os.fdopen(os.open(partial, flags, 0o600), "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a full disk costs the job its kept log, never its outcome (it is still followed)
        logger.warning("job %s: its log is not kept: the disk is full (%s)", job_id, exc)
        return False
    os.replace(partial, folder / LOG_FILE)
    return True


def tail(settings: Settings, ray: Cluster, job_id: str, lines: int, on_ray: bool) -> str:
    """The last ``lines`` lines of the job's log, at most ``max_job_log_bytes``: the kept file
    once the job has ended, else Ray's (``on_ray``: it was handed to Ray)."""
    path = kept_log(settings, job_id)
    if _plain_folder(settings.runs_dir, path.parent) and path.exists():
        try:
            text = _file_tail(path, settings.max_job_log_bytes)
        except OSError as exc:
            logger.warning("job %s: its kept log cannot be read: %s", job_id, exc)
        else:
            return "".join(text.splitlines(keepends=True)[-lines:]).rstrip("\n")
    if not on_ray:
        return ""
    return ray.logs(job_id, settings.max_job_log_bytes, lines).rstrip("\n")


def _file_tail(path: Path, max_bytes: int) -> str:
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(max(0, size - max_bytes))
        return handle.read(max_bytes).decode("utf-8", errors="replace")


def _plain_folder(runs: Path, folder: Path) -> bool:
    """Whether ``folder`` is a real folder directly in ``runs`` (no link on the way)."""
    return folder.is_dir() and not folder.is_symlink() and folder.resolve().parent == runs.resolve()
