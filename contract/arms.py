"""Studies: "on MY model, data and cluster, which normalization, and at what cost?"

A study runs the same base JobSpec in up to ``MAX_ARMS`` arms, each once per seed, as
ordinary jobs in the FIFO queue. An arm is a preset or a name with JobSpec overrides:

- ``local``: ``norm="local"`` at the base's workers x batch (per-worker statistics);
- ``sync``: ``norm="sync"``, the same (over all workers, or the base's ``sync_group_size``);
- ``group``: ``norm="group"``, every BatchNorm a GroupNorm (batch-independent);
- ``reference``: one worker with the whole global batch (the statistics syncbn imitates);
- ``{"name": "sync-pairs", "overrides": {"sync_group_size": 2}}``: the base with any JobSpec
  fields changed (the norm stays the base's default, sync, unless overridden).

This module: the arms and their specs (the metric a study compares is
``contract.datasets.metric_for``, its name ``METRIC_LABELS``, shared with the client).
In ``service/studies/``, ``summary`` reduces a study's jobs to per-arm figures, ``verdict``
and ``recommendation`` say what they mean, ``runs`` creates, cancels and deletes studies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract.spec import ARM_PRESETS as PRESETS
from contract.spec import JobSpec

REFERENCE = "reference"
"""The yardstick arm: one worker with the whole global batch (skipped on a 1-worker base,
never recommended)."""
DEFAULT_ARMS = ("local", "sync", REFERENCE)
MAX_ARMS = 8
ARM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:._+-]{0,15}$"
"""Arm names: short (a job row keeps 16 characters), no spaces or slashes."""


@dataclass(frozen=True)
class Arm:
    """One arm: a preset (no overrides) or a name with the JobSpec fields it changes."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _preset_fields(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    if name == "local":
        return {"norm": "local", "sync_group_size": None}
    if name == "sync":
        return {"norm": "sync"}
    if name == "group":
        return {"norm": "group", "sync_group_size": None, "precise_bn_batches": 0}
    defaults = JobSpec.model_fields
    workers = fields.get("workers", defaults["workers"].default)
    batch = fields.get("batch_size_per_worker", defaults["batch_size_per_worker"].default)
    return {
        "workers": 1,
        "batch_size_per_worker": workers * batch,
        "norm": "sync",
        "sync_group_size": None,
    }


def arm_spec(base: dict[str, Any], arm: Arm | str, seed: int) -> JobSpec:
    """The JobSpec of ``arm`` (an ``Arm`` or a preset's name) for ``seed``; pydantic's
    ValidationError when it is invalid."""
    arm = Arm(arm) if isinstance(arm, str) else arm
    fields = {**base, "seed": seed}
    fields.update(_preset_fields(arm.name, fields) if arm.name in PRESETS else arm.overrides)
    return JobSpec.model_validate(fields)


def reference_skip_reason(base: JobSpec) -> str | None:
    """Why the reference arm is not run (None: it is). One worker with the global batch needs
    no more CPUs or GPUs than one of the base's workers, so it fits wherever the base does
    (its memory is not known here)."""
    if base.workers == 1:
        return "the base runs on 1 worker already: its sync arm is the reference"
    return None
