"""The trained model file's format, as far as it is read without torch: its name in a
checkpoint, the recipe in its safetensors metadata (``Recipe``, ``read_recipe``), and what a
prediction with it takes and gives (``check_inputs``, ``predict_values``).

A model file is safetensors: an 8-byte little-endian header length, a JSON header (tensor
offsets and a ``__metadata__`` map of strings), then the tensors. The recipe is the JSON
string under ``RECIPE_KEY`` (``workers.export.recipe_for`` writes it). Reading it takes the
header only, so the service lists and checks model files without loading torch.

A job's files are untrusted input (its user code shares them), so the recipe is validated
with bounds (``Recipe``) before anything uses it: ``read_recipe`` and ``recipe_from`` give it
as a plain dict (the JSON the worker wrote, checked) or raise ``RecipeError`` saying which
field is wrong.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.datasets import MAX_CLASSES, Task
from contract.model_choice import check_compatible
from contract.protocol import MAX_EPOCH
from contract.spec import BUILTIN_MODELS, CODE_ID_RE, JobSpec

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
"""Beside a checkpoint's model file: rank 0's training state (model, optimizer, position), what
a resumed job continues from (``workers.checkpoint``); never served, never backed up."""
RECIPE_KEY = "syncbn.recipe"
RECIPE_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
"""The largest safetensors header read (the tensor index and the metadata with the recipe).
Measured on files ``workers.export`` writes: 2.1 kB (digits, mlp), 4.4 kB (digits, resnet:
38 tensors, a 0.9 kB recipe), 4.2 kB (shapes, unet), 15.1 kB for a segmentation model with
255 named classes (an 11.4 kB recipe). Each tensor takes about 90 bytes of the index, so
1 MiB also holds a code bundle's model of about 10,000 tensors or the longest recipe
``Recipe`` allows (1000 class names of 512 characters), at 70 times the largest measured.
safetensors itself allows 100 MiB, which a job could make the service read and parse on
every listing."""

MAX_DIMS = 3
"""Dimensions of one sample: (F,), (C, L), (H, W) or (C, H, W), as datasets allow."""
MAX_SIDE = 1 << 16
MAX_SAMPLE_VALUES = 1 << 27
"""Values of one sample at most: 512 MiB of float32, the default ``max_dataset_memory``."""
MAX_NAME_CHARS = 512
"""A class name, a dataset name or a metric's name at most (characters)."""
MAX_TEXT_CHARS = 2000
MAX_METRICS = 64
MAX_ERROR_CHARS = 600
"""``RecipeError`` messages at most (a refusal names at most three fields)."""

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
ClassName = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


class RecipeError(ValueError):
    """Not a valid syncbn model file; the message says why (the field, for a recipe).
    ``incomplete``: the file is shorter than its header says (being written or copied)."""

    def __init__(self, message: str, incomplete: bool = False) -> None:
        super().__init__(message)
        self.incomplete = incomplete


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Standardize(_Closed):
    mean: float
    std: float = Field(gt=0)


class Preprocess(_Closed):
    standardize: Standardize


class Recipe(_Closed):
    """How to rebuild and feed a trained model: the recipe of ``workers.export.recipe_for``,
    every field bounded and consistent with the others (a built-in model suits its samples'
    shape and task; ``builtin`` and ``code`` agree with the spec)."""

    version: int = Field(ge=1, le=RECIPE_VERSION)
    model: str = Field(
        min_length=1, max_length=200, description="a built-in model, or the bundle's builder"
    )
    code: str | None = None
    builtin: bool
    input_shape: list[Annotated[int, Field(ge=1, le=MAX_SIDE)]] = Field(
        min_length=1, max_length=MAX_DIMS
    )
    num_classes: int = Field(ge=1, le=MAX_CLASSES)
    class_names: list[ClassName] | None = Field(None, max_length=MAX_CLASSES)
    task: Task
    dataset: Name
    inputs: Literal["arrays", "images"] = "arrays"
    """Absent from files written before image-folder uploads (read as ``arrays``)."""
    preprocess: Preprocess
    bn_statistics: str = Field(max_length=MAX_TEXT_CHARS)
    epoch: int = Field(ge=1, le=MAX_EPOCH)
    metrics: dict[Name, float | None] = Field(max_length=MAX_METRICS)
    spec: JobSpec

    @field_validator("code")
    @classmethod
    def _code_id(cls, value: str | None) -> str | None:
        if value is not None and not CODE_ID_RE.match(value):
            raise ValueError("must be the id of a code bundle, like code-0123456789ab")
        return value

    @field_validator("metrics", mode="before")
    @classmethod
    def _finite_or_none(cls, value: Any) -> Any:
        """A diverged metric (NaN, infinite) reads as null, as the worker reports it."""
        if isinstance(value, dict):
            return {
                k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in value.items()
            }
        return value

    @field_validator("input_shape")
    @classmethod
    def _sample_size(cls, shape: list[int]) -> list[int]:
        if math.prod(shape) > MAX_SAMPLE_VALUES:
            raise ValueError(f"{shape}: over {MAX_SAMPLE_VALUES} values per sample")
        return shape

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        shape, spec = tuple(self.input_shape), self.spec
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names: {len(self.class_names)} names for num_classes={self.num_classes}"
            )
        if self.task == "segmentation" and len(shape) < 2:
            raise ValueError(
                f"input_shape: segmentation samples have 2 or 3 dimensions, not {shape}"
            )
        if self.builtin != (spec.code is None) or self.code != spec.code:
            raise ValueError(
                f"builtin={self.builtin} and code={self.code!r} disagree with the spec's "
                f"code={spec.code!r}"
            )
        if not self.builtin:
            if self.model != spec.model:
                raise ValueError(f"model: {self.model!r} is not the spec's builder {spec.model!r}")
            return self
        if self.model not in BUILTIN_MODELS or self.model == "auto":
            raise ValueError(f"model: {self.model!r} is not a built-in model")
        if (self.model == "unet") != (self.task == "segmentation"):
            raise ValueError(f"model: {self.model!r} does not do {self.task}")
        try:
            check_compatible(self.model, shape)
        except ValueError as exc:
            raise ValueError(f"model: {exc}") from None
        return self


def validate_recipe(data: Any) -> dict[str, Any]:
    """``data`` (a recipe as JSON gives it) as a validated dict: the same keys and values as
    written (numbers as the fields' types); ``RecipeError`` naming the fields that are wrong."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        epoch = data.get("epoch") if isinstance(data, dict) else None
        of = f" of epoch {epoch}" if type(epoch) is int and 0 < epoch <= MAX_EPOCH else ""
        raise RecipeError(f"invalid recipe{of}: {_why(exc)}") from None
    return recipe.model_dump(mode="json", exclude_unset=True)


def _why(exc: ValidationError) -> str:
    """The first three problems, each ``field: message``, in bounded words (a recipe's keys and
    values are a job's to choose)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = []
    for error in errors[:3]:
        where = ".".join(_short(str(p), 64) for p in error["loc"]) or "recipe"
        parts.append(f"{where}: {_short(error['msg'], 200)}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return _short("; ".join(parts) + more, MAX_ERROR_CHARS)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def recipe_from(handle: BinaryIO) -> tuple[dict[str, Any], int]:
    """The validated recipe in the model file open as ``handle`` (at its start; reads the header
    only) and the recipe's size in bytes of JSON; ``RecipeError`` if the file is not a valid
    syncbn model file (``incomplete``: shorter than its header says, e.g. cut short by a full
    disk or still being copied)."""
    prefix = handle.read(8)
    if len(prefix) != 8:
        raise RecipeError("not a safetensors file (too short)", incomplete=True)
    (size,) = struct.unpack("<Q", prefix)
    if size > MAX_HEADER_BYTES:
        raise RecipeError(
            f"a safetensors header of {size} bytes, over the limit of {MAX_HEADER_BYTES} "
            "(a syncbn model file's is a few kB)"
        )
    header = handle.read(size)
    if len(header) != size:
        raise RecipeError(
            f"shorter than its header says ({len(header) + 8} of {size + 8} bytes)",
            incomplete=True,
        )
    parsed = _json(header, "its safetensors header")
    data_end = _data_end(parsed)
    have = _file_size(handle) - 8 - size
    if have < data_end:
        raise RecipeError(
            f"shorter than its header says ({have + 8 + size} of {data_end + 8 + size} bytes)",
            incomplete=True,
        )
    text = _metadata(parsed).get(RECIPE_KEY)
    if not isinstance(text, str):
        raise RecipeError(f"not a syncbn model file (no {RECIPE_KEY!r} metadata)")
    return validate_recipe(_json(text, "its recipe")), len(text)


def _data_end(parsed: Any) -> int:
    """Where the tensors' data ends (after the header), from their ``data_offsets``."""
    if not isinstance(parsed, dict):
        raise RecipeError("not a safetensors file (its header is not a JSON object of objects)")
    end = 0
    for name, entry in parsed.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets)
        ):
            raise RecipeError(f"not a safetensors file (tensor {_short(str(name), 100)!r})")
        end = max(end, offsets[1])
    return end


def _file_size(handle: BinaryIO) -> int:
    try:
        return os.fstat(handle.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # not a real file: seek to its end and back
        where = handle.tell()
        try:
            return handle.seek(0, os.SEEK_END)
        finally:
            handle.seek(where)


def _metadata(parsed: Any) -> dict[str, Any]:
    metadata = parsed.get("__metadata__") if isinstance(parsed, dict) else None
    if not isinstance(parsed, dict) or not isinstance(metadata, dict | None):
        raise RecipeError("not a safetensors file (its header is not a JSON object of objects)")
    return metadata or {}


def _json(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, digits
        raise RecipeError(f"{what} is not JSON ({_short(str(exc), 200)})") from None


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The validated recipe in a model file's metadata (reads the header only); ``RecipeError``
    (a ValueError) naming the file if it is not a valid syncbn model file."""
    with open(path, "rb") as handle:
        try:
            return recipe_from(handle)[0]
        except RecipeError as exc:
            raise RecipeError(f"{path}: {exc}", exc.incomplete) from None


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
