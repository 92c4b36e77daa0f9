"""Queue, submission and reconciliation: the service's view of its jobs follows Ray's.

Every ``tick`` (one per ``poll_interval_s``, in a worker thread):

1. every job whose Ray Job may still hold resources is polled; Ray's status moves the job
   (PENDING -> pending, RUNNING -> running, SUCCEEDED/FAILED/STOPPED -> final). When a job
   ends, its ``stats.jsonl`` is read into the database (the backfill for reports the ingest
   endpoint missed) and the entry point's ``--json`` line gives the error message;
2. queued jobs are started in FIFO order while the cluster has room: the room is the total of
   the alive nodes minus what our Ray Jobs that are not over ask for. The first job that does
   not fit stops the queue (strict FIFO: no overtaking), with the reason kept on the job.

``reconcile()`` at start-up runs the same poll plus a backfill of every job Ray still runs, so
a restarted service loses nothing (Ray Jobs outlive the service). ``check_feasible`` rejects,
at submission, a job that no cluster state could ever run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from service import store
from service.auth import ingest_token
from service.db import Database
from service.models import Job
from service.ray_jobs import (
    TERMINAL_RAY_STATUSES,
    Capacity,
    RayJobs,
    RayUnavailable,
    entrypoint,
    parse_outcome,
)
from service.schemas import IngestEvent
from service.settings import Settings
from workers.reporting import INGEST_TOKEN_ENV, INGEST_URL_ENV, STATS_FILE, read_events
from workers.spec import JobSpec

logger = logging.getLogger("service.scheduler")
EPS = 1e-9
MAX_RESUBMISSIONS = 3
"""How often a job the Ray cluster lost (a restarted head) is resubmitted before it fails."""
RESUBMITTED = "resubmitted: the Ray cluster has no record of this job (it was restarted)"


class InfeasibleError(ValueError):
    """The job can never run on this cluster; ``field`` names the JobSpec field to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_feasible(spec: JobSpec, capacity: Capacity) -> None:
    """Raise ``InfeasibleError`` if no state of ``capacity`` could ever run ``spec``."""
    for resource, amount in spec.resources_per_worker().items():
        field = "use_gpu" if resource == "GPU" else "workers"
        need, have = amount * spec.workers, capacity.total.get(resource, 0.0)
        if need > have + EPS:
            raise InfeasibleError(
                field,
                f"{spec.workers} workers x {amount:g} {resource} = {need:g} {resource}, but the "
                f"Ray cluster has {have:g} {resource} in total ({capacity.nodes} nodes)"
                + _how_to_fit(spec, resource, amount, have),
            )
        largest = capacity.largest_node.get(resource, 0.0)
        if amount > largest + EPS:
            raise InfeasibleError(
                "cpus_per_worker" if resource == "CPU" else field,
                f"one worker asks for {amount:g} {resource}, but no Ray node has more than "
                f"{largest:g} {resource}",
            )


def _how_to_fit(spec: JobSpec, resource: str, amount: float, have: float) -> str:
    """A hint for a job that asks for more ``resource`` than the cluster has."""
    fits = int(have // amount + EPS)
    hints = [f"use at most {fits} workers"] if fits >= 1 else []
    if resource == "CPU":
        share = math.floor(100 * have / spec.workers) / 100  # two decimals, rounded down
        if share > 0:
            hints.append(f"set cpus_per_worker to {share:g} to run {spec.workers} workers")
    return f": {' or '.join(hints)}" if hints else ""


def _demand(spec: JobSpec) -> dict[str, float]:
    """Resources the whole job asks for."""
    return {k: v * spec.workers for k, v in spec.resources_per_worker().items()}


def _add(used: dict[str, float], demand: dict[str, float]) -> None:
    for resource, amount in demand.items():
        used[resource] = used.get(resource, 0.0) + amount


class Scheduler:
    """Moves jobs through their states by talking to Ray; safe to call from one thread."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        ray: RayJobs,
        on_report: Callable[[str], None] | None = None,
    ) -> None:
        self.settings, self.db, self.ray = settings, db, ray
        self.on_report = on_report or (lambda source: None)

    # -- the loop body -------------------------------------------------------------------
    def tick(self) -> None:
        self.poll_ray()
        self.start_queued()

    def reconcile(self) -> None:
        """Start-up: catch up with Ray, and backfill every job Ray may still run."""
        with self.db.session() as session:
            ids = [job.id for job in store.jobs_in(session, store.ACTIVE_STATES)]
        for job_id in ids:
            self.backfill(job_id)
        self.poll_ray()

    def poll_ray(self) -> None:
        with self.db.session() as session:
            watched = {job.id for job in store.jobs_holding_ray(session)}
            watched |= {job.id for job in store.jobs_in(session, store.ACTIVE_STATES)}
        for job_id in sorted(watched):
            try:
                status = self.ray.status(job_id)
            except RayUnavailable:
                raise
            except Exception:
                logger.exception("polling Ray for job %s failed", job_id)
                continue
            self._follow(job_id, status)

    def _follow(self, job_id: str, status: str | None) -> None:
        finished = status in TERMINAL_RAY_STATUSES or status is None
        if finished:
            self.backfill(job_id)
        logs = self.ray.logs(job_id) if finished and status is not None else ""
        with self.db.session() as session:
            job = store.get_job(session, job_id)
            if job is None:
                return
            job.ray_status = status if status is not None else "LOST"
            if status == "PENDING":
                return
            if status == "RUNNING":
                store.transition(session, job, "running")
                return
            if job.state not in store.ACTIVE_STATES:
                return  # e.g. cancelled: only the Ray status needed updating
            if status is None:
                if store.count_transitions(job, RESUBMITTED) < MAX_RESUBMISSIONS:
                    spec = JobSpec.model_validate(job.spec)
                    self._submit(session, job, spec, reason=RESUBMITTED, resume=True)
                    return
                store.transition(session, job, "failed", "Ray has no record of this job")
            elif status == "SUCCEEDED":
                outcome = parse_outcome(logs)
                if outcome and outcome.result:
                    job.wall_time_s = outcome.result.get("wall_time_s")
                store.transition(session, job, "succeeded")
            elif status == "STOPPED":
                reason = "cancelled by user" if job.cancel_requested else "stopped in Ray"
                store.transition(session, job, "cancelled", reason)
            else:
                outcome = parse_outcome(logs)
                reason = (outcome.error if outcome else None) or self.ray.info_message(job_id)
                store.transition(session, job, "failed", (reason or "failed in Ray")[-2000:])

    def backfill(self, job_id: str) -> int:
        """Store the reports of ``<runs>/<job>/stats.jsonl`` the database lacks; how many."""
        path = Path(self.settings.runs_dir) / job_id / STATS_FILE
        added = 0
        events = [e for e in read_events(path) if e.get("type") == "report"]
        if not events:
            return 0
        with self.db.session() as session:
            job = store.get_job(session, job_id)
            if job is None:
                return 0
            stored = store.report_keys(session, job_id)
            for raw in events:
                if (raw.get("kind"), raw.get("epoch"), raw.get("step")) in stored:
                    continue
                try:
                    if store.add_event(session, job, IngestEvent.model_validate(raw)):
                        added += 1
                except ValueError:
                    logger.warning("skipping a malformed line in %s", path)
        for _ in range(added):
            self.on_report("backfill")
        if added:
            logger.info("backfilled %d reports of job %s from %s", added, job_id, path)
        return added

    def start_queued(self) -> None:
        with self.db.session() as session:
            queued = store.jobs_in(session, frozenset({"queued"}))
            if not queued:
                return
            holding = store.jobs_holding_ray(session)
            limit = self.settings.max_running_jobs
            capacity = self.ray.capacity()
            used: dict[str, float] = {}
            for job in holding:
                _add(used, _demand(JobSpec.model_validate(job.spec)))
            running = len(holding)
            blocked_by: str | None = None
            for position, job in enumerate(queued):
                if blocked_by is not None:
                    store.set_queue_reason(
                        session, job, f"waiting behind {position} earlier job(s): {blocked_by}"
                    )
                    continue
                if limit is not None and running >= limit:
                    blocked_by = f"the service runs at most {limit} job(s) at once"
                    store.set_queue_reason(session, job, f"waiting: {blocked_by}")
                    continue
                spec = JobSpec.model_validate(job.spec)
                try:
                    check_feasible(spec, capacity)
                except InfeasibleError as exc:  # the cluster shrank since submission
                    store.transition(session, job, "failed", f"infeasible: {exc}")
                    continue
                demand = _demand(spec)
                total = capacity.total
                free = {r: total.get(r, 0.0) - used.get(r, 0.0) for r in demand}
                short = {r: a for r, a in demand.items() if a > free[r] + EPS}
                if short:
                    blocked_by = ", ".join(
                        f"needs {a:g} {r}, {free[r]:g} of {total.get(r, 0.0):g} free"
                        for r, a in short.items()
                    )
                    store.set_queue_reason(session, job, f"waiting for resources: {blocked_by}")
                    blocked_by = f"{job.id} {blocked_by}"
                    continue
                self._submit(session, job, spec)
                running += 1
                _add(used, demand)

    def _submit(
        self,
        session: Session,
        job: Job,
        spec: JobSpec,
        reason: str = "submitted to Ray",
        resume: bool = False,
    ) -> None:
        """Hand ``job`` to Ray (its own Ray Job) and mark it pending; ``resume`` continues its
        run from the last checkpoint in the run storage."""
        settings = self.settings
        command = entrypoint(
            settings.worker_python,
            spec.model_dump_json(),
            job.id,
            str(settings.runs_dir),
            str(settings.datasets_dir),
            resume=resume,
        )
        env = {
            INGEST_URL_ENV: f"{settings.ingest_base_url}/v1/internal/jobs/{job.id}/events",
            INGEST_TOKEN_ENV: ingest_token(settings.secret(), job.id),
        }
        self.ray.submit(job.id, command, env)
        job.ray_status = "PENDING"
        store.transition(
            session,
            job,
            "pending",
            f"{reason}; resuming from the last checkpoint" if resume else reason,
        )
        logger.info("submitted job %s to Ray%s", job.id, " (resume)" if resume else "")
