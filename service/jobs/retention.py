"""Deleting a job that is over, with everything recorded of it and its files; and the
retention: the run folders of jobs that ended ``SYNCBN_RETENTION_DAYS`` ago.

The retention (``Retention.sweep``, from the scheduler's loop once at start, then every
``SYNCBN_RETENTION_INTERVAL_S``) removes a finished job's run folder (checkpoints, model files,
the kept log, ``stats.jsonl``) once it ended that many days ago, unless the job is pinned
(``set_pinned``); its rows stay (state, statistics, evaluations, result) and it records when
(``files_removed_at``): its models list is then empty, with the reason. Unset, nothing is
removed.

A job is claimed before its files go: one conditional ``UPDATE`` sets ``files_removed_at`` only
while it is still expired and not pinned, so a pin wins or loses as a whole (a pin after the
claim is a 409: ``set_pinned`` is conditional too). A folder that could not be wholly removed
takes the claim back (logged; the next sweep tries again); what a sweep killed between its
claim and the removal left is removed by the next one (``Retention.leftovers``).
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Select, select, update

from contract.states import FINAL_STATES
from service.errors import Conflict, NotFound
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
MAX_LEFTOVER_ENTRIES = 100_000
"""Entries of ``runs/`` one sweep looks at for the folders of jobs already marked removed."""


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
        job_or_404(session, job_id, writer=caller)  # then one conditional UPDATE: the
        # retention may claim the job meanwhile (it sets files_removed_at)
        where = [Job.id == job_id, *([Job.files_removed_at.is_(None)] if pinned else [])]
        changed = session.execute(
            update(Job)
            .where(*where)
            .values(pinned=pinned)
            .execution_options(synchronize_session=False)
        )
        if not changed.rowcount:
            removed_at = session.scalar(select(Job.files_removed_at).where(Job.id == job_id))
            if removed_at is None:
                raise NotFound("job", job_id)
            raise Conflict(
                f"job {job_id}'s checkpoints and log were already removed by the retention on "
                f"{removed_at:%Y-%m-%d %H:%M} UTC: there is nothing left to keep"
            )
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
        pinned, not removed yet, not still stopping on Ray), and what an interrupted sweep
        left; how many jobs' files went."""
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
        try:
            self.leftovers()
        except Exception:
            logger.exception("the retention could not look for the files of removed jobs")
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
        """Claim the job (one conditional ``UPDATE``: still expired, not pinned, not claimed),
        then remove its files; a folder not wholly removed gives the claim back."""
        with self.db.session() as session:
            job = store.get_job(session, job_id)
            if job is None or why_kept(job):
                return False
            claimed = session.execute(
                update(Job)
                .where(Job.id == job_id, *_expiry(cutoff))
                .values(files_removed_at=now)
                .execution_options(synchronize_session=False)
            )
            if not claimed.rowcount:
                return False  # pinned (or claimed) meanwhile
        if not remove_job_files(self.settings, job_id):
            with self.db.session() as session:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.files_removed_at == now)
                    .values(files_removed_at=None)
                    .execution_options(synchronize_session=False)
                )
            logger.warning(
                "job %s: the retention could not remove all its files: it tries again at its "
                "next sweep",
                job_id,
            )
            return False
        logger.info("job files removed by the retention", extra={"job_id": job_id})
        return True

    def leftovers(self) -> int:
        """Remove the run folders of jobs the retention already marked removed (a sweep was
        stopped between its claim and the removal); how many went. At most
        ``MAX_LEFTOVER_ENTRIES`` entries of ``runs/`` are looked at, ``SWEEP_BATCH`` removed."""
        names = []
        try:
            with os.scandir(self.settings.runs_dir) as entries:
                for count, entry in enumerate(entries):
                    if count == MAX_LEFTOVER_ENTRIES:
                        break
                    names.append(entry.name)
        except FileNotFoundError:
            return 0
        marked: list[str] = []
        for start in range(0, len(names), SWEEP_BATCH):
            if len(marked) >= SWEEP_BATCH:
                break
            with self.db.session() as session:
                marked += session.scalars(
                    select(Job.id).where(
                        Job.id.in_(names[start : start + SWEEP_BATCH]),
                        Job.files_removed_at.is_not(None),
                    )
                )
        gone = sum(remove_job_files(self.settings, job_id) for job_id in marked[:SWEEP_BATCH])
        if marked:
            logger.info("the retention removed what was left of %d removed job(s)", gone)
        return gone


def _expiry(cutoff: datetime) -> list[ColumnElement[bool]]:
    """What makes a job's files the retention's to remove: it ended before ``cutoff``, is not
    pinned, and its files are not removed yet."""
    return [
        Job.state.in_([state.value for state in FINAL_STATES]),
        Job.finished_at < cutoff,
        Job.pinned.is_(False),
        Job.files_removed_at.is_(None),
    ]


def _expired(cutoff: datetime) -> Select[tuple[str]]:
    """The ids of the jobs whose files the retention removes, the longest ended first."""
    return select(Job.id).where(*_expiry(cutoff)).order_by(Job.finished_at, Job.id)
