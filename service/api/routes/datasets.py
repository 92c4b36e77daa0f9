"""``/v1/datasets``: upload a validated ``.npz`` or an image-folder ``.zip`` (decoded by
``workers.data.imagefolder`` and stored as an ``.npz``); ids are made by the server. List them."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import File, Form, Response, UploadFile, status

from contract.api import DatasetList, DatasetOut, ErrorOut
from service.api.auth import CallerDep
from service.api.deps import ServicesDep, api_router, created
from service.files import datasets as files
from service.storage import store

logger = logging.getLogger("service.datasets")
router = api_router("/v1/datasets", "datasets")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    responses={
        413: {"model": ErrorOut, "description": "larger than SYNCBN_MAX_UPLOAD_BYTES"},
        422: {"description": "not a usable .npz or image folder, or over a limit (named)"},
        429: {"model": ErrorOut, "description": "too many uploads at once (Retry-After)"},
        507: {"model": ErrorOut, "description": "no room on the disk (SYNCBN_DISK_BUDGET_BYTES)"},
    },
)
def upload_dataset(
    services: ServicesDep,
    caller: CallerDep,
    response: Response,
    file: Annotated[
        UploadFile,
        File(
            description=".npz with x, y and optionally x_test, y_test, classes; or a .zip of "
            "images: <class>/<image>, or train/<class>/<image> with test/<class>/<image>"
        ),
    ],
    image_size: Annotated[
        str | None,
        Form(description='image folders only: resize every image to WIDTHxHEIGHT ("32x32", "32")'),
    ] = None,
) -> DatasetOut:
    """Upload a dataset; it is validated (image folders: decoded) before it gets an id."""
    row = files.add_dataset(
        services.db, services.settings, file.file, file.filename, image_size, caller
    )
    return created(response, "/v1/datasets", DatasetOut.model_validate(row))


@router.get("", response_model=DatasetList)
def list_datasets(services: ServicesDep) -> DatasetList:
    """Uploaded datasets, newest first (the built-in ``digits``, ``synthetic`` and ``shapes``
    are always available and not listed)."""
    with services.db.session() as session:
        return DatasetList(
            datasets=[DatasetOut.model_validate(d) for d in store.list_datasets(session)]
        )


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        404: {"model": ErrorOut, "description": "no such uploaded dataset"},
        409: {"model": ErrorOut, "description": "a job that is not over uses it"},
    },
)
def delete_dataset(dataset_id: str, services: ServicesDep, caller: CallerDep) -> Response:
    """Delete an uploaded dataset and its file (jobs that used it keep their results)."""
    files.delete_dataset(services.db, services.settings, dataset_id, caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
