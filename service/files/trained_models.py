"""A job's trained model files and predictions with them.

Rank 0 of a job writes ``workers.export.MODEL_FILE`` into every checkpoint under
``<runs>/<job>/``; Ray Train keeps the last two. The service only reads their headers (the
recipe: epoch, metrics) and serves them as they are: it never unpickles anything.

Predictions run in eval mode. A built-in model runs in the service process (off the event
loop, the loaded model cached); a code bundle's model is never imported by the service: it
runs as a short Ray Job (``python -m workers predict``) with the bundle's runtime env, which
reads the inputs from and writes the outputs to ``$SYNCBN_HOME/predictions/<id>/``.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.recipe import MODEL_FILE, read_recipe
from service.cluster import Cluster
from service.cluster.ray_jobs import is_terminal, predict_entrypoint

INPUTS_FILE, OUTPUTS_FILE = "inputs.npy", "outputs.npz"
POLL_S = 0.2


class PredictionError(RuntimeError):
    """A prediction on Ray failed; the message ends with the tail of its logs."""


@dataclass(frozen=True)
class ModelFile:
    """One kept model file of a job."""

    epoch: int
    path: Path
    recipe: dict[str, Any]

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def etag(self) -> str:
        """A strong ETag: the file's SHA-256."""
        stat = self.path.stat()
        return _sha256(str(self.path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _recipe(path: str, mtime_ns: int) -> dict[str, Any]:
    return read_recipe(path)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files(runs_dir: Path, job_id: str) -> dict[int, ModelFile]:
    """The job's kept model files by epoch (empty before its first checkpoint)."""
    found: dict[int, ModelFile] = {}
    for path in (runs_dir / job_id).glob(f"checkpoint_*/{MODEL_FILE}"):
        try:
            recipe = _recipe(str(path), path.stat().st_mtime_ns)
        except (OSError, ValueError):
            continue  # being written, or removed by Ray Train meanwhile
        found[int(recipe["epoch"])] = ModelFile(int(recipe["epoch"]), path, recipe)
    return dict(sorted(found.items()))


@functools.lru_cache(maxsize=8)
def _loaded(path: str, mtime_ns: int) -> Any:
    from workers.export import load_model  # torch: loaded with the first prediction

    model, _ = load_model(path)
    return model


def predict_builtin(file: ModelFile, raw: np.ndarray) -> dict[str, np.ndarray]:
    """Predictions of a built-in model, in this process (the model is loaded once)."""
    model = _loaded(str(file.path), file.path.stat().st_mtime_ns)
    from workers.export import predict

    return predict(model, file.recipe, raw)


def predict_on_ray(
    ray: Cluster,
    python: str,
    file: ModelFile,
    raw: np.ndarray,
    scratch: Path,
    runtime_env: dict[str, Any],
    timeout_s: float,
) -> dict[str, np.ndarray]:
    """Predictions of a code bundle's model, as a Ray Job with the bundle's ``runtime_env``;
    ``PredictionError`` (with the logs' tail) if it fails or takes over ``timeout_s``."""
    run_id = f"predict-{uuid.uuid4().hex[:12]}"
    folder = scratch / run_id
    folder.mkdir(parents=True)
    try:
        np.save(folder / INPUTS_FILE, raw)
        command = predict_entrypoint(python, file.path, folder / INPUTS_FILE, folder / OUTPUTS_FILE)
        ray.submit(run_id, command, {}, runtime_env)
        deadline = time.monotonic() + timeout_s
        status = ray.status(run_id)
        while not is_terminal(status):
            if time.monotonic() > deadline:
                ray.stop(run_id)
                raise PredictionError(f"prediction {run_id} took over {timeout_s:.0f} s")
            time.sleep(POLL_S)
            status = ray.status(run_id)
        if status != "SUCCEEDED":
            tail = "\n".join(ray.logs(run_id).splitlines()[-25:])
            raise PredictionError(f"prediction {run_id} on Ray: {status}\n{tail}")
        with np.load(folder / OUTPUTS_FILE, allow_pickle=False) as outputs:
            return {key: outputs[key] for key in outputs.files}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
