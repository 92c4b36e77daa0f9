"""``/v1/code``: upload a code bundle with a model builder (validated, never imported), list."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import File, Response, UploadFile, status

from service.api.deps import ServicesDep, api_router, delete_upload, limit_error, not_found
from service.api.schemas import CodeBundleList, CodeBundleOut, ErrorOut
from service.files.code_bundles import BundleError, unpack
from service.files.housekeeping import publish, remove_code_bundle
from service.files.uploads import receive
from service.storage import store
from service.storage.tables import CodeBundle

logger = logging.getLogger("service.code")
router = api_router("/v1/code", "code")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CodeBundleOut,
    responses={
        413: {"model": ErrorOut, "description": "larger than SYNCBN_MAX_CODE_BYTES"},
        422: {"description": "not a usable bundle, or over a limit (the file and setting named)"},
        429: {"model": ErrorOut, "description": "too many uploads at once (Retry-After)"},
    },
)
def upload_code(
    services: ServicesDep,
    file: Annotated[UploadFile, File(description=".zip or .tar.gz of Python files")],
) -> CodeBundleOut:
    """Upload a bundle of Python files holding a model builder.

    A job runs it with ``{"code": <id>, "model": "<module>:<function>"}``; the builder is
    called as ``build_model(input_shape, num_classes)`` and returns a ``torch.nn.Module``.
    The service never imports the code: Ray ships it to the workers (``working_dir``), with
    a top-level ``requirements.txt`` installed by Ray (``pip``).
    """
    settings = services.settings
    settings.code_dir.mkdir(parents=True, exist_ok=True)
    bundle_id = f"code-{secrets.token_hex(6)}"
    target = settings.code_dir / bundle_id
    with tempfile.TemporaryDirectory(dir=settings.code_dir, prefix=".upload-") as scratch:
        archive = Path(scratch) / "bundle"
        size, sha256 = receive(file.file, archive, settings.max_code_bytes, "max_code_bytes")
        unpacked = Path(scratch) / "unpacked"
        try:
            info = unpack(
                archive,
                unpacked,
                max_bytes=settings.max_code_bytes,
                max_files=settings.max_code_files,
                max_source_bytes=settings.max_source_bytes,
                max_file_source_bytes=settings.max_source_file_bytes,
            )
        except BundleError as exc:
            raise limit_error("file", str(exc), exc.setting) from exc
        publish(unpacked, target)
    bundle = CodeBundle(
        id=bundle_id,
        name=os.path.basename(file.filename or "bundle")[:255],
        size_bytes=size,
        sha256=sha256,
        files=info.files,
        modules=info.modules,
        requirements=info.requirements,
    )
    try:
        with services.db.session() as session:
            session.add(bundle)
            session.flush()
            out = CodeBundleOut.model_validate(bundle)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    logger.info("code uploaded", extra={"code_id": bundle_id, "modules": info.modules})
    return out


@router.get("", response_model=CodeBundleList)
def list_code(services: ServicesDep) -> CodeBundleList:
    """Uploaded code bundles, newest first."""
    with services.db.session() as session:
        return CodeBundleList(
            bundles=[CodeBundleOut.model_validate(b) for b in store.list_code_bundles(session)]
        )


@router.get("/{code_id}", response_model=CodeBundleOut, responses={404: {"model": ErrorOut}})
def get_code(code_id: str, services: ServicesDep) -> CodeBundleOut:
    """One code bundle."""
    with services.db.session() as session:
        bundle = store.get_code_bundle(session, code_id)
        if bundle is None:
            raise not_found("code bundle", code_id)
        return CodeBundleOut.model_validate(bundle)


@router.delete(
    "/{code_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        404: {"model": ErrorOut},
        409: {"model": ErrorOut, "description": "a job that is not over uses it"},
    },
)
def delete_code(code_id: str, services: ServicesDep) -> Response:
    """Delete a code bundle and its files (the models it trained can no longer predict)."""
    return delete_upload(services, store.get_code_bundle, "code", code_id, remove_code_bundle)
