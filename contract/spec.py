"""The one definition of a training job: ``JobSpec``.

The CLI reads it from a JSON file and the REST service validates request bodies with it, so
both reject the same things with the same field-named errors (pydantic's ``loc``). The module
imports nothing heavy (no torch, no ray).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

BUILTIN_DATASETS = ("digits", "synthetic", "shapes")
"""Datasets every worker can build itself; any other ``dataset`` is an uploaded dataset id."""
BUILTIN_MODELS = ("auto", "mlp", "cnn1d", "resnet", "unet")
"""Models every worker can build; any other ``model`` is a builder in a code bundle."""

DATASET_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""Uploaded dataset ids: a file name stem, never a path."""
CODE_ID_RE = re.compile(r"^code-[0-9a-f]{12}$")
"""Uploaded code bundle ids (made by the server)."""
ENTRY_POINT_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
"""A builder in a bundle, as uvicorn names an app: ``package.module:function``."""

NormName = Literal["sync", "local", "group"]
Precision = Literal["fp32", "bf16"]

SET_BY_STUDY = ("norm", "seed")
"""JobSpec fields a study sets itself (per arm, per seed): a study's base leaves them out."""
ARM_PRESETS: dict[str, str] = {
    "local": "per-worker BatchNorm (norm=local)",
    "sync": "syncbn over the workers (norm=sync)",
    "group": "GroupNorm instead of BatchNorm (norm=group)",
    "reference": "1 worker with the whole global batch (what syncbn imitates)",
}
"""A study's preset arms by name, with what each runs (``contract.arms``)."""
PresetName = Literal["local", "sync", "group", "reference"]
"""The names of ``ARM_PRESETS`` as a type (for the API schema)."""


class JobSpec(BaseModel):
    """A training job: which data, which model, how many workers, how to normalize.

    The global batch is ``workers * batch_size_per_worker``. With ``norm="sync"`` every
    worker normalizes with the statistics of the global batch (or of its group of
    ``sync_group_size`` consecutive workers); with ``norm="local"`` each worker uses its own;
    with ``norm="group"`` every BatchNorm layer becomes a GroupNorm (no batch statistics).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(
        description='"digits", "synthetic", "shapes" (segmentation) or an uploaded dataset id',
        min_length=1,
        max_length=64,
    )
    code: str | None = Field(
        None,
        description="id of an uploaded code bundle (POST /v1/code) holding the model's builder",
        examples=[None],
    )
    model: str = Field(
        "auto",
        description='"auto" chooses by the data, a built-in model (mlp, cnn1d, resnet, unet), '
        'or with code: the builder "<module>:<function>", called as '
        "build_model(input_shape, num_classes) -> torch.nn.Module",
        examples=list(BUILTIN_MODELS),
        max_length=200,
    )
    workers: int = Field(2, ge=1, le=256, description="Ray Train workers (one process each)")
    batch_size_per_worker: int = Field(
        16,
        ge=1,
        le=65536,
        description="samples per worker per step (the global batch is workers x this)",
    )
    epochs: int = Field(3, ge=1, le=10000, description="passes over the training split")
    lr: float = Field(0.05, gt=0, le=10.0, description="peak SGD learning rate (cosine decay)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="SGD weight decay (L2)")
    norm: NormName = Field(
        "sync",
        description="sync: BatchNorm with the global batch's statistics (syncbn); local: each "
        "worker's own; group: every BatchNorm layer becomes a GroupNorm (batch-independent, "
        "no communication)",
    )
    sync_group_size: int | None = Field(
        None, ge=1, description="synchronize BN within consecutive groups of this many workers"
    )
    group_norm_groups: int | None = Field(
        None,
        ge=1,
        le=1024,
        description='norm="group": groups per layer (must divide every layer\'s channels); '
        "default: the largest divisor of each layer's channels up to 32",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="seeds the initial weights and the shuffling (the train/test split is fixed)",
    )
    report_every_steps: int = Field(
        0, ge=0, description="also report every k optimizer steps (0: once per epoch only)"
    )
    max_failures: int = Field(
        1, ge=0, le=100, description="worker failures to recover from (from the last checkpoint)"
    )
    precision: Precision = Field(
        "fp32",
        description="bf16: mixed precision with torch.autocast (syncbn keeps its statistics "
        "in fp32)",
    )
    compile: bool = Field(
        False, description="torch.compile the model (syncbn traces with no graph break)"
    )
    precise_bn_batches: int = Field(
        0,
        ge=0,
        le=10000,
        description="before each evaluation, set the BN running statistics to the exact "
        "population statistics of this many batches per worker under the current weights "
        "(syncbn.precise_bn); 0: off (the running averages)",
    )
    cpus_per_worker: float = Field(
        1.0, gt=0, le=1024, description="logical CPUs Ray reserves for each worker"
    )
    use_gpu: bool = Field(
        False, description="one GPU per worker (NCCL); needs GPUs in the Ray cluster"
    )

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        if value in BUILTIN_DATASETS or DATASET_ID_RE.match(value):
            return value
        raise ValueError(
            f"must be one of {', '.join(BUILTIN_DATASETS)} or an uploaded dataset id "
            "(letters, digits, '_' and '-', at most 64 characters)"
        )

    @field_validator("code")
    @classmethod
    def _code_id(cls, value: str | None) -> str | None:
        if value is None or CODE_ID_RE.match(value):
            return value
        raise ValueError("must be the id of an uploaded code bundle, like code-0123456789ab")

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str, info: ValidationInfo) -> str:
        # Runs after ``code`` (declared earlier), so the error names this field.
        code = info.data.get("code")
        if value in BUILTIN_MODELS:
            if code is not None:
                raise ValueError(
                    f"{value!r} is built in; with code={code!r} name the bundle's builder as "
                    '"<module>:<function>"'
                )
            return value
        if not ENTRY_POINT_RE.match(value):
            raise ValueError(
                f"must be one of {', '.join(BUILTIN_MODELS)} or a builder "
                '"<module>:<function>" in the code bundle, like "mynet:build_model"'
            )
        if code is None and "code" in info.data:  # (an invalid code has its own error)
            raise ValueError(
                f"the builder {value!r} needs code: the id of an uploaded code bundle "
                "(POST /v1/code)"
            )
        return value

    @field_validator("sync_group_size")
    @classmethod
    def _groups_divide_workers(cls, group: int | None, info: ValidationInfo) -> int | None:
        # Runs after ``workers`` and ``norm`` (declared earlier), so the error names this field.
        workers, norm = info.data.get("workers"), info.data.get("norm")
        if group is None:
            return None
        if norm in ("local", "group"):
            raise ValueError(f'only meaningful with norm="sync" (not {norm!r})')
        if workers is not None and workers % group:
            raise ValueError(f"{group} does not divide workers={workers}; choose a divisor")
        return group

    @field_validator("group_norm_groups")
    @classmethod
    def _groups_need_group_norm(cls, groups: int | None, info: ValidationInfo) -> int | None:
        if groups is not None and info.data.get("norm") not in ("group", None):
            raise ValueError('only meaningful with norm="group"')
        return groups

    @field_validator("precise_bn_batches")
    @classmethod
    def _precise_needs_batchnorm(cls, batches: int, info: ValidationInfo) -> int:
        if batches and info.data.get("norm") == "group":
            raise ValueError('norm="group" has no BatchNorm statistics to make precise: use 0')
        return batches

    @property
    def builder(self) -> tuple[str, str] | None:
        """``(module, function)`` of a code bundle's builder; None for a built-in model."""
        if self.code is None:
            return None
        module, _, function = self.model.partition(":")
        return module, function

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step over all workers."""
        return self.workers * self.batch_size_per_worker

    @property
    def is_builtin_dataset(self) -> bool:
        """True for ``digits``/``synthetic``; False for an uploaded dataset id."""
        return self.dataset in BUILTIN_DATASETS

    def resources_per_worker(self) -> dict[str, float]:
        """Ray resources one worker asks for."""
        resources = {"CPU": float(self.cpus_per_worker)}
        if self.use_gpu:
            resources["GPU"] = 1.0
        return resources
