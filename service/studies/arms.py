"""Small-batch studies: "on MY model and data, what does synchronizing BatchNorm buy?"

A study runs the same base JobSpec in up to three arms, each once per seed, as ordinary jobs
in the FIFO queue:

- ``local``: ``norm="local"`` at the base's workers x batch (per-worker statistics);
- ``sync``: ``norm="sync"``, the same;
- ``reference``: one worker with the whole global batch (the statistics syncbn imitates).

This module: the arms and their specs (the metric a study compares is
``contract.datasets.metric_for``, its name ``METRIC_LABELS``, shared with the client).
``summary`` reduces a study's jobs to per-arm figures, ``verdict`` says what they mean,
``runs`` creates, cancels and deletes studies.
"""

from __future__ import annotations

from typing import Any, Literal

from contract.spec import JobSpec

ArmName = Literal["local", "sync", "reference"]
ARMS: tuple[ArmName, ...] = ("local", "sync", "reference")


def arm_spec(base: dict[str, Any], arm: ArmName, seed: int) -> JobSpec:
    """The JobSpec of ``arm`` for ``seed`` (ValidationError when the base is invalid)."""
    fields = {**base, "seed": seed}
    if arm == "local":
        fields.update(norm="local", sync_group_size=None)
    elif arm == "sync":
        fields.update(norm="sync")
    else:
        defaults = JobSpec.model_fields
        workers = fields.get("workers", defaults["workers"].default)
        batch = fields.get("batch_size_per_worker", defaults["batch_size_per_worker"].default)
        fields.update(
            workers=1, batch_size_per_worker=workers * batch, norm="sync", sync_group_size=None
        )
    return JobSpec.model_validate(fields)


def reference_skip_reason(base: JobSpec) -> str | None:
    """Why the reference arm is not run (None: it is). One worker with the global batch needs
    no more CPUs or GPUs than one of the base's workers, so it fits wherever the base does
    (its memory is not known here)."""
    if base.workers == 1:
        return "the base runs on 1 worker already: its sync arm is the reference"
    return None
