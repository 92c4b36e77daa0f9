"""``/v1/internal``: where a job's Ray Train callback posts its reports (per-job token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from service import store
from service.auth import require_ingest_token
from service.deps import Services, field_error, get_services, not_found
from service.schemas import ErrorOut, IngestAck, IngestEvent

router = APIRouter(prefix="/v1/internal", tags=["internal"])
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post(
    "/jobs/{job_id}/events",
    response_model=IngestAck,
    status_code=status.HTTP_200_OK,
    dependencies=[Depends(require_ingest_token)],
    responses={401: {"model": ErrorOut}, 404: {"model": ErrorOut}},
)
def ingest_event(job_id: str, event: IngestEvent, services: ServicesDep) -> IngestAck:
    """Store one report or worker failure of ``job_id`` (duplicates are acknowledged, once)."""
    with services.db.session() as session:
        job = store.get_job(session, job_id)
        if job is None:
            raise not_found("job", job_id)
        try:
            stored = store.add_event(session, job, event)
        except ValueError as exc:
            raise field_error("kind", str(exc)) from exc
        if stored and event.type == "report" and job.state == "pending":
            store.transition(session, job, "running")
    if stored and event.type == "report":
        services.metrics.report_stored("ingest")
    return IngestAck(stored=stored)
