"""Domain objects as the API shows them: a job (``JobOut``), a study (``StudyOut``). The one
place a stored row or a domain summary becomes a response body."""

from __future__ import annotations

from contract.api import (
    ArmOut,
    JobOut,
    Progress,
    RecommendationOut,
    Result,
    StudyJobOut,
    StudyOut,
    TransitionOut,
)
from contract.spec import JobSpec
from contract.states import JobState
from service.storage.tables import Job
from service.studies.runs import StudyState
from service.studies.summary import ArmSummary


def job_out(job: Job, with_transitions: bool = True) -> JobOut:
    """The API view of a job."""
    spec = JobSpec.model_validate(job.spec)
    total = max(1, spec.epochs * job.steps_per_epoch)
    done = job.state == JobState.SUCCEEDED
    result = None
    if done:
        result = Result(
            test_accuracy=job.test_accuracy,
            test_loss=job.test_loss,
            test_miou=job.test_miou,
            epochs_completed=job.epoch,
            wall_time_s=job.wall_time_s,
        )
    return JobOut(
        id=job.id,
        state=JobState(job.state),
        reason=job.reason,
        spec=spec,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=Progress(
            epoch=job.epoch,
            step=job.step,
            epochs=spec.epochs,
            steps_per_epoch=job.steps_per_epoch,
            fraction=1.0 if done else min(1.0, job.step / total),
        ),
        result=result,
        transitions=(
            [TransitionOut.model_validate(t) for t in job.transitions] if with_transitions else []
        ),
        study_id=job.study_id,
        arm=job.arm,
        owner=job.owner,
        pinned=bool(job.pinned),
        files_removed_at=job.files_removed_at,
    )


def study_out(state: StudyState) -> StudyOut:
    """The API view of a study."""
    study = state.study
    return StudyOut(
        id=study.id,
        state=state.state,  # type: ignore[arg-type]
        reasons=state.reasons,
        base=study.base,
        seeds=study.seeds,
        arms=[_arm_out(summary, jobs, study.metric) for summary, jobs in state.arms],
        skipped=study.skipped,
        verdict=state.verdict,
        recommendation=(
            RecommendationOut(arm=state.recommendation.arm, reason=state.recommendation.reason)
            if state.recommendation
            else None
        ),
        created_at=study.created_at,
        owner=study.owner,
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
        allreduce_bytes_per_step=summary.allreduce_bytes_per_step,
        curve=summary.curve(),  # type: ignore[arg-type]
    )
