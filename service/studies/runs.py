"""Studies as the service runs them: created as ordinary queued jobs (one per arm and seed),
summarized from their jobs, cancelled, deleted. Errors are the domain's (``FieldError`` naming
``base.<field>`` or ``arms.<i>.overrides.<field>``, ``NotFound``, ``Conflict``,
``QueueFull``); a base that is not a valid JobSpec in any arm raises pydantic's
``ValidationError`` (the API places it under ``base``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from contract.arms import DEFAULT_ARMS, REFERENCE, Arm, arm_spec, reference_skip_reason
from contract.datasets import METRIC_LABELS, metric_for
from contract.spec import SET_BY_STUDY, JobSpec
from contract.states import FINAL_STATES, JobState
from service.cluster import Cluster
from service.errors import Conflict, FieldError, NotFound
from service.files.housekeeping import remove_job_files
from service.jobs.lifecycle import Lifecycle, why_kept
from service.jobs.submission import check_queue_room, check_submission, cluster_capacity
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.storage.tables import Job, Study
from service.studies.recommendation import Recommendation, recommend
from service.studies.summary import ArmSummary, JobFigures
from service.studies.verdict import verdict
from service.teams.access import check_create, check_write
from service.teams.caller import Caller
from service.teams.quotas import check_model_quota


@dataclass
class StudyState:
    """What a study is now: its row, its jobs by arm with their summaries, the failures'
    reasons, the verdict and the recommendation."""

    study: Study
    state: str
    arms: list[tuple[ArmSummary, list[Job]]]
    reasons: list[str]
    verdict: str | None
    recommendation: Recommendation | None


def _field_of(arm: Arm, index: int, field: str) -> str:
    """Where a spec field's value came from: the arm's overrides or the base."""
    return f"arms.{index}.overrides.{field}" if field in arm.overrides else f"base.{field}"


def _arm_specs(
    base: dict[str, Any], arms: list[Arm], seed: int, defaulted: bool = False
) -> dict[str, JobSpec]:
    """Each arm's spec. A ValidationError when the base fails in every arm (the base's fault),
    else a FieldError naming the first failing arm's override, or the arm itself (the base's
    field when the arms are the defaults, which the request did not list)."""
    for key in SET_BY_STUDY:
        if key in base:
            what = "the arms set norm" if key == "norm" else "use seeds"
            raise FieldError(f"base.{key}", f"a study sets {key} itself: leave it out ({what})")
    if unknown := [key for key in base if key not in JobSpec.model_fields]:
        more = f" ({len(unknown)} unknown fields)" if len(unknown) > 1 else ""
        raise FieldError(f"base.{unknown[0]}", f"Extra inputs are not permitted{more}")
    specs: dict[str, JobSpec] = {}
    first: tuple[int, Arm, ValidationError] | None = None
    for index, arm in enumerate(arms):
        try:
            specs[arm.name] = arm_spec(base, arm, seed)
        except ValidationError as exc:
            first = first or (index, arm, exc)
    if first is None:
        return specs
    index, arm, exc = first
    errors = exc.errors()
    fields = [str(e["loc"][0]) if e["loc"] else "" for e in errors]
    for field, error in zip(fields, errors, strict=True):
        if field in arm.overrides:
            raise FieldError(_field_of(arm, index, field), error["msg"])
    if not specs:
        raise exc
    if defaulted:
        raise FieldError(
            f"base.{fields[0]}", f"with the default arm {arm.name!r}: {errors[0]['msg']}"
        )
    raise FieldError(
        f"arms.{index}", f"{arm.name}: with this arm, base.{fields[0]}: {errors[0]['msg']}"
    )


def create_study(
    db: Database,
    lifecycle: Lifecycle,
    ray: Cluster,
    settings: Settings,
    base: dict[str, Any],
    seeds: list[int],
    arms: list[Arm] | None,
    caller: Caller,
) -> StudyState:
    """Queue one job per arm and seed of ``caller``, after checking each arm as a submission
    (the study's jobs are its owner's: they count against their quotas)."""
    check_create(caller, "create studies")
    defaulted = not arms
    arms = arms or [Arm(name) for name in DEFAULT_ARMS]
    specs = _arm_specs(base, arms, seeds[0], defaulted)
    capacity = cluster_capacity(ray)
    skipped: dict[str, str] = {}
    if REFERENCE in specs:
        reason = reference_skip_reason(arm_spec(base, "sync", seeds[0]))
        if reason is not None:
            skipped[REFERENCE] = reason
            del specs[REFERENCE]
    if not specs:
        raise FieldError("arms", f"no arm can run: {'; '.join(skipped.values())}")
    checked = {}
    for index, arm in enumerate(arms):
        if arm.name not in specs:
            continue
        try:
            checked[arm.name] = check_submission(db, specs[arm.name], capacity, caller)
        except FieldError as exc:
            raise FieldError(_field_of(arm, index, exc.field), str(exc), exc.setting) from None
    task = next(iter(checked.values())).task
    check_model_quota(db, settings, caller.name)
    with lifecycle.queue_lock, db.session() as session:
        every = [spec for spec in specs.values() for _ in seeds]
        check_queue_room(session, settings, every, caller.name)
        study = store.add_study(
            session,
            Study(
                id=store.new_study_id(),
                base=base,
                seeds=seeds,
                arms=list(specs),
                skipped=skipped,
                metric=metric_for(task),
                owner=caller.name,
            ),
        )
        for seed in seeds:
            for arm, spec in specs.items():
                seeded = spec.model_copy(update={"seed": seed})
                steps = checked[arm].steps_per_epoch
                lifecycle.create(session, seeded, steps, (study.id, arm), caller.name)
        return summarize(session, study)


def study_or_404(session: Session, study_id: str, writer: Caller | None = None) -> Study:
    """The study ``study_id``, or ``NotFound`` (404); with a ``writer``, ``Forbidden`` (403)
    unless they may change it."""
    study = store.get_study(session, study_id)
    if study is None:
        raise NotFound("study", study_id)
    if writer is not None:
        check_write(writer, "study", study_id, study.owner)
    return study


def cancel_study(db: Database, lifecycle: Lifecycle, study_id: str, caller: Caller) -> StudyState:
    """Cancel every job of the study that has not finished (idempotent); a study that is over
    stays as it ended."""
    with db.session() as session:
        study = study_or_404(session, study_id, writer=caller)
        open_jobs = [
            j.id for j in store.study_jobs(session, study_id) if j.state not in FINAL_STATES
        ]
        if open_jobs:
            study.cancelled = True
    for job_id in open_jobs:
        lifecycle.cancel(job_id)
    with db.session() as session:
        return summarize(session, study_or_404(session, study_id))


def delete_study(db: Database, settings: Settings, study_id: str, caller: Caller) -> None:
    """Delete a study whose jobs are all over, with the jobs and their files."""
    with db.session() as session:
        study = study_or_404(session, study_id, writer=caller)
        for job in store.study_jobs(session, study_id):
            if reason := why_kept(job):
                raise Conflict(f"{reason} (cancel the study first)")
        job_ids = store.delete_study(session, study)
    for job_id in job_ids:
        remove_job_files(settings, job_id)


def _state(study: Study, jobs: list[Job]) -> str:
    states = [JobState(j.state) for j in jobs]
    if any(s not in FINAL_STATES for s in states):
        return "running"
    if study.cancelled:
        return "cancelled"
    succeeded = sum(s == JobState.SUCCEEDED for s in states)
    if succeeded == len(states):
        return "succeeded"
    return "partially_failed" if succeeded else "failed"


def _figures(
    job: Job, metric: str, cost: store.StepCosts | None, curves: dict[str, dict[int, float]]
) -> JobFigures:
    cost = cost or store.StepCosts()
    return JobFigures(
        job_id=job.id,
        seed=int(job.spec["seed"]),
        state=job.state,
        metric=getattr(job, metric),
        step_time_s=cost.step_time_s,
        sync_time_s=cost.sync_time_s,
        curve=curves.get(job.id, {}),
        allreduce_bytes_per_step=cost.allreduce_bytes_per_step,
    )


def summarize(session: Session, study: Study) -> StudyState:
    """The study as its jobs say now."""
    jobs = store.study_jobs(session, study.id)
    ids = [j.id for j in jobs]
    costs = store.step_costs(session, ids)
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for evaluation in store.evaluations_of(session, ids):
        value = getattr(evaluation, study.metric)
        if value is not None:
            curves[evaluation.job_id][evaluation.epoch] = value
    by_arm: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_arm[job.arm or ""].append(job)
    arms = []
    for arm in study.arms:
        figures = [_figures(j, study.metric, costs.get(j.id), curves) for j in by_arm[arm]]
        arms.append((ArmSummary(arm, figures), by_arm[arm]))
    pending = sum(j.state not in FINAL_STATES for j in jobs)
    label = f"1x{JobSpec.model_validate(jobs[0].spec).global_batch_size}" if jobs else "1-worker"
    reasons = [
        f"{j.arm} seed {j.spec['seed']}: {j.state}: {j.reason or ''}".rstrip(": ")
        for j in jobs
        if j.state in (JobState.FAILED, JobState.CANCELLED)
    ]
    summaries = {summary.name: summary for summary, _ in arms}
    said = verdict(summaries, METRIC_LABELS[study.metric], label, pending)
    advice = recommend(summaries, pending)
    return StudyState(study, _state(study, jobs), arms, reasons, said, advice)
