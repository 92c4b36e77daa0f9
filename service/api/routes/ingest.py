"""``/v1/internal``: where a job's Ray Train callback posts its reports (per-job token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, status

from contract.api import ErrorOut, IngestAck
from contract.protocol import Event
from service.api.auth import require_ingest_token
from service.api.deps import ServicesDep
from service.api.errors import field_error
from service.jobs.lifecycle import ReportRefused

router = APIRouter(prefix="/v1/internal", tags=["internal"])


@router.post(
    "/jobs/{job_id}/events",
    response_model=IngestAck,
    status_code=status.HTTP_200_OK,
    dependencies=[Depends(require_ingest_token)],
    responses={
        401: {"model": ErrorOut},
        404: {"model": ErrorOut},
        409: {"model": ErrorOut, "description": "the job is over: its result is final"},
        422: {"description": "malformed, or beyond the job's epochs, steps or workers"},
    },
)
def ingest_event(job_id: str, event: Annotated[Event, Body()], services: ServicesDep) -> IngestAck:
    """Store one report or worker failure of ``job_id`` (duplicates are acknowledged, once)."""
    try:
        return IngestAck(stored=services.lifecycle.record(job_id, event, "ingest"))
    except ReportRefused as exc:
        if exc.closed:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        raise field_error(exc.field or "event", str(exc)) from None
