"""A job's trained model: list its files, download one (safetensors), predict with it.

A kept file the service refuses (a link, an invalid recipe: ``model_files``) is a 409 naming
it and why, where a route would have to use it or choose among the files: ``/models`` when no
valid file is left (else it lists the valid ones and names the refused in a
``X-Syncbn-Refused-Models`` header), the newest model (no ``epoch``), an epoch not among the
valid files. A valid epoch asked for by number is still served.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Annotated, BinaryIO

import numpy as np
from fastapi import File, Form, Header, HTTPException, Query, Response, UploadFile, status
from fastapi.responses import StreamingResponse

from contract.api import ErrorOut, ModelFileOut, ModelsOut, PredictIn, PredictOut
from contract.datasets import DatasetError
from contract.recipe import check_inputs, predict_values
from contract.spec import JobSpec
from contract.states import JobState
from service.api.deps import Services, ServicesDep, api_router
from service.api.errors import field_error
from service.cluster import RayUnavailable
from service.errors import ClusterUnavailable, Conflict
from service.files.trained_models import (
    KeptModels,
    ModelFile,
    PredictionError,
    model_files,
    predict_builtin,
    predict_on_ray,
)
from service.jobs.lifecycle import job_or_404
from service.jobs.retention import removed_reason

router = api_router("/v1/jobs", "models")
NO_MODEL = {
    404: {
        "model": ErrorOut,
        "description": "no such job, no such kept epoch, or its files removed by the retention",
    },
    409: {"model": ErrorOut, "description": "the job has not written its first checkpoint yet"},
}
CHUNK_BYTES = 1 << 20
EpochQuery = Annotated[
    int | None, Query(ge=1, description="a kept checkpoint's epoch (default: the newest)")
]


def _model_file(services: Services, job_id: str, epoch: int | None) -> ModelFile:
    """The job's model file of ``epoch`` (default: the newest), or a 404/409 saying why not."""
    with services.db.session() as session:
        job = job_or_404(session, job_id)
        state, removed = JobState(job.state), removed_reason(job, services.settings)
    if removed:
        raise HTTPException(status.HTTP_404_NOT_FOUND, removed)
    kept = model_files(services.settings.runs_dir, job_id)
    files = kept.files
    if epoch is not None and epoch in files:
        return files[epoch]
    if kept.refused:
        raise _refused(job_id, kept)
    if not files:
        if state.is_final:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"job {job_id} is {state.value} and left no checkpoint: there is no model",
            )
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id} is {state.value} and has no checkpoint yet: the first model file is "
            "written at the end of epoch 1",
        )
    if epoch is None:
        return files[max(files)]
    kept_epochs = ", ".join(str(e) for e in files)
    raise HTTPException(
        status.HTTP_404_NOT_FOUND,
        f"job {job_id} has no model file for epoch {epoch}; kept epochs: {kept_epochs}",
    )


MAX_REFUSED_SHOWN = 3


def _refused(job_id: str, kept: KeptModels) -> Conflict:
    """409: what of the job's run folder the service refuses and why, and the valid epochs."""
    shown = "; ".join(str(r) for r in kept.refused[:MAX_REFUSED_SHOWN])
    more = len(kept.refused) - MAX_REFUSED_SHOWN
    if more > 0:
        shown += f"; and {more} more"
    if kept.files:
        epochs = ", ".join(str(e) for e in kept.files)
        valid = f"the newest model cannot be told; valid kept epochs: {epochs} (ask by epoch=N)"
    else:
        valid = "no valid model file is kept"
    return Conflict(
        f"job {job_id}'s run folder holds model files the service refuses (the job's code may "
        f"have written them): {shown}. So {valid}"
    )


def _header_text(text: str, limit: int = 1000) -> str:
    """``text`` as a header value: printable ASCII (names in it are the job's), bounded."""
    text = re.sub(r"[^\x20-\x7e]", "?", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@router.get("/{job_id}/models", response_model=ModelsOut, responses={404: NO_MODEL[404]})
def list_models(job_id: str, services: ServicesDep, response: Response) -> ModelsOut:
    """The job's kept model files (one per kept checkpoint) and the newest one's recipe; none,
    with the reason, once the retention removed them."""
    with services.db.session() as session:
        removed = removed_reason(job_or_404(session, job_id), services.settings)
    if removed:
        return ModelsOut(job_id=job_id, models=[], reason=removed)
    kept = model_files(services.settings.runs_dir, job_id)
    files = kept.files
    if kept.refused:
        if not files:
            raise _refused(job_id, kept)
        response.headers["X-Syncbn-Refused-Models"] = _header_text(
            "; ".join(str(r) for r in kept.refused)
        )
    models = []
    for f in files.values():
        try:
            size, sha256 = f.size, f.etag
        except FileNotFoundError:  # removed by Ray Train meanwhile
            continue
        models.append(
            ModelFileOut(
                epoch=f.epoch,
                size_bytes=size,
                sha256=sha256,
                metrics=f.recipe["metrics"],
                bn_statistics=f.recipe["bn_statistics"],
                url=f"/v1/jobs/{job_id}/model?epoch={f.epoch}",
            )
        )
    return ModelsOut(
        job_id=job_id, models=models, recipe=files[max(files)].recipe if files else None
    )


@router.get(
    "/{job_id}/model",
    response_class=StreamingResponse,
    responses={
        **NO_MODEL,
        200: {
            "content": {"application/octet-stream": {}},
            "description": "safetensors: weights with plain BatchNorm state, recipe in metadata",
        },
        304: {"description": "If-None-Match matched the ETag"},
    },
)
def download_model(
    job_id: str,
    services: ServicesDep,
    epoch: EpochQuery = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The trained model as safetensors (the newest checkpoint, or ``epoch``'s)."""
    file = _model_file(services, job_id, epoch)
    try:  # Ray Train may delete an old checkpoint at any moment: hold the file open
        handle = file.open()  # the file whose recipe was checked, no link followed
    except FileNotFoundError:
        raise _removed(file) from None
    try:
        etag = f'"{file.etag}"'
    except BaseException as exc:
        handle.close()
        if isinstance(exc, FileNotFoundError):
            raise _removed(file) from None
        raise
    headers = {
        "ETag": etag,
        "X-Syncbn-Epoch": str(file.epoch),
        "Content-Length": str(os.fstat(handle.fileno()).st_size),
        "Content-Disposition": f'attachment; filename="{job_id}-epoch{file.epoch}.safetensors"',
    }
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}:
        handle.close()
        del headers["Content-Length"]
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return StreamingResponse(
        _chunks(handle), media_type="application/octet-stream", headers=headers
    )


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while block := handle.read(CHUNK_BYTES):
            yield block


def _removed(file: ModelFile) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        f"the model file of epoch {file.epoch} was just removed (Ray Train keeps the newest "
        "checkpoints only): ask again",
    )


@router.post(
    "/{job_id}/predict",
    response_model=PredictOut,
    responses={
        **NO_MODEL,
        422: {"description": "inputs of the wrong shape or type, or too many"},
        502: {"model": ErrorOut, "description": "a code bundle's model failed on Ray"},
    },
)
def predict(job_id: str, body: PredictIn, services: ServicesDep) -> PredictOut:
    """Predict raw samples with the trained model in eval mode (BatchNorm uses its running
    statistics, so each sample's output is independent of the others in the request)."""
    file = _model_file(services, job_id, body.epoch)
    _check_answer_size(services, file, len(body.inputs), "inputs")
    try:
        raw = check_inputs(body.inputs, file.recipe, services.settings.max_predict_samples)
    except ValueError as exc:
        raise field_error("inputs", str(exc)) from None
    return _answer(services, job_id, file, raw)


def _check_answer_size(services: Services, file: ModelFile, samples: int, field: str) -> None:
    """422 before any work when the request is larger than allowed: samples, or the numbers
    it takes in and gives back (what the model's work grows with)."""
    settings = services.settings
    if samples > settings.max_predict_samples:
        raise field_error(
            field,
            f"{samples} samples; at most {settings.max_predict_samples} per request",
            "max_predict_samples",
        )
    values = predict_values(file.recipe, samples)
    if values > settings.max_predict_values:
        raise field_error(
            field,
            f"{samples} samples of this model take in and give back {values} numbers, more "
            f"than the limit of {settings.max_predict_values} per request: send fewer samples "
            "per request",
            "max_predict_values",
        )


@router.post(
    "/{job_id}/predict/images",
    response_model=PredictOut,
    responses={
        **NO_MODEL,
        422: {"description": "not image files, undecodable, too many, or a model of arrays"},
        502: {"model": ErrorOut, "description": "a code bundle's model failed on Ray"},
    },
)
def predict_images(
    job_id: str,
    services: ServicesDep,
    files: Annotated[list[UploadFile], File(description="image files, one sample each")],
    epoch: Annotated[int | None, Form(ge=1)] = None,
) -> PredictOut:
    """Predict image files with a model trained on an image-folder upload: each is decoded,
    converted (gray or RGB) and resized as the upload was, then predicted like ``/predict``."""
    file = _model_file(services, job_id, epoch)
    recipe, settings = file.recipe, services.settings
    if recipe.get("inputs") != "images":
        raise field_error(
            "files",
            f"job {job_id}'s model was trained on arrays, not image files: POST "
            f'/v1/jobs/{job_id}/predict with {{"inputs": [...]}}',
        )
    _check_answer_size(services, file, len(files), "files")
    from workers.data.images import decode_images

    try:
        raw = decode_images(
            [(f.filename or "image", f.file.read()) for f in files],
            tuple(recipe["input_shape"]),
            max_pixels=settings.max_image_pixels,
            max_decoded_pixels=settings.max_decoded_pixels,
        )
    except DatasetError as exc:
        raise field_error("files", str(exc), exc.setting) from None
    return _answer(services, job_id, file, raw)


def _answer(services: Services, job_id: str, file: ModelFile, raw: np.ndarray) -> PredictOut:
    """Predict raw samples with ``file``'s model: a built-in one here, a code bundle's on Ray."""
    recipe = file.recipe
    if not recipe["builtin"]:
        out = _predict_user_code(services, file, raw)
    else:
        try:
            out = predict_builtin(file, raw)
        except FileNotFoundError:
            raise _removed(file) from None
    key = "masks" if recipe["task"] == "segmentation" else "predictions"
    return PredictOut(
        job_id=job_id,
        epoch=file.epoch,
        task=recipe["task"],
        classes=recipe["class_names"],
        probabilities=np.asarray(out["probabilities"]).tolist(),
        **{key: np.asarray(out[key]).tolist()},
    )


def _predict_user_code(services: Services, file: ModelFile, raw: np.ndarray) -> dict:
    """A code bundle's model runs on Ray, never in the service."""
    spec = JobSpec.model_validate(file.recipe["spec"])
    settings = services.settings
    if spec.code is not None and not (settings.code_dir / spec.code).is_dir():
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"the code bundle {spec.code} that builds this model was deleted: the model file "
            "can still be downloaded, but the service can no longer run it",
        )
    with services.db.session() as session:
        env = services.lifecycle.runtime_env(session, spec)
    try:
        return predict_on_ray(
            services.ray,
            settings.worker_python,
            file,
            raw,
            settings.predictions_dir,
            env or {},
            settings.predict_timeout_s,
        )
    except PredictionError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from None
    except RayUnavailable as exc:
        raise ClusterUnavailable(str(exc)) from None
