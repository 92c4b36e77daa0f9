"""``/v1/datasets``: upload a validated ``.npz`` (ids are made by the server), list them."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, File, HTTPException, UploadFile, status

from service import store
from service.auth import require_api_token
from service.deps import Services, field_error, get_services
from service.models import Dataset
from service.schemas import DatasetList, DatasetOut, ErrorOut

logger = logging.getLogger("service.datasets")
router = APIRouter(
    prefix="/v1/datasets",
    tags=["datasets"],
    dependencies=[Depends(require_api_token)],
    responses={401: {"model": ErrorOut}},
)
ServicesDep = Annotated[Services, Depends(get_services)]
CHUNK = 1 << 20


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    responses={
        413: {"model": ErrorOut, "description": "larger than SYNCBN_MAX_UPLOAD_BYTES"},
        422: {"description": "not a usable .npz (the message says why)"},
    },
)
def upload_dataset(
    services: ServicesDep,
    file: Annotated[UploadFile, File(description=".npz with x, y and optionally x_test, y_test")],
) -> DatasetOut:
    """Upload a dataset; it is validated before it gets an id."""
    from workers.data import DatasetError, load_npz

    limit = services.settings.max_upload_bytes
    directory = services.settings.datasets_dir
    directory.mkdir(parents=True, exist_ok=True)
    dataset_id = f"ds-{secrets.token_hex(6)}"
    partial = directory / f".{dataset_id}.partial"
    digest, size = hashlib.sha256(), 0
    try:
        with open(partial, "wb") as out:
            while chunk := file.file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than {limit} bytes"
                    )
                digest.update(chunk)
                out.write(chunk)
        try:
            data = load_npz(partial, name=dataset_id, limit=limit)
        except DatasetError as exc:
            raise field_error("file", str(exc).replace(partial.name, "upload")) from exc
        final = directory / f"{dataset_id}.npz"
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    name = os.path.basename(file.filename or "upload.npz")[:255]
    with services.db.session() as session:
        dataset = store.add_dataset(
            session,
            Dataset(
                id=dataset_id,
                name=name,
                size_bytes=size,
                sha256=digest.hexdigest(),
                n_train=len(data.x_train),
                n_test=len(data.x_test),
                input_shape=list(data.input_shape),
                num_classes=data.num_classes,
            ),
        )
        session.flush()
        out = DatasetOut.model_validate(dataset)
    logger.info("dataset uploaded", extra={"dataset_id": dataset_id, "bytes": size})
    return out


@router.get("", response_model=DatasetList)
def list_datasets(services: ServicesDep) -> DatasetList:
    """Uploaded datasets, newest first (``digits`` and ``synthetic`` are always available)."""
    with services.db.session() as session:
        return DatasetList(
            datasets=[DatasetOut.model_validate(d) for d in store.list_datasets(session)]
        )
