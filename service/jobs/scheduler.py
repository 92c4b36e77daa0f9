"""The loop that keeps the service's jobs in step with Ray (one ``tick`` per
``poll_interval_s``, in a worker thread):

1. follow: every job whose Ray Job may still hold resources is polled, and
   ``Lifecycle.follow`` moves it as Ray's status says;
2. admit: the queued jobs, the cluster's capacity and the jobs on Ray go through the pure
   ``admission.admit``, and each decision is applied (start, wait with a reason, reject).

No Ray call happens inside a database transaction: Ray is asked first (capacity, status) or
after the decisions are committed (a submit uploads a code bundle and may take seconds; the
database's write lock, which every report needs, is never held meanwhile).

``reconcile()`` at start-up backfills every job Ray may still run and follows them, so a
restarted service loses nothing (Ray Jobs outlive the service).
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from contract.spec import JobSpec
from contract.states import ACTIVE_STATES, JobState
from service.cluster import Cluster, RayUnavailable, terminal_statuses
from service.jobs.admission import Admit, Holding, Queued, Reject, Wait, admit
from service.jobs.lifecycle import LOST, Lifecycle
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.storage.tables import Job
from service.teams.quotas import worker_quotas

logger = logging.getLogger("service.jobs.scheduler")


STRIKES = 3
"""Ticks in a row a job may fail to be followed before it is failed itself."""


class Scheduler:
    """Follows Ray and admits queued jobs; safe to call from one thread.

    One job never stops the others: an error while following, admitting or reconciling a job
    is logged with its id and that job alone fails (a job Ray is done with, or one that failed
    ``STRIKES`` ticks in a row, with the reason); only ``RayUnavailable`` ends a tick."""

    def __init__(self, settings: Settings, db: Database, ray: Cluster, lifecycle: Lifecycle):
        self.settings, self.db, self.ray, self.lifecycle = settings, db, ray, lifecycle
        self.strikes: dict[str, int] = {}

    def tick(self) -> None:
        self.follow()
        self.admit_queued()

    def reconcile(self) -> None:
        """Start-up: catch up with Ray, and backfill every job Ray may still run."""
        with self.db.session() as session:
            ids = [job.id for job in store.jobs_in(session, ACTIVE_STATES)]
        for job_id in ids:
            try:
                self.lifecycle.backfill(job_id)
            except Exception as exc:
                self._isolate(job_id, "backfilling its reports", exc, final=False)
        self.follow()

    def follow(self) -> None:
        with self.db.session() as session:
            watched = {job.id for job in self._on_ray(session)}
            watched |= {job.id for job in store.jobs_in(session, ACTIVE_STATES)}
        for job_id in sorted(watched):
            try:
                status = self.ray.status(job_id)
            except RayUnavailable:
                raise
            except Exception:
                logger.exception("polling Ray for job %s failed", job_id)
                continue
            try:
                self.lifecycle.follow(job_id, status)
            except RayUnavailable:
                raise
            except Exception as exc:
                over = status is None or status in terminal_statuses()
                self._isolate(job_id, f"following it (Ray: {status or 'no record'})", exc, over)
            else:
                self.strikes.pop(job_id, None)

    def admit_queued(self) -> None:
        """Decide for every queued job in one short transaction, then start the admitted
        ones, each calling Ray outside any transaction (``Lifecycle.start``)."""
        with self.db.session() as session:
            if not store.jobs_in(session, {JobState.QUEUED}):
                return
        capacity = self.ray.capacity()
        admitted, broken = [], []
        with self.db.session() as session:
            queued = []
            for job in store.jobs_in(session, {JobState.QUEUED}):
                try:
                    queued.append((job, JobSpec.model_validate(job.spec)))
                except ValueError as exc:
                    broken.append((job.id, exc))
            owners = {job.owner for job, _ in queued}
            on_ray = [
                Holding(JobSpec.model_validate(job.spec), job.owner)
                for job in self._on_ray(session)
            ]
            decisions = admit(
                [Queued(job.id, spec, job.owner) for job, spec in queued],
                capacity,
                on_ray,
                self.settings.max_running_jobs,
                worker_quotas(session, self.settings, owners),
                store.last_started(session, owners),
            )
            for (job, _), decision in zip(queued, decisions, strict=True):
                if isinstance(decision, Admit):
                    admitted.append(job.id)
                elif isinstance(decision, Wait):
                    self.lifecycle.wait(job, decision.reason)
                elif isinstance(decision, Reject):  # the cluster shrank since submission
                    self.lifecycle.reject(session, job, decision.reason)
        for job_id, exc in broken:
            self._isolate(job_id, "reading its spec", exc, final=True)
        for job_id in admitted:
            try:
                self.lifecycle.start(job_id)
            except RayUnavailable:
                raise
            except Exception as exc:
                self._isolate(job_id, "handing it to Ray", exc, final=True)

    def _isolate(self, job_id: str, doing: str, exc: Exception, final: bool) -> None:
        """Log the error with the job's id; fail the job when it is ``final`` (retrying
        cannot help) or after ``STRIKES`` ticks in a row."""
        logger.error("job %s: error %s: %r", job_id, doing, exc, exc_info=exc)
        strikes = self.strikes[job_id] = self.strikes.get(job_id, 0) + 1
        if final or strikes >= STRIKES:
            self.strikes.pop(job_id, None)
            reason = f"the service could not go on {doing}: {type(exc).__name__}: {exc}"
            try:
                self.lifecycle.fail(job_id, reason)
            except Exception:
                logger.exception("job %s: failing it failed too", job_id)

    @staticmethod
    def _on_ray(session: Session) -> list[Job]:
        return store.jobs_holding_ray(session, terminal_statuses() | {LOST})
