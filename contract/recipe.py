"""The trained model file's format, as far as it is read without torch: its name in a
checkpoint, the recipe in its safetensors metadata (``read_recipe``), and what a prediction
with it takes and gives (``check_inputs``, ``predict_values``).

A model file is safetensors: an 8-byte little-endian header length, a JSON header (tensor
offsets and a ``__metadata__`` map of strings), then the tensors. The recipe is the JSON
string under ``RECIPE_KEY`` (see ``workers.export`` for its fields). Reading it takes the
header only, so the service lists and checks model files without loading torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

MODEL_FILE = "model.safetensors"
RECIPE_KEY = "syncbn.recipe"
RECIPE_VERSION = 1
MAX_HEADER_BYTES = 100 << 20
"""safetensors' own bound on a header."""


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe in a model file's metadata (reads the header only); ValueError if the file
    is not a syncbn model file."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", prefix)
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: not a safetensors file (a header of {size} bytes)")
        header = handle.read(size)
    try:
        metadata = json.loads(header).get("__metadata__") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a safetensors file ({exc})") from exc
    if RECIPE_KEY not in metadata:
        raise ValueError(f"{path}: not a syncbn model file (no {RECIPE_KEY!r} metadata)")
    return json.loads(metadata[RECIPE_KEY])


def check_inputs(raw: Any, recipe: dict[str, Any], max_samples: int) -> Any:
    """Raw samples as a float64 numpy array ``(N, *input_shape)``; ValueError saying what is
    wrong."""
    import numpy as np

    shape = tuple(recipe["input_shape"])
    want = f"a list of samples, each of shape {list(shape)} as the dataset provides them"
    try:
        array = np.asarray(raw)
    except ValueError:
        raise ValueError(f"must be {want}; the samples' shapes differ") from None
    if array.dtype.kind not in "iuf":
        raise ValueError(f"must be {want}, of numbers (found {array.dtype.name} values)")
    if array.ndim != len(shape) + 1 or array.shape[1:] != shape or len(array) == 0:
        raise ValueError(
            f"must be {want} (before preprocessing); got an array of shape {list(array.shape)}"
        )
    if len(array) > max_samples:
        raise ValueError(f"{len(array)} samples; at most {max_samples} per request")
    if not np.isfinite(array).all():
        raise ValueError("contains NaN or infinite values")
    return array.astype(np.float64)


def predict_values(recipe: dict[str, Any], samples: int) -> int:
    """The numbers a prediction of ``samples`` samples takes in (their input values) and gives
    back (their probabilities): what its time and memory grow with."""
    inputs = 1
    for side in recipe["input_shape"]:
        inputs *= int(side)
    outputs = int(recipe["num_classes"])
    if recipe["task"] == "segmentation":
        outputs *= int(recipe["input_shape"][-2]) * int(recipe["input_shape"][-1])
    return samples * (inputs + outputs)
