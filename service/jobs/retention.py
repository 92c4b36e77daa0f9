"""Deleting a job that is over, with everything recorded of it and its files; and the
retention: the run folders of jobs that ended ``SYNCBN_RETENTION_DAYS`` ago.

The retention (``Retention.sweep``, from the scheduler's loop once at start, then every
``SYNCBN_RETENTION_INTERVAL_S``) removes a finished job's run folder (checkpoints, model files,
the kept log, ``stats.jsonl``) once it ended that many days ago, unless the job is pinned
(``set_pinned``); its rows stay (state, statistics, evaluations, result) and it records when
(``files_removed_at``): its models list is then empty, with the reason. Unset, nothing is
removed.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, select

from contract.states import FINAL_STATES
from service.errors import Conflict
from service.files.housekeeping import remove_job_files
from service.jobs.lifecycle import job_or_404, why_kept
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.storage.tables import Job
from service.teams.caller import Caller

logger = logging.getLogger("service.jobs.retention")
SWEEP_BATCH = 500
"""Jobs one sweep removes the files of, at most (the oldest first; the next sweep goes on)."""


def delete_job(db: Database, settings: Settings, job_id: str, caller: Caller) -> None:
    """Delete the job's rows, then its run folder (checkpoints, model files, stats.jsonl).
    ``NotFound``; ``Forbidden`` unless ``caller`` may; ``Conflict`` while it is not over or
    belongs to a study."""
    with db.session() as session:
        job = job_or_404(session, job_id, writer=caller)
        if job.study_id is not None:
            raise Conflict(
                f"job {job_id} is part of study {job.study_id}: delete the study instead"
            )
        if reason := why_kept(job):
            raise Conflict(reason)
        store.delete_jobs(session, [job_id])
    remove_job_files(settings, job_id)
    logger.info("job deleted", extra={"job_id": job_id})


def set_pinned(db: Database, job_id: str, pinned: bool, caller: Caller) -> None:
    """Pin the job (its files are kept past the retention) or unpin it; idempotent.
    ``NotFound``; ``Forbidden`` unless ``caller`` may change it; ``Conflict`` when pinning a
    job whose files the retention already removed."""
    with db.session() as session:
        job = job_or_404(session, job_id, writer=caller)
        if pinned and job.files_removed_at is not None:
            raise Conflict(
                f"job {job_id}'s checkpoints and log were already removed by the retention on "
                f"{job.files_removed_at:%Y-%m-%d %H:%M} UTC: there is nothing left to keep"
            )
        job.pinned = pinned
    logger.info("job pinned" if pinned else "job unpinned", extra={"job_id": job_id})


def removed_reason(job: Job, settings: Settings) -> str | None:
    """Why the job has no model file or log any more (None: the retention left them)."""
    if job.files_removed_at is None:
        return None
    days = settings.retention_days
    kept = f"SYNCBN_RETENTION_DAYS={days:g}" if days is not None else "SYNCBN_RETENTION_DAYS"
    return (
        f"job {job.id}'s checkpoints, model files and log were removed by the retention on "
        f"{job.files_removed_at:%Y-%m-%d %H:%M} UTC ({kept}: kept that many days after a job "
        "ends; its statistics and result are kept). Pin a job to keep its files "
        "(POST /v1/jobs/{id}/pin)"
    )


class Retention:
    """The sweep of the retention, at most every ``SYNCBN_RETENTION_INTERVAL_S`` (and once at
    start); off while ``SYNCBN_RETENTION_DAYS`` is unset."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        self._next = -float("inf")

    def sweep_if_due(self) -> int:
        """A sweep when the last one is ``retention_interval_s`` old (the loop's chore)."""
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + self.settings.retention_interval_s
        return self.sweep()

    def sweep(self, now: datetime | None = None) -> int:
        """Remove the run folders of jobs that ended ``retention_days`` before ``now`` (not
        pinned, not removed yet, not still stopping on Ray); how many."""
        days = self.settings.retention_days
        if days is None:
            return 0
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(days=days)
        with self.db.session() as session:
            ids = list(session.scalars(_expired(cutoff).limit(SWEEP_BATCH)))
        removed = 0
        for job_id in ids:
            try:
                removed += int(self._remove(job_id, cutoff, now))
            except Exception:
                logger.exception("job %s: the retention could not remove its files", job_id)
        if removed:
            logger.info(
                "the retention removed the files of %d job(s) that ended before %s "
                "(SYNCBN_RETENTION_DAYS=%g)",
                removed,
                f"{cutoff:%Y-%m-%d %H:%M} UTC",
                days,
            )
        return removed

    def _remove(self, job_id: str, cutoff: datetime, now: datetime) -> bool:
        """Remove the job's files if it is still expired (checked again: it may have been
        pinned since), then record when: files first, so a full database does not keep
        them."""
        with self.db.session() as session:
            if session.scalar(_expired(cutoff).where(Job.id == job_id)) is None:
                return False
            job = store.get_job(session, job_id)
            if job is None or why_kept(job):
                return False
        remove_job_files(self.settings, job_id)
        with self.db.session() as session:
            job = store.get_job(session, job_id)
            if job is not None:
                job.files_removed_at = now
        logger.info("job files removed by the retention", extra={"job_id": job_id})
        return True


def _expired(cutoff: datetime) -> Select[tuple[str]]:
    """The ids of the jobs whose files the retention removes, the longest ended first."""
    return (
        select(Job.id)
        .where(
            Job.state.in_([state.value for state in FINAL_STATES]),
            Job.finished_at < cutoff,
            Job.pinned.is_(False),
            Job.files_removed_at.is_(None),
        )
        .order_by(Job.finished_at, Job.id)
    )
