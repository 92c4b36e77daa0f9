"""``/v1/studies``: which normalization serves this workload, at what cost? Arms x seeds as
jobs, with a verdict and a recommendation."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from contract.api import ErrorOut, StudyIn, StudyList, StudyOut
from service.api import views
from service.api.auth import CallerDep
from service.api.deps import OwnerQuery, ServicesDep, api_router, created
from service.storage import store
from service.studies import runs

router = api_router("/v1/studies", "studies")
NOT_FOUND = {404: {"model": ErrorOut, "description": "no such study"}}


def _in_base(exc: ValidationError) -> RequestValidationError:
    """The errors of a spec made from ``base``, located under ``body.base``."""
    errors = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if part != "body")
        errors.append({**error, "loc": ("body", "base", *loc)})
    return RequestValidationError(errors)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyOut,
    responses={
        422: {"description": "invalid base, seeds or arms (the field is named)"},
        429: {"model": ErrorOut, "description": "the queue has no room for the study's jobs"},
        507: {"model": ErrorOut, "description": "no room on the disk (SYNCBN_DISK_BUDGET_BYTES)"},
    },
)
def create_study(
    body: StudyIn, services: ServicesDep, caller: CallerDep, response: Response
) -> StudyOut:
    """Queue one job per arm and seed: presets (local, sync, group, reference) or named JobSpec
    overrides such as sync groups; each arm is checked as a full JobSpec."""
    try:
        state = runs.create_study(
            services.db,
            services.lifecycle,
            services.ray,
            services.settings,
            body.base,
            body.seeds,
            [arm.arm() for arm in body.arms] if body.arms else None,
            caller,
        )
    except ValidationError as exc:
        raise _in_base(exc) from None
    return created(response, "/v1/studies", views.study_out(state))


@router.get("", response_model=StudyList)
def list_studies(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    owner: OwnerQuery = None,
) -> StudyList:
    """Studies, newest first, optionally only those of ``owner``."""
    with services.db.session() as session:
        studies = store.list_studies(session, limit, owner)
        return StudyList(studies=[views.study_out(runs.summarize(session, s)) for s in studies])


@router.get("/{study_id}", response_model=StudyOut, responses=NOT_FOUND)
def get_study(study_id: str, services: ServicesDep) -> StudyOut:
    """The study: state, each arm's jobs, metric (mean, std, curve), step time and bytes, the
    verdict and the recommendation."""
    with services.db.session() as session:
        return views.study_out(runs.summarize(session, runs.study_or_404(session, study_id)))


@router.post("/{study_id}/cancel", response_model=StudyOut, responses=NOT_FOUND)
def cancel_study(study_id: str, services: ServicesDep, caller: CallerDep) -> StudyOut:
    """Cancel every job of the study that has not finished (idempotent)."""
    state = runs.cancel_study(services.db, services.lifecycle, study_id, caller)
    return views.study_out(state)


@router.delete(
    "/{study_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"model": ErrorOut, "description": "a job is not over"}},
)
def delete_study(study_id: str, services: ServicesDep, caller: CallerDep) -> Response:
    """Delete a study whose jobs are all over, with the jobs and their files."""
    runs.delete_study(services.db, services.settings, study_id, caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
