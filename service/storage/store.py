"""Everything the service reads and writes in the database (one place, no SQL elsewhere).

A state change and a stored report each append an ``Event`` row in the same transaction, so
the event stream and the tables never disagree.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, joinedload

from contract.protocol import WORKER_COLUMNS, ExceptionEvent, ReportEvent
from contract.spec import JobSpec
from contract.states import ACTIVE_STATES, FINAL_STATES, JobState
from service.storage.tables import (
    BOOTSTRAP_USER,
    CodeBundle,
    Dataset,
    Evaluation,
    Event,
    Job,
    Report,
    Study,
    Transition,
    WorkerStats,
    utcnow,
)


def new_job_id() -> str:
    return f"j-{secrets.token_hex(6)}"


def new_study_id() -> str:
    return f"s-{secrets.token_hex(6)}"


def create_job(
    session: Session,
    spec: JobSpec,
    steps_per_epoch: int,
    state: JobState,
    study: tuple[str, str] | None = None,
    owner: str = BOOTSTRAP_USER,
) -> Job:
    """Insert a job of ``owner`` in ``state`` (with its first transition); ``study``: (study
    id, arm)."""
    job = Job(
        id=new_job_id(),
        state=state,
        reason="waiting for the scheduler",
        spec=spec.model_dump(mode="json"),
        steps_per_epoch=steps_per_epoch,
        study_id=study[0] if study else None,
        arm=study[1] if study else None,
        owner=owner,
    )
    session.add(job)
    session.flush()
    _record(session, job, state, job.reason)
    return job


def _record(session: Session, job: Job, state: str, reason: str | None) -> None:
    at = utcnow()
    job.transitions.append(Transition(job_id=job.id, state=state, reason=reason, at=at))
    session.add(
        Event(
            job_id=job.id,
            type="state",
            data={"state": state, "reason": reason, "at": at.isoformat()},
        )
    )


def transition(session: Session, job: Job, state: JobState, reason: str | None = None) -> None:
    """Write ``job``'s new ``state`` with its transition and event (``service.jobs.lifecycle``
    decides whether the state machine allows it)."""
    job.state, job.reason = state, reason
    now = utcnow()
    if state in ACTIVE_STATES and job.started_at is None:
        job.started_at = now
    if state in FINAL_STATES:
        job.finished_at = now
    _record(session, job, state, reason)


def count_transitions(job: Job, reason_prefix: str) -> int:
    """How many of ``job``'s transitions have a reason starting with ``reason_prefix``."""
    return sum(1 for t in job.transitions if (t.reason or "").startswith(reason_prefix))


def set_reason(job: Job, reason: str) -> None:
    """Update why a job waits (not a transition: no event)."""
    if job.reason != reason:
        job.reason = reason


def count_events(session: Session, job_id: str, kind: str) -> int:
    """How many events of ``kind`` the job has."""
    query = select(func.count()).where(Event.job_id == job_id, Event.type == kind)
    return session.scalar(query) or 0


def add_exception(session: Session, job: Job, event: ExceptionEvent) -> None:
    """Store the worker failures of a job (an event only)."""
    session.add(Event(job_id=job.id, type="exception", data={"errors": event.errors}))


def add_report(session: Session, job: Job, event: ReportEvent) -> bool:
    """Store a report, once per (kind, epoch, step); False if it is a duplicate."""
    duplicate = session.scalar(
        select(Report.id).where(
            Report.job_id == job.id,
            Report.kind == event.kind,
            Report.epoch == event.epoch,
            Report.step == event.step,
        )
    )
    if duplicate is not None:
        return False
    time = event.time or utcnow().timestamp()
    report = Report(job_id=job.id, kind=event.kind, epoch=event.epoch, step=event.step, time=time)
    workers = [w.model_dump(mode="json") for w in event.workers]
    for worker, data in zip(event.workers, workers, strict=True):
        columns = {k: _number(getattr(worker, k)) for k in WORKER_COLUMNS}
        report.workers.append(WorkerStats(rank=worker.rank, data=data, **columns))
    session.add(report)
    first = event.workers[0] if event.workers else None
    if event.kind == "epoch" and first is not None:
        metrics = {
            "test_accuracy": _number(first.test_accuracy),
            "test_loss": _number(first.test_loss),
            "test_miou": _number(first.test_miou),
        }
        session.add(Evaluation(job_id=job.id, epoch=event.epoch, step=event.step, **metrics))
        if event.epoch >= job.epoch:
            for name, value in metrics.items():
                setattr(job, name, value)
    if (event.epoch, event.step) >= (job.epoch, job.step):
        job.epoch, job.step = event.epoch, event.step
    session.add(
        Event(
            job_id=job.id,
            type="report",
            data={
                "kind": event.kind,
                "epoch": event.epoch,
                "step": event.step,
                "time": time,
                "workers": workers,
            },
        )
    )
    return True


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


_WITH_TRANSITIONS = (joinedload(Job.transitions),)
"""Built once: a loader option costs more to build than the query it adds to."""


def get_job(session: Session, job_id: str, with_transitions: bool = False) -> Job | None:
    """The job (``with_transitions``: its transitions loaded in the same query)."""
    return session.get(Job, job_id, options=_WITH_TRANSITIONS if with_transitions else ())


def list_jobs(
    session: Session, state: JobState | None, limit: int, offset: int, owner: str | None = None
) -> tuple[list[Job], int]:
    """Newest first; only those in ``state`` and of ``owner`` when given."""
    query = select(Job)
    count = select(func.count()).select_from(Job)
    if state is not None:
        query, count = query.where(Job.state == state), count.where(Job.state == state)
    if owner is not None:
        query, count = query.where(Job.owner == owner), count.where(Job.owner == owner)
    jobs = session.scalars(
        query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(jobs), int(session.scalar(count) or 0)


def last_started(session: Session, owners: Collection[str]) -> dict[str, float]:
    """When each owner's newest job started (a timestamp), for those who ever started one."""
    query = (
        select(Job.owner, func.max(Job.started_at))
        .where(Job.owner.in_(owners), Job.started_at.is_not(None))
        .group_by(Job.owner)
    )
    return {owner: _aware(at).timestamp() for owner, at in session.execute(query) if at}


def _aware(at: datetime) -> datetime:
    """A timestamp read through an aggregate (SQLite returns it naive, or as text): UTC."""
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def jobs_in(session: Session, states: Collection[JobState]) -> list[Job]:
    """Jobs in ``states``, oldest first (FIFO)."""
    query = select(Job).where(Job.state.in_(states)).order_by(Job.created_at, Job.id)
    return list(session.scalars(query).all())


def jobs_holding_ray(session: Session, over: Collection[str]) -> list[Job]:
    """Jobs submitted to Ray whose Ray Job may still hold resources: its last known status is
    not one of ``over`` (Ray's terminal statuses, and lost)."""
    query = select(Job).where(Job.ray_status.is_not(None), Job.ray_status.not_in(list(over)))
    return list(session.scalars(query.order_by(Job.created_at, Job.id)).all())


def count_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: int(n) for state, n in rows}


def latest_report(session: Session, job_id: str) -> Report | None:
    query = select(Report).where(Report.job_id == job_id)
    return session.scalars(query.order_by(Report.step.desc(), Report.id.desc()).limit(1)).first()


def report_keys(session: Session, job_id: str) -> set[tuple[str, int, int]]:
    """``(kind, epoch, step)`` of every stored report of the job (what makes one unique)."""
    query = select(Report.kind, Report.epoch, Report.step).where(Report.job_id == job_id)
    return {(kind, epoch, step) for kind, epoch, step in session.execute(query)}


def reports(session: Session, job_id: str) -> list[Report]:
    query = select(Report).where(Report.job_id == job_id)
    return list(session.scalars(query.order_by(Report.step, Report.kind.desc())).all())


def evaluations(session: Session, job_id: str) -> list[Evaluation]:
    query = select(Evaluation).where(Evaluation.job_id == job_id)
    return list(session.scalars(query.order_by(Evaluation.epoch)).all())


def events_after(session: Session, job_id: str, after: int, limit: int = 500) -> list[Event]:
    query = select(Event).where(Event.job_id == job_id, Event.id > after)
    return list(session.scalars(query.order_by(Event.id).limit(limit)).all())


def add_study(session: Session, study: Study) -> Study:
    session.add(study)
    session.flush()
    return study


def get_study(session: Session, study_id: str) -> Study | None:
    return session.get(Study, study_id)


def list_studies(session: Session, limit: int = 100, owner: str | None = None) -> list[Study]:
    """Newest first; only ``owner``'s when given."""
    query = select(Study).order_by(Study.created_at.desc(), Study.id.desc()).limit(limit)
    if owner is not None:
        query = query.where(Study.owner == owner)
    return list(session.scalars(query).all())


def study_jobs(session: Session, study_id: str) -> list[Job]:
    """The study's jobs in submission order."""
    query = select(Job).where(Job.study_id == study_id).order_by(Job.created_at, Job.id)
    return list(session.scalars(query).all())


@dataclass(frozen=True)
class StepCosts:
    """What a job's optimizer steps cost, averaged over its ranks' epoch reports."""

    step_time_s: float | None = None
    sync_time_s: float | None = None
    allreduce_bytes_per_step: float | None = None


def step_costs(session: Session, job_ids: Collection[str]) -> dict[str, StepCosts]:
    """Per job: its mean step time, time inside syncbn's collectives and BatchNorm bytes."""
    query = (
        select(
            Report.job_id,
            func.avg(WorkerStats.step_time_s),
            func.avg(WorkerStats.sync_time_s),
            func.avg(WorkerStats.allreduce_bytes_per_step),
        )
        .join(WorkerStats, WorkerStats.report_id == Report.id)
        .where(Report.job_id.in_(list(job_ids)), Report.kind == "epoch")
        .group_by(Report.job_id)
    )
    return {job_id: StepCosts(*costs) for job_id, *costs in session.execute(query)}


def evaluations_of(session: Session, job_ids: Collection[str]) -> list[Evaluation]:
    query = select(Evaluation).where(Evaluation.job_id.in_(list(job_ids)))
    return list(session.scalars(query.order_by(Evaluation.job_id, Evaluation.epoch)).all())


def delete_row(session: Session, row: Dataset | CodeBundle) -> None:
    session.delete(row)


def add_row(session: Session, row: Dataset | CodeBundle) -> None:
    """Insert an upload's row (a dataset, a code bundle)."""
    session.add(row)
    session.flush()


def get_dataset(session: Session, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.created_at.desc())).all())


def jobs_using(session: Session, key: str, value: str) -> list[Job]:
    """Jobs not over whose spec's ``key`` (``dataset``, ``code``) is ``value``."""
    live = jobs_in(session, {JobState.QUEUED, *ACTIVE_STATES})
    return [job for job in live if job.spec.get(key) == value]


def delete_jobs(session: Session, job_ids: Collection[str]) -> None:
    """Remove jobs with everything recorded of them (reports, statistics, events...)."""
    ids = list(job_ids)
    reports = select(Report.id).where(Report.job_id.in_(ids))
    session.execute(delete(WorkerStats).where(WorkerStats.report_id.in_(reports)))
    for table in (Report, Evaluation, Event, Transition):
        session.execute(delete(table).where(table.job_id.in_(ids)))
    session.execute(delete(Job).where(Job.id.in_(ids)))


def delete_study(session: Session, study: Study) -> list[str]:
    """Remove a study and its jobs; the jobs' ids."""
    ids = [job.id for job in study_jobs(session, study.id)]
    delete_jobs(session, ids)
    session.delete(study)
    return ids


def get_code_bundle(session: Session, bundle_id: str) -> CodeBundle | None:
    return session.get(CodeBundle, bundle_id)


def list_code_bundles(session: Session) -> list[CodeBundle]:
    return list(session.scalars(select(CodeBundle).order_by(CodeBundle.created_at.desc())).all())
