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
from service.cluster import Cluster
from service.cluster.ray_jobs import RayUnavailable, terminal_statuses
from service.jobs.admission import Admit, Reject, Wait, admit
from service.jobs.lifecycle import LOST, Lifecycle
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.storage.tables import Job

logger = logging.getLogger("service.jobs.scheduler")


class Scheduler:
    """Follows Ray and admits queued jobs; safe to call from one thread."""

    def __init__(self, settings: Settings, db: Database, ray: Cluster, lifecycle: Lifecycle):
        self.settings, self.db, self.ray, self.lifecycle = settings, db, ray, lifecycle

    def tick(self) -> None:
        self.follow()
        self.admit_queued()

    def reconcile(self) -> None:
        """Start-up: catch up with Ray, and backfill every job Ray may still run."""
        with self.db.session() as session:
            ids = [job.id for job in store.jobs_in(session, ACTIVE_STATES)]
        for job_id in ids:
            self.lifecycle.backfill(job_id)
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
            self.lifecycle.follow(job_id, status)

    def admit_queued(self) -> None:
        """Decide for every queued job in one short transaction, then start the admitted
        ones, each calling Ray outside any transaction (``Lifecycle.start``)."""
        with self.db.session() as session:
            if not store.jobs_in(session, {JobState.QUEUED}):
                return
        capacity = self.ray.capacity()
        admitted = []
        with self.db.session() as session:
            queued = store.jobs_in(session, {JobState.QUEUED})
            on_ray = [JobSpec.model_validate(job.spec) for job in self._on_ray(session)]
            decisions = admit(
                [(job.id, JobSpec.model_validate(job.spec)) for job in queued],
                capacity,
                on_ray,
                self.settings.max_running_jobs,
            )
            for job, decision in zip(queued, decisions, strict=True):
                if isinstance(decision, Admit):
                    admitted.append(job.id)
                elif isinstance(decision, Wait):
                    self.lifecycle.wait(job, decision.reason)
                elif isinstance(decision, Reject):  # the cluster shrank since submission
                    self.lifecycle.reject(session, job, decision.reason)
        for job_id in admitted:
            self.lifecycle.start(job_id)

    @staticmethod
    def _on_ray(session: Session) -> list[Job]:
        return store.jobs_holding_ray(session, terminal_statuses() | {LOST})
