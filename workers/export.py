"""The trained model as a file: safetensors weights plus the recipe to rebuild and feed it.

Rank 0 writes ``MODEL_FILE`` into every checkpoint. It holds the model's ``state_dict`` with
plain BatchNorm state (a ``syncbn.SyncBatchNorm`` has exactly ``torch.nn.BatchNorm*d``'s
``weight``, ``bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked``), so it
loads into the model built without syncbn. No pickle: safetensors holds only tensors, and
the recipe is JSON in the file's metadata (``RECIPE_KEY``):

- ``model`` (the built-in architecture, ``auto`` resolved) or ``code`` and the builder;
- ``input_shape``, ``num_classes``, ``class_names``, ``task``, and ``inputs``: ``images``
  when the raw samples were image files (decoded as ``workers.data.images.decode_image``
  does), else ``arrays``;
- ``preprocess``: ``{"standardize": {"mean": m, "std": s}}``, applied to raw samples as
  ``(raw - m) / s`` (``workers.data.arrays.standardize``);
- ``bn_statistics``: where the running statistics come from;
- ``spec`` (the JobSpec), ``epoch`` and ``metrics`` (that epoch's evaluation).

``load_model`` rebuilds a built-in model from a file; ``predict`` runs it on raw samples.
Reading the recipe and checking a prediction's inputs need no torch: ``contract.recipe``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.model_choice import infer_kind
from contract.recipe import RECIPE_KEY, RECIPE_VERSION, read_recipe
from contract.spec import JobSpec
from workers.data.arrays import ArrayDataset, standardize
from workers.nets import model_from_recipe

PREDICT_CHUNK_VALUES = 1 << 18
"""Input values per forward pass of ``predict`` (the rest of a request waits its turn), so a
request's activations stay small whatever its sample count."""


def bn_statistics(spec: JobSpec) -> str:
    """Plain words on whose BatchNorm running statistics a job's file holds."""
    if spec.norm == "group":
        return "none: norm=group replaced every BatchNorm by GroupNorm, which keeps no statistics"
    if spec.precise_bn_batches:
        return (
            f"precise: the exact population statistics of {spec.precise_bn_batches} batches "
            f"per worker on all {spec.workers} workers, under the epoch's final weights"
        )
    if spec.norm == "local":
        return "rank 0's running averages (norm=local: every worker keeps its own)"
    if spec.sync_group_size and spec.sync_group_size < spec.workers:
        return (
            f"rank 0's running averages of its group's synchronized statistics (sync_group_size="
            f"{spec.sync_group_size}: each group of workers keeps its own)"
        )
    return "running averages of the synchronized batch statistics (the same on every worker)"


def recipe_for(
    spec: JobSpec, data: ArrayDataset, epoch: int, metrics: dict[str, Any]
) -> dict[str, Any]:
    """The recipe of ``spec`` trained on ``data``, as of ``epoch`` with its ``metrics``."""
    builtin = spec.builder is None
    return {
        "version": RECIPE_VERSION,
        "model": infer_kind(data.input_shape, data.task) if spec.model == "auto" else spec.model,
        "code": spec.code,
        "builtin": builtin,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "class_names": list(data.class_names) if data.class_names else None,
        "task": data.task,
        "dataset": data.name,
        "inputs": "images" if data.from_images else "arrays",
        "preprocess": {"standardize": {"mean": data.mean, "std": data.std}},
        "bn_statistics": bn_statistics(spec),
        "epoch": epoch,
        "metrics": metrics,
        "spec": spec.model_dump(mode="json"),
    }


def write_model_file(path: str | Path, model: nn.Module, recipe: dict[str, Any]) -> Path:
    """Write ``model``'s weights and buffers (CPU copies) and ``recipe`` as safetensors: to a
    temporary name, flushed to disk, then renamed, so a reader never sees a torn file."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as handle:
        handle.write(save(tensors, metadata={RECIPE_KEY: json.dumps(recipe)}))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def load_model(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """The trained model of a file, in eval mode, and its recipe.

    A built-in model is rebuilt from the recipe (``workers.nets.model_from_recipe``); for a
    code bundle's model pass ``model``, built by the bundle's builder (with
    ``workers.nets.saved_layers`` for its normalization).
    """
    from safetensors.torch import load_file

    recipe = read_recipe(path)
    if model is None:
        model = model_from_recipe(recipe)
    model.load_state_dict(load_file(str(path)))
    return model.eval(), recipe


def predict(model: nn.Module, recipe: dict[str, Any], raw: np.ndarray) -> dict[str, Any]:
    """Eval-mode predictions for raw samples (preprocessed as in training): ``probabilities``
    ``(N, K)`` and ``predictions`` ``(N,)``; for segmentation ``probabilities``
    ``(N, K, H, W)`` and ``masks`` ``(N, H, W)``. Each sample's output is independent of the
    others (BatchNorm uses its running statistics), so they run in chunks of at most
    ``PREDICT_CHUNK_VALUES`` input values."""
    scale = recipe["preprocess"]["standardize"]
    chunk = max(1, PREDICT_CHUNK_VALUES // max(1, int(np.prod(raw.shape[1:]))))
    model.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(raw), chunk):
            x = torch.from_numpy(standardize(raw[start : start + chunk], **scale))
            parts.append(torch.softmax(model(x).float(), dim=1))
    probabilities = torch.cat(parts)
    labels = probabilities.argmax(1).numpy()
    key = "masks" if recipe["task"] == "segmentation" else "predictions"
    return {"probabilities": probabilities.numpy(), key: labels}
