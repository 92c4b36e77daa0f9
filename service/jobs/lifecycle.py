"""The job lifecycle, in one place: every change of a job's state happens here.

``create`` queues a job, ``start`` hands it to Ray (``pending``), ``record`` stores a worker
report (the first one makes it ``running``), ``follow`` moves it as Ray's status says
(resubmitting a job that a restarted cluster lost), ``reject`` and ``cancel`` end it. Each
state change goes through ``_move``, the only caller of ``store.transition``, and is checked
against the state machine of ``contract.states``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from contract.protocol import (
    INGEST_TOKEN_ENV,
    INGEST_URL_ENV,
    MAX_EXCEPTIONS_PER_JOB,
    STATS_FILE,
    ExceptionEvent,
    JobOutcome,
    ReportEvent,
    read_events,
    read_outcome,
)
from contract.spec import JobSpec
from contract.states import JobState
from service.cluster import Cluster, entrypoint, is_terminal
from service.errors import ClusterUnavailable, NotFound
from service.files.code_bundles import runtime_env
from service.files.trained_models import has_training_state
from service.jobs import logs
from service.jobs.ingest_tokens import new_ingest_token
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.storage.tables import BOOTSTRAP_USER, Job
from service.teams.access import check_write
from service.teams.caller import Caller

logger = logging.getLogger("service.jobs.lifecycle")
SUBMITTED = "submitted to Ray"
RESUBMITTED = "resubmitted: the Ray cluster has no record of this job (it was restarted)"
MAX_RESUBMISSIONS = 3
"""How often a job the Ray cluster lost is resubmitted before it fails."""
LOST = "LOST"
"""``Job.ray_status`` of a job Ray has no record of."""


class ReportRefused(ValueError):
    """A report the job cannot have made (``field`` names what is wrong), or one for a job
    that is over (``closed``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    @property
    def closed(self) -> bool:
        return self.field is None


class Lifecycle:
    """Moves jobs through their states; ``on_report(source)`` counts each stored report."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        ray: Cluster,
        on_report: Callable[[str], None] | None = None,
    ) -> None:
        self.settings, self.db, self.ray = settings, db, ray
        self.on_report = on_report or (lambda source: None)
        self.queue_lock = threading.Lock()
        """Held from counting the queue to committing new jobs, so that concurrent submits
        cannot overfill it (``SYNCBN_MAX_QUEUED_JOBS``; one service process admits)."""

    # -- from the API ----------------------------------------------------------------------
    def create(
        self,
        session: Session,
        spec: JobSpec,
        steps_per_epoch: int,
        study: tuple[str, str] | None = None,
        owner: str = BOOTSTRAP_USER,
    ) -> Job:
        """A new ``queued`` job of ``owner`` (``study``: the study id and arm it belongs to)."""
        return store.create_job(session, spec, steps_per_epoch, JobState.QUEUED, study, owner)

    def cancel(self, job_id: str, caller: Caller | None = None) -> Job:
        """Cancel (idempotent): a queued job never starts, a submitted one's Ray Job stops.
        ``NotFound``; ``Forbidden`` unless ``caller`` may (None: the service itself);
        ``ClusterUnavailable`` when Ray cannot stop it."""
        with self.db.session() as session:
            job = job_or_404(session, job_id, writer=caller)
            if JobState(job.state).is_final:
                return job
            submitted = job.ray_status is not None
            job.cancel_requested = True
        if submitted:
            try:
                self.ray.stop(job_id)
            except Exception as exc:
                raise ClusterUnavailable(f"could not stop job {job_id} on Ray: {exc}") from exc
        with self.db.session() as session:
            job = job_or_404(session, job_id)
            self._move(session, job, JobState.CANCELLED, "cancelled by user")
            logger.info("job cancelled", extra={"job_id": job_id})
            return job

    def record(self, job_id: str, event: ReportEvent | ExceptionEvent, source: str) -> bool:
        """Store a report or worker failure (a report once); False for a duplicate.

        ``ReportRefused`` for a job that is over (its result is final) or a report beyond its
        spec (epochs, steps, workers)."""
        with self.db.session() as session:
            job = job_or_404(session, job_id)
            state = JobState(job.state)
            if state.is_final:
                raise ReportRefused(f"job {job_id} is {state.value}: its reports are closed")
            if isinstance(event, ExceptionEvent):
                if store.count_events(session, job_id, "exception") >= MAX_EXCEPTIONS_PER_JOB:
                    raise ReportRefused(
                        f"job {job_id} has reported {MAX_EXCEPTIONS_PER_JOB} worker failures, "
                        "the most kept of one job",
                        "errors",
                    )
                store.add_exception(session, job, event)
                return True
            check_report(job, event)
            stored = store.add_report(session, job, event)
            if stored and job.state == JobState.PENDING:
                self._move(session, job, JobState.RUNNING)
        if stored:
            self.on_report(source)
        return stored

    # -- from the scheduler ----------------------------------------------------------------
    def start(self, job_id: str, resume: bool = False) -> None:
        """Hand the job to Ray as its own Ray Job and mark it pending; ``resume`` continues
        its run from the last checkpoint in the run storage.

        Ray is called outside any database transaction (a slow submit, which uploads a code
        bundle, never holds the database's write lock). A job cancelled meanwhile has its
        new Ray Job stopped at once."""
        token, digest = new_ingest_token()
        with self.db.session() as session:
            job = job_or_404(session, job_id)
            if JobState(job.state).is_final or job.cancel_requested:
                return
            spec = JobSpec.model_validate(job.spec)
            ray_env = self.runtime_env(session, spec)
            job.ingest_token_sha256 = digest  # before Ray runs it: its first report may be fast
        settings = self.settings
        command = entrypoint(
            settings.worker_python,
            spec.model_dump_json(),
            job_id,
            str(settings.runs_dir),
            str(settings.datasets_dir),
            resume=resume,
        )
        env = {
            INGEST_URL_ENV: f"{settings.ingest_base_url}/v1/internal/jobs/{job_id}/events",
            INGEST_TOKEN_ENV: token,
            # the limits the upload was checked against, so the job reads what was accepted
            "SYNCBN_MAX_DATASET_BYTES": str(settings.max_upload_bytes),
            "SYNCBN_MAX_DATASET_MEMORY": str(settings.max_dataset_memory),
        }
        self.ray.submit(job_id, command, env, ray_env)
        reason = self._resumed(job_id) if resume else SUBMITTED  # reads files: no transaction
        with self.db.session() as session:
            job = job_or_404(session, job_id)
            cancelled = JobState(job.state).is_final or job.cancel_requested
            if not cancelled:
                job.ray_status = "PENDING"
                self._move(session, job, JobState.PENDING, reason)
        if cancelled:
            self.ray.stop(job_id)
            return
        logger.info("submitted job %s to Ray%s", job_id, " (resume)" if resume else "")

    def _resumed(self, job_id: str) -> str:
        """A resubmitted job's reason: whether it has a checkpoint to continue from."""
        if has_training_state(self.settings.runs_dir, job_id):
            return f"{RESUBMITTED}; resuming from the last checkpoint"
        return f"{RESUBMITTED}; it has no checkpoint to resume from: training starts again"

    def runtime_env(self, session: Session, spec: JobSpec) -> dict[str, Any] | None:
        """A code bundle's ``working_dir`` (and ``pip``) for the job's Ray Jobs (training and
        prediction); None for a built-in model."""
        if spec.code is None:
            return None
        bundle = store.get_code_bundle(session, spec.code)
        requirements = list(bundle.requirements) if bundle is not None else []
        return runtime_env(self.settings.code_dir / spec.code, requirements)

    def wait(self, job: Job, reason: str) -> None:
        """Say why a queued job waits (not a state change)."""
        store.set_reason(job, reason)

    def reject(self, session: Session, job: Job, reason: str) -> None:
        """Fail a queued job that can never run."""
        self._move(session, job, JobState.FAILED, reason)

    def follow(self, job_id: str, status: str | None) -> None:
        """Move the job as Ray's ``status`` of its Ray Job says (None: Ray has no record).

        A job that ended has its reports backfilled, its log kept and its outcome read from
        the file its driver wrote (``contract.protocol.JobOutcome``): untrusted, so a bad one
        only costs the job its wall time or its error message."""
        finished = status is None or is_terminal(status)
        if finished:
            self.backfill(job_id)
        ended_on_ray = finished and status is not None
        if ended_on_ray:
            logs.keep(self.settings, self.ray, job_id)
        outcome, refused = self._outcome(job_id) if ended_on_ray else (None, None)
        failed = finished and status not in (None, "SUCCEEDED", "STOPPED")
        message = self.ray.info_message(job_id) if failed else None
        resubmit = False
        with self.db.session() as session:
            job = store.get_job(session, job_id)
            if job is None:
                return
            job.ray_status = status if status is not None else LOST
            if status == "PENDING":
                return
            if status == "RUNNING":
                self._move(session, job, JobState.RUNNING)
                return
            if not JobState(job.state).on_ray:
                return  # e.g. cancelled: only the Ray status needed updating
            if status is None:
                resubmit = store.count_transitions(job, RESUBMITTED) < MAX_RESUBMISSIONS
                if not resubmit:
                    self._move(session, job, JobState.FAILED, "Ray has no record of this job")
            elif status == "SUCCEEDED":
                if outcome is not None:
                    job.wall_time_s = outcome.wall_time_s
                self._move(session, job, JobState.SUCCEEDED)
            elif status == "STOPPED":
                reason = "cancelled by user" if job.cancel_requested else "stopped in Ray"
                self._move(session, job, JobState.CANCELLED, reason)
            else:
                reason = (outcome.error if outcome else None) or message or refused
                self._move(session, job, JobState.FAILED, (reason or "failed in Ray")[-2000:])
        if resubmit:
            self.start(job_id, resume=True)

    def _outcome(self, job_id: str) -> tuple[JobOutcome | None, str | None]:
        """The outcome the job's driver wrote, or why it was refused."""
        try:
            return read_outcome(Path(self.settings.runs_dir) / job_id), None
        except ValueError as exc:
            logger.warning("job %s: its outcome is refused: %s", job_id, exc)
            return None, f"its outcome was refused: {exc}"

    def fail(self, job_id: str, reason: str) -> None:
        """End a job the service cannot follow or start (its own output is broken): failed
        with ``reason``, and its Ray Job stopped (best effort)."""
        with self.db.session() as session:
            job = store.get_job(session, job_id)
            if job is None:
                return
            self._move(session, job, JobState.FAILED, reason[-2000:])
            # no longer followed: its output is what broke the service's reading of it
            submitted = job.ray_status not in (None, LOST) and not is_terminal(job.ray_status)
            if submitted:
                job.ray_status = "STOPPED"
        if submitted:
            try:
                self.ray.stop(job_id)
            except Exception:
                logger.exception("job %s: stopping its Ray Job failed", job_id)

    def backfill(self, job_id: str) -> int:
        """Store the reports of ``<runs>/<job>/stats.jsonl`` the database lacks; how many."""
        path = Path(self.settings.runs_dir) / job_id / STATS_FILE
        raw = [e for e in read_events(path) if e.get("type") == "report"]
        if not raw:
            return 0
        added = 0
        with self.db.session() as session:
            job = store.get_job(session, job_id)
            if job is None:
                return 0
            stored = store.report_keys(session, job_id)
            for line in raw:
                if (line.get("kind"), line.get("epoch"), line.get("step")) in stored:
                    continue
                try:
                    event = ReportEvent.model_validate(line)
                except ValueError:
                    logger.warning("skipping a malformed line in %s", path)
                    continue
                if store.add_report(session, job, event):
                    stored.add(event.key)
                    added += 1
        for _ in range(added):
            self.on_report("backfill")
        if added:
            logger.info("backfilled %d reports of job %s from %s", added, job_id, path)
        return added

    # -- the one place a state changes -----------------------------------------------------
    def _move(self, session: Session, job: Job, state: JobState, reason: str | None = None) -> bool:
        if not JobState(job.state).can_move_to(state):
            return False
        store.transition(session, job, state, reason)
        return True


def check_report(job: Job, event: ReportEvent) -> None:
    """``ReportRefused`` naming the field when ``event`` lies outside what ``job`` can report:
    an epoch past its spec's, a step past its last, more workers than it has."""
    spec = JobSpec.model_validate(job.spec)
    steps = spec.epochs * job.steps_per_epoch
    if event.epoch > spec.epochs:
        raise ReportRefused(f"epoch {event.epoch} is past the job's {spec.epochs} epochs", "epoch")
    if event.step > steps:
        raise ReportRefused(f"step {event.step} is past the job's {steps} steps", "step")
    if len(event.workers) > spec.workers:
        raise ReportRefused(
            f"{len(event.workers)} worker reports for a job of {spec.workers} workers", "workers"
        )
    for i, worker in enumerate(event.workers):
        if worker.rank >= spec.workers or worker.epoch > spec.epochs or worker.step > steps:
            raise ReportRefused(
                f"rank {worker.rank} at epoch {worker.epoch}, step {worker.step} is outside the "
                f"job ({spec.workers} workers, {spec.epochs} epochs, {steps} steps)",
                f"workers.{i}",
            )


def job_or_404(
    session: Session, job_id: str, with_transitions: bool = False, writer: Caller | None = None
) -> Job:
    """The job ``job_id``, or ``NotFound`` (404): the one lookup of a job by its id; with a
    ``writer``, ``Forbidden`` (403) unless they may change it."""
    job = store.get_job(session, job_id, with_transitions)
    if job is None:
        raise NotFound("job", job_id)
    if writer is not None:
        check_write(writer, "job", job_id, job.owner)
    return job


def why_kept(job: Job) -> str | None:
    """Why ``job`` may not be deleted yet (None: it may): it is not over, or its Ray Job is
    still stopping (it could still write to the run folder)."""
    state = JobState(job.state)
    if not state.is_final:
        return f"job {job.id} is {state.value}: cancel it first"
    if job.ray_status is not None and job.ray_status != LOST and not is_terminal(job.ray_status):
        return f"job {job.id} is still stopping on Ray ({job.ray_status}): retry in a moment"
    return None
