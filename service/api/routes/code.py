"""``/v1/code``: upload a code bundle with a model builder (validated, never imported), list."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import File, Response, UploadFile, status

from contract.api import CodeBundleList, CodeBundleOut, ErrorOut
from service.api.auth import CallerDep
from service.api.deps import ServicesDep, api_router, created
from service.errors import NotFound
from service.files.code_bundles import add_code_bundle, delete_code_bundle
from service.storage import store

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
        507: {"model": ErrorOut, "description": "no room on the disk (SYNCBN_DISK_BUDGET_BYTES)"},
    },
)
def upload_code(
    services: ServicesDep,
    caller: CallerDep,
    response: Response,
    file: Annotated[UploadFile, File(description=".zip or .tar.gz of Python files")],
) -> CodeBundleOut:
    """Upload a bundle of Python files holding a model builder.

    A job runs it with ``{"code": <id>, "model": "<module>:<function>"}``; the builder is
    called as ``build_model(input_shape, num_classes)`` and returns a ``torch.nn.Module``.
    The service never imports the code: Ray ships it to the workers (``working_dir``), with
    a top-level ``requirements.txt`` installed by Ray (``pip``).
    """
    row = add_code_bundle(services.db, services.settings, file.file, file.filename, caller)
    return created(response, "/v1/code", CodeBundleOut.model_validate(row))


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
            raise NotFound("code bundle", code_id)
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
def delete_code(code_id: str, services: ServicesDep, caller: CallerDep) -> Response:
    """Delete a code bundle and its files (the models it trained can no longer predict)."""
    delete_code_bundle(services.db, services.settings, code_id, caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
