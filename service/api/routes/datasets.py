"""``/v1/datasets``: upload a validated ``.npz`` or an image-folder ``.zip`` (decoded by
``workers.data.imagefolder`` and stored as an ``.npz``); ids are made by the server. List them."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import File, Form, Response, UploadFile, status

from service.api.deps import (
    ServicesDep,
    api_router,
    delete_upload,
    field_error,
    limit_error,
)
from service.api.schemas import DatasetList, DatasetOut, ErrorOut
from service.files.housekeeping import publish, remove_dataset_file
from service.files.uploads import receive
from service.settings import Settings
from service.storage import store
from service.storage.tables import Dataset

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
    },
)
def upload_dataset(
    services: ServicesDep,
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
    from contract.datasets import DatasetError
    from workers.data.imagefolder import image_folder_members, is_image_folder, parse_size
    from workers.data.npz import inspect_npz

    settings = services.settings
    try:
        size = parse_size(image_size)
    except DatasetError as exc:
        raise field_error("image_size", str(exc)) from exc
    limit = settings.max_upload_bytes
    directory = settings.datasets_dir
    directory.mkdir(parents=True, exist_ok=True)
    dataset_id = f"ds-{secrets.token_hex(6)}"
    partial = directory / f".{dataset_id}.partial"
    converted = directory / f".{dataset_id}.converted"
    final = directory / f"{dataset_id}.npz"
    try:
        size_bytes, sha256 = receive(file.file, partial, limit, "max_upload_bytes")
        source = partial
        if is_image_folder(partial, image_folder_members(settings.max_upload_images)):
            _decode_images(partial, converted, size, settings)
            source = converted
        try:
            info = inspect_npz(
                source, limit=limit, name=dataset_id, memory_limit=settings.max_dataset_memory
            )
        except DatasetError as exc:
            message = str(exc).replace(source.name, "upload")
            raise limit_error("file", message, exc.setting) from exc
        if size is not None and source is partial:
            raise field_error("image_size", "applies to image-folder .zip uploads, not to an .npz")
        publish(source, final)
    finally:
        partial.unlink(missing_ok=True)
        converted.unlink(missing_ok=True)
    name = os.path.basename(file.filename or "upload.npz")[:255]
    try:
        with services.db.session() as session:
            dataset = store.add_dataset(
                session,
                Dataset(
                    id=dataset_id,
                    name=name,
                    size_bytes=size_bytes,
                    sha256=sha256,
                    n_train=info.n_train,
                    n_test=info.n_test,
                    input_shape=list(info.input_shape),
                    num_classes=info.num_classes,
                    task=info.task,
                    class_names=list(info.class_names) if info.class_names else None,
                ),
            )
            session.flush()
            out = DatasetOut.model_validate(dataset)
    except BaseException:
        final.unlink(missing_ok=True)  # no file without its row
        raise
    logger.info("dataset uploaded", extra={"dataset_id": dataset_id, "bytes": size_bytes})
    return out


def _decode_images(
    archive: Path, target: Path, size: tuple[int, int] | None, settings: Settings
) -> None:
    """Decode the image-folder ``archive`` into the ``.npz`` ``target`` (422 on a problem)."""
    from contract.datasets import DatasetError
    from workers.data.imagefolder import read_image_folder, write_npz

    try:
        arrays = read_image_folder(
            archive,
            size=size,
            max_images=settings.max_upload_images,
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_upload_bytes,
            max_decoded_pixels=settings.max_decoded_pixels,
            max_memory=settings.max_dataset_memory,
        )
    except DatasetError as exc:  # about the file, or the size asked for
        field = "image_size" if exc.field == "image_size" else "file"
        raise limit_error(field, str(exc), exc.setting) from exc
    write_npz(arrays, target)


@router.get("", response_model=DatasetList)
def list_datasets(services: ServicesDep) -> DatasetList:
    """Uploaded datasets, newest first (``digits`` and ``synthetic`` are always available)."""
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
def delete_dataset(dataset_id: str, services: ServicesDep) -> Response:
    """Delete an uploaded dataset and its file (jobs that used it keep their results)."""
    return delete_upload(services, store.get_dataset, "dataset", dataset_id, remove_dataset_file)
