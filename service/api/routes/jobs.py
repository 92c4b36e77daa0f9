"""``/v1/jobs``: submit, list, inspect, cancel, pin, statistics, history, live events, logs."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

from fastapi import Depends, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from contract.api import (
    ErrorOut,
    EvaluationOut,
    JobList,
    JobOut,
    LogsOut,
    MetricsOut,
    ReportOut,
    WorkersOut,
)
from contract.spec import JobSpec
from contract.states import FINAL_STATES, JobState
from service.api import views
from service.api.auth import CREDENTIAL, CallerDep
from service.api.deps import OwnerQuery, Services, ServicesDep, api_router, created
from service.errors import ClusterUnavailable
from service.jobs import logs
from service.jobs.lifecycle import job_or_404
from service.jobs.retention import delete_job as delete_job_and_files
from service.jobs.retention import removed_reason, set_pinned
from service.jobs.submission import check_queue_room, check_submission, cluster_capacity
from service.storage import store
from service.teams.caller import Caller
from service.teams.quotas import check_model_quota

logger = logging.getLogger("service.jobs")
router = api_router("/v1/jobs", "jobs")
NOT_FOUND = {404: {"model": ErrorOut, "description": "no such job"}}
EVENT_PAGE = 100
"""Events one read of a stream takes (inline on SQLite: it holds the event loop that long)."""
MAX_EVENT_ID = 2**62


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={
        422: {"description": "invalid spec, unknown dataset, or can never fit the cluster"},
        429: {"model": ErrorOut, "description": "the queue is full"},
        507: {"model": ErrorOut, "description": "no room on the disk (SYNCBN_DISK_BUDGET_BYTES)"},
    },
)
def submit_job(
    spec: JobSpec, services: ServicesDep, caller: CallerDep, response: Response
) -> JobOut:
    """Submit a training job; it starts when the cluster has room (fair share between users,
    FIFO within one)."""
    checked = check_submission(services.db, spec, cluster_capacity(services.ray), caller)
    check_model_quota(services.db, services.settings, caller.name)
    with services.lifecycle.queue_lock, services.db.session() as session:
        check_queue_room(session, services.settings, [spec], caller.name)
        steps = checked.steps_per_epoch
        job = services.lifecycle.create(session, spec, steps, owner=caller.name)
        out = views.job_out(job)
    logger.info("job submitted", extra={"job_id": out.id, "spec": spec.model_dump()})
    return created(response, "/v1/jobs", out)


@router.get("", response_model=JobList)
async def list_jobs(
    services: ServicesDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    owner: OwnerQuery = None,
) -> JobList:
    """Jobs, newest first, optionally only those in ``state`` or of ``owner``."""

    def page(session: Session) -> JobList:
        jobs, total = store.list_jobs(session, state, limit, offset, owner)
        out = [views.job_out(j, with_transitions=False) for j in jobs]
        return JobList(jobs=out, total=total, limit=limit, offset=offset)

    return await services.db.read(page)


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
async def get_job(job_id: str, services: ServicesDep) -> JobOut:
    """One job: state, spec, progress, state transitions, and the result when done."""
    return await services.db.read(
        lambda session: views.job_out(job_or_404(session, job_id, with_transitions=True))
    )


@router.post("/{job_id}/cancel", response_model=JobOut, responses=NOT_FOUND)
def cancel_job(job_id: str, services: ServicesDep, caller: CallerDep) -> JobOut:
    """Cancel a job (idempotent): a queued job never starts, a running one's Ray Job stops."""
    job = services.lifecycle.cancel(job_id, caller)
    with services.db.session() as session:
        return views.job_out(job_or_404(session, job.id, with_transitions=True))


PIN = {**NOT_FOUND, 409: {"model": ErrorOut, "description": "its files are already removed"}}


@router.post("/{job_id}/pin", response_model=JobOut, responses=PIN)
def pin_job(job_id: str, services: ServicesDep, caller: CallerDep) -> JobOut:
    """Keep the job's checkpoints, model files and log past the retention
    (``SYNCBN_RETENTION_DAYS``); idempotent."""
    return _pinned(services, job_id, True, caller)


@router.delete("/{job_id}/pin", response_model=JobOut, responses=NOT_FOUND)
def unpin_job(job_id: str, services: ServicesDep, caller: CallerDep) -> JobOut:
    """Let the retention remove the job's files again once it is due; idempotent."""
    return _pinned(services, job_id, False, caller)


def _pinned(services: Services, job_id: str, pinned: bool, caller: Caller) -> JobOut:
    set_pinned(services.db, job_id, pinned, caller)
    with services.db.session() as session:
        return views.job_out(job_or_404(session, job_id, with_transitions=True))


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"model": ErrorOut, "description": "not over, or a study's"}},
)
def delete_job(job_id: str, services: ServicesDep, caller: CallerDep) -> Response:
    """Delete a job that is over, with its statistics, checkpoints and model files."""
    delete_job_and_files(services.db, services.settings, job_id, caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/workers", response_model=WorkersOut, responses=NOT_FOUND)
async def job_workers(job_id: str, services: ServicesDep) -> WorkersOut:
    """The latest statistics of every worker (rank)."""

    def latest(session: Session) -> WorkersOut:
        job_or_404(session, job_id)
        report = store.latest_report(session, job_id)
        if report is None:
            return WorkersOut(job_id=job_id, workers=[])
        workers = [w.data for w in report.workers]
        return WorkersOut(job_id=job_id, epoch=report.epoch, step=report.step, workers=workers)

    return await services.db.read(latest)


@router.get("/{job_id}/metrics", response_model=MetricsOut, responses=NOT_FOUND)
def job_metrics(job_id: str, services: ServicesDep) -> MetricsOut:
    """The whole history: every report with every rank's statistics, and the evaluations."""
    with services.db.session() as session:
        job_or_404(session, job_id)
        return MetricsOut(
            job_id=job_id,
            reports=[
                ReportOut(
                    kind=r.kind,
                    epoch=r.epoch,
                    step=r.step,
                    time=r.time,
                    workers=[w.data for w in r.workers],
                )
                for r in store.reports(session, job_id)
            ],
            evaluations=[
                EvaluationOut.model_validate(e) for e in store.evaluations(session, job_id)
            ],
        )


@router.get("/{job_id}/logs", response_model=LogsOut, responses=NOT_FOUND)
def job_logs(
    job_id: str,
    services: ServicesDep,
    tail: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> LogsOut:
    """The last ``tail`` lines of the job's driver log (at most ``SYNCBN_MAX_JOB_LOG_BYTES``):
    from Ray while it runs, from the copy kept in its run folder once it has ended."""
    with services.db.session() as session:
        job = job_or_404(session, job_id)
        submitted = job.ray_status is not None
        if reason := removed_reason(job, services.settings):
            return LogsOut(job_id=job_id, logs="", reason=reason)
    try:
        text = logs.tail(services.settings, services.ray, job_id, tail, submitted)
    except Exception as exc:
        raise ClusterUnavailable(f"Ray logs unavailable: {exc}") from exc
    return LogsOut(job_id=job_id, logs=text)


async def _stream_slot(
    services: ServicesDep, caller: CallerDep, request: Request
) -> AsyncIterator[None]:
    """A slot among the open event streams (429 past a cap), held until the response is over:
    the stream ended or the client went away. Counted per credential that signed the request
    in: a token (by its digest), or a user of the trusted proxy (by name)."""
    with services.events.slots.slot(request.scope.get(CREDENTIAL)):
        yield


@router.get(
    "/{job_id}/events",
    dependencies=[Depends(_stream_slot)],
    responses={
        **NOT_FOUND,
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: `state`, `report`, `exception`, then `end`",
        },
        429: {
            "model": ErrorOut,
            "description": "too many open event streams (SYNCBN_MAX_EVENT_STREAMS_PER_TOKEN, "
            "SYNCBN_MAX_EVENT_STREAMS)",
        },
    },
)
async def job_events(
    job_id: str,
    services: ServicesDep,
    last_event_id: Annotated[
        str | None,
        Header(max_length=19, pattern=r"^\d+$", description="resume after this event id"),
    ] = None,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="resume after this id")] = 0,
) -> EventSourceResponse:
    """Live stream of the job's state changes and reports (from the start, or resumed after
    ``Last-Event-ID``, as a reconnecting EventSource sends it, or ``after``)."""
    await services.db.read(lambda session: job_or_404(session, job_id))
    cursor = after
    if last_event_id is not None:
        cursor = int(last_event_id)
        if cursor > MAX_EVENT_ID:
            raise RequestValidationError(
                [
                    {
                        "loc": ("header", "last-event-id"),
                        "msg": f"must be at most {MAX_EVENT_ID}",
                        "type": "less_than_equal",
                    }
                ]
            )
    return EventSourceResponse(_event_stream(services, job_id, cursor), ping=15)


async def _event_stream(services: Services, job_id: str, cursor: int) -> AsyncIterator:
    """The job's events after ``cursor``, then ``end`` once it is over. Read when a commit
    added events of the job, else now and then for other processes' writes; the streams of a
    job share their reads (``service.jobs.events``). An idle stream costs no query and no
    thread hop."""

    def fetch(session: Session, after: int) -> tuple[list[tuple[int, str, dict]], str]:
        job = store.get_job(session, job_id)  # first: its events below are at least as new
        events = store.events_after(session, job_id, after, EVENT_PAGE)
        return [(e.id, e.type, e.data) for e in events], job.state if job else JobState.FAILED

    # Subscribed before the first read, cleared before each: a commit after a read's start
    # wakes the wait that follows it.
    with services.events.subscribe(job_id) as wake:
        while True:
            wake.clear()
            events, state = await services.events.read(job_id, cursor, partial(fetch, after=cursor))
            for event_id, kind, data in events:
                cursor = event_id
                yield ServerSentEvent(data=json.dumps(data), event=kind, id=str(event_id))
            if not events and state in FINAL_STATES:
                yield ServerSentEvent(data=json.dumps({"state": state}), event="end")
                return
            if not events:
                await wake.wait()
