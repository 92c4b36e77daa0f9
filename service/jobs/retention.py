"""Deleting a job that is over, with everything recorded of it and its files."""

from __future__ import annotations

import logging

from service.errors import Conflict
from service.files.housekeeping import remove_job_files
from service.jobs.lifecycle import job_or_404, why_kept
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.teams.caller import Caller

logger = logging.getLogger("service.jobs.retention")


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
