"""Uploaded datasets: an ``.npz`` checked from its headers, or an image-folder ``.zip``
decoded to one (``workers.data``), stored as ``datasets/<id>.npz`` with its row; every problem
is a ``FieldError`` on ``file`` or ``image_size`` (naming the limit's setting)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import BinaryIO

from contract.datasets import DatasetError
from service.errors import FieldError
from service.files.housekeeping import remove_dataset_file as remove_dataset
from service.files.uploads import (
    UploadKind,
    check_uploader,
    delete_upload,
    new_id,
    publish_then_record,
    safe_name,
    stage,
)
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.storage.tables import Dataset
from service.teams.caller import Caller

logger = logging.getLogger("service.files.datasets")


def add_dataset(
    db: Database,
    settings: Settings,
    source: BinaryIO,
    filename: str | None,
    image_size: str | None,
    caller: Caller,
) -> Dataset:
    """Receive, check (image folders: decode) and store an upload of ``caller``; its new
    row."""
    check_uploader(db, settings, caller)
    from workers.data.imagefolder import image_folder_members, is_image_folder, parse_size
    from workers.data.npz import inspect_npz  # numpy: imported with the first upload

    try:
        size = parse_size(image_size)
    except DatasetError as exc:
        raise FieldError("image_size", str(exc)) from exc
    dataset_id = new_id("ds")
    limit = settings.max_upload_bytes
    with stage(source, settings.datasets_dir, limit, "max_upload_bytes") as upload:
        checked = upload.path
        if is_image_folder(upload.path, image_folder_members(settings.max_upload_images)):
            checked = upload.scratch / "decoded.npz"
            _decode_images(upload.path, checked, size, settings)
        elif size is not None:
            raise FieldError("image_size", "applies to image-folder .zip uploads, not to an .npz")
        try:
            info = inspect_npz(
                checked, limit=limit, name=dataset_id, memory_limit=settings.max_dataset_memory
            )
        except DatasetError as exc:
            raise FieldError("file", str(exc).replace(checked.name, "upload"), exc.setting) from exc
        row = Dataset(
            id=dataset_id,
            name=safe_name(filename, "upload.npz"),
            size_bytes=upload.size,
            sha256=upload.sha256,
            n_train=info.n_train,
            n_test=info.n_test,
            input_shape=list(info.input_shape),
            num_classes=info.num_classes,
            task=info.task,
            class_names=list(info.class_names) if info.class_names else None,
            owner=caller.name,
        )
        final = settings.datasets_dir / f"{dataset_id}.npz"
        publish_then_record(checked, final, db, row, settings)
    logger.info("dataset uploaded", extra={"dataset_id": dataset_id, "bytes": upload.size})
    return row


def _decode_images(
    archive: Path, target: Path, size: tuple[int, int] | None, settings: Settings
) -> None:
    """Decode the image-folder ``archive`` into the ``.npz`` ``target``."""
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
        raise FieldError(field, str(exc), exc.setting) from exc
    write_npz(arrays, target)


def delete_dataset(db: Database, settings: Settings, dataset_id: str, caller: Caller) -> None:
    """Delete an uploaded dataset's row and file (``NotFound``, ``Conflict`` while in use)."""
    kind = UploadKind("dataset", "dataset", store.get_dataset, partial(remove_dataset, settings))
    delete_upload(db, kind, dataset_id, caller)
