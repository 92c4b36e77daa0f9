"""``/v1/studies``: does synchronizing BatchNorm help this workload? Arms x seeds as jobs."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated

from fastapi import HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session

from contract.spec import JobSpec
from contract.states import FINAL_STATES, JobState
from service.api.deps import ServicesDep, api_router, field_error, not_found
from service.api.schemas import ArmOut, ErrorOut, StudyIn, StudyJobOut, StudyList, StudyOut
from service.files.housekeeping import remove_job_files
from service.jobs.lifecycle import why_kept
from service.jobs.submission import check_queue_room, check_submission, cluster_capacity
from service.storage import store
from service.storage.tables import Job, Study
from service.studies.arms import (
    ARMS,
    SET_BY_STUDY,
    ArmSummary,
    JobFigures,
    arm_spec,
    reference_skip_reason,
    verdict,
)

router = api_router("/v1/studies", "studies")
NOT_FOUND = {404: {"model": ErrorOut, "description": "no such study"}}


def _in_base(exc: RequestValidationError | ValidationError) -> RequestValidationError:
    """The errors of a spec made from ``base``, located under ``body.base``."""
    errors = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if part != "body")
        errors.append({**error, "loc": ("body", "base", *loc)})
    return RequestValidationError(errors)


def _arm_specs(body: StudyIn) -> dict[str, JobSpec]:
    """Each arm's spec for the first seed (422 under ``base`` when the base is invalid)."""
    for key in SET_BY_STUDY:
        if key in body.base:
            what = "the arms set norm" if key == "norm" else "use seeds"
            raise _in_base(field_error(key, f"a study sets {key} itself: leave it out ({what})"))
    specs = {}
    for arm in body.arms or ARMS:
        try:
            specs[arm] = arm_spec(body.base, arm, body.seeds[0])
        except ValidationError as exc:
            raise _in_base(exc) from None
    return specs


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyOut,
    responses={
        422: {"description": "invalid base, seeds or arms (the field is named)"},
        429: {"model": ErrorOut, "description": "the queue has no room for the study's jobs"},
    },
)
def create_study(body: StudyIn, services: ServicesDep) -> StudyOut:
    """Queue one job per arm and seed: local vs sync BatchNorm (and the 1-worker reference)."""
    specs = _arm_specs(body)
    capacity = cluster_capacity(services)
    skipped: dict[str, str] = {}
    if "reference" in specs:
        reason = reference_skip_reason(arm_spec(body.base, "sync", body.seeds[0]))
        if reason is not None:
            skipped["reference"] = reason
            del specs["reference"]
    if not specs:
        raise field_error("arms", f"no arm can run: {'; '.join(skipped.values())}")
    checked = {}
    for arm, spec in specs.items():
        try:
            checked[arm] = check_submission(services, spec, capacity)
        except RequestValidationError as exc:
            raise _in_base(exc) from None
    task = next(iter(checked.values())).task
    with services.db.session() as session:
        check_queue_room(services, session, len(specs) * len(body.seeds))
        study = store.add_study(
            session,
            Study(
                id=store.new_study_id(),
                base=body.base,
                seeds=body.seeds,
                arms=list(specs),
                skipped=skipped,
                metric="test_miou" if task == "segmentation" else "test_accuracy",
            ),
        )
        for seed in body.seeds:
            for arm, spec in specs.items():
                spec = spec.model_copy(update={"seed": seed})
                services.lifecycle.create(
                    session, spec, checked[arm].steps_per_epoch, (study.id, arm)
                )
        return _study_out(session, study)


@router.get("", response_model=StudyList)
def list_studies(
    services: ServicesDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> StudyList:
    """Studies, newest first."""
    with services.db.session() as session:
        studies = store.list_studies(session, limit)
        return StudyList(studies=[_study_out(session, s) for s in studies])


@router.get("/{study_id}", response_model=StudyOut, responses=NOT_FOUND)
def get_study(study_id: str, services: ServicesDep) -> StudyOut:
    """The study: state, each arm's jobs, metric (mean, std, curve), step time, the verdict."""
    with services.db.session() as session:
        return _study_out(session, _study_or_404(session, study_id))


@router.post("/{study_id}/cancel", response_model=StudyOut, responses=NOT_FOUND)
def cancel_study(study_id: str, services: ServicesDep) -> StudyOut:
    """Cancel every job of the study that has not finished (idempotent)."""
    with services.db.session() as session:
        study = _study_or_404(session, study_id)
        study.cancelled = True
        jobs = store.study_jobs(session, study_id)
        open_jobs = [j.id for j in jobs if j.state not in FINAL_STATES]
    for job_id in open_jobs:
        services.lifecycle.cancel(job_id)
    with services.db.session() as session:
        return _study_out(session, _study_or_404(session, study_id))


@router.delete(
    "/{study_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"model": ErrorOut, "description": "a job is not over"}},
)
def delete_study(study_id: str, services: ServicesDep) -> Response:
    """Delete a study whose jobs are all over, with the jobs and their files."""
    with services.db.session() as session:
        study = _study_or_404(session, study_id)
        for job in store.study_jobs(session, study_id):
            if reason := why_kept(job):
                raise HTTPException(status.HTTP_409_CONFLICT, f"{reason} (cancel the study first)")
        job_ids = store.delete_study(session, study)
    for job_id in job_ids:
        remove_job_files(services.settings, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _study_or_404(session: Session, study_id: str) -> Study:
    study = store.get_study(session, study_id)
    if study is None:
        raise not_found("study", study_id)
    return study


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


def _study_out(session: Session, study: Study) -> StudyOut:
    jobs = store.study_jobs(session, study.id)
    ids = [j.id for j in jobs]
    times = store.mean_step_times(session, ids)
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for evaluation in store.evaluations_of(session, ids):
        value = getattr(evaluation, study.metric)
        if value is not None:
            curves[evaluation.job_id][evaluation.epoch] = value
    by_arm: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_arm[job.arm or ""].append(job)
    summaries: dict[str, ArmSummary] = {}
    arms: list[ArmOut] = []
    for arm in study.arms:
        figures = [
            JobFigures(
                job_id=j.id,
                seed=int(j.spec["seed"]),
                state=j.state,
                metric=getattr(j, study.metric),
                step_time_s=times.get(j.id, (None, None))[0],
                sync_time_s=times.get(j.id, (None, None))[1],
                curve=curves.get(j.id, {}),
            )
            for j in by_arm[arm]
        ]
        summary = summaries[arm] = ArmSummary(arm, figures)
        arms.append(_arm_out(summary, by_arm[arm], study.metric))
    pending = sum(j.state not in FINAL_STATES for j in jobs)
    label = f"1x{JobSpec.model_validate(jobs[0].spec).global_batch_size}" if jobs else "1-worker"
    reasons = [
        f"{j.arm} seed {j.spec['seed']}: {j.state}: {j.reason or ''}".rstrip(": ")
        for j in jobs
        if j.state in (JobState.FAILED, JobState.CANCELLED)
    ]
    metric_name = "mIoU" if study.metric == "test_miou" else "accuracy"
    return StudyOut(
        id=study.id,
        state=_state(study, jobs),  # type: ignore[arg-type]
        reasons=reasons,
        base=study.base,
        seeds=study.seeds,
        arms=arms,
        skipped=study.skipped,
        verdict=verdict(summaries, metric_name, label, pending),
        created_at=study.created_at,
    )


def _arm_out(summary: ArmSummary, jobs: list[Job], metric: str) -> ArmOut:
    return ArmOut(
        name=summary.name,
        spec=JobSpec.model_validate(jobs[0].spec),
        jobs=[
            StudyJobOut(
                id=j.id, seed=f.seed, state=JobState(j.state), reason=j.reason, metric=f.metric
            )
            for j, f in zip(jobs, summary.jobs, strict=True)
        ],
        metric=metric,
        metric_mean=summary.metric_mean,
        metric_std=summary.metric_std,
        step_time_s_mean=summary.step_time_s_mean,
        sync_time_share=summary.sync_time_share,
        curve=summary.curve(),  # type: ignore[arg-type]
    )
