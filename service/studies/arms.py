"""Small-batch studies: "on MY model and data, what does synchronizing BatchNorm buy?"

A study runs the same base JobSpec in up to three arms, each once per seed, as ordinary jobs
in the FIFO queue:

- ``local``: ``norm="local"`` at the base's workers x batch (per-worker statistics);
- ``sync``: ``norm="sync"``, the same;
- ``reference``: one worker with the whole global batch (the statistics syncbn imitates).

Everything here is pure: arm specs from a base, per-arm summaries from finished jobs, and the
verdict in plain words. The routes (``service.api.routes.studies``) do the I/O.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from contract.spec import JobSpec

ArmName = Literal["local", "sync", "reference"]
ARMS: tuple[ArmName, ...] = ("local", "sync", "reference")
SET_BY_STUDY = ("norm", "seed")
"""JobSpec fields a study sets itself: a base must leave them out."""


class StudyError(ValueError):
    """A study that cannot be run; ``loc`` names the request field (e.g. ``base.workers``)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


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


@dataclass
class JobFigures:
    """What a summary needs of one finished (or running) job."""

    job_id: str
    seed: int
    state: str
    metric: float | None
    step_time_s: float | None
    sync_time_s: float | None
    curve: dict[int, float] = field(default_factory=dict)
    """Test metric by epoch."""


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)


@dataclass
class ArmSummary:
    """One arm over its seeds."""

    name: str
    jobs: list[JobFigures]

    @property
    def metrics(self) -> list[float]:
        return [j.metric for j in self.jobs if j.state == "succeeded" and j.metric is not None]

    @property
    def metric_mean(self) -> float | None:
        return _mean(self.metrics)

    @property
    def metric_std(self) -> float | None:
        return _std(self.metrics)

    @property
    def step_time_s_mean(self) -> float | None:
        return _mean([j.step_time_s for j in self.jobs if j.step_time_s is not None])

    @property
    def sync_time_share(self) -> float | None:
        step = self.step_time_s_mean
        sync = _mean([j.sync_time_s for j in self.jobs if j.sync_time_s is not None])
        return None if not step or sync is None else sync / step

    def curve(self) -> list[dict[str, float | int | None]]:
        """Per epoch: the mean and std of the test metric over the seeds that reached it."""
        epochs = sorted({e for j in self.jobs for e in j.curve})
        points = []
        for epoch in epochs:
            values = [j.curve[epoch] for j in self.jobs if epoch in j.curve]
            points.append(
                {"epoch": epoch, "mean": _mean(values), "std": _std(values), "n": len(values)}
            )
        return points


def _points(value: float) -> str:
    return f"{100 * value:.1f}"


def _overlap(a: list[float], b: list[float]) -> bool:
    return max(a) >= min(b) and max(b) >= min(a)


def verdict(
    arms: dict[str, ArmSummary], metric: str, reference_label: str, pending: int
) -> str | None:
    """Plain words on what syncbn bought, from the finished jobs; None before any result."""
    local, sync = arms.get("local"), arms.get("sync")
    if local is None or sync is None or not local.metrics or not sync.metrics:
        if pending:
            return None
        return "no verdict: the local and sync arms both need at least one succeeded job"
    a, b = local.metrics, sync.metrics
    n = min(len(a), len(b))
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    noise = "ranges overlap" if _overlap(a, b) else "ranges do not overlap"
    if n < 2:
        noise = "one seed: no estimate of seed noise"
    gain = sync.metric_mean - local.metric_mean  # type: ignore[operator]
    reference = arms.get("reference")
    if n >= 2 and _overlap(a, b):
        text = (
            f"no difference beyond seed noise: per-worker BN {_points(local.metric_mean)} ± "
            f"{_points(local.metric_std)}, syncbn {_points(sync.metric_mean)} ± "
            f"{_points(sync.metric_std)} {metric} points ({seeds}; {noise})"
        )
    elif reference is not None and reference.metrics:
        gap = reference.metric_mean - local.metric_mean  # type: ignore[operator]
        between = f"per-worker BN and the {reference_label} reference"
        if gap <= 0:
            text = (
                f"per-worker BN is not behind the {reference_label} reference here "
                f"({_points(local.metric_mean)} vs {_points(reference.metric_mean)} {metric} "
                f"points); syncbn {'gains' if gain >= 0 else 'loses'} {_points(abs(gain))} "
                f"points over it ({seeds}; {noise})"
            )
        elif gain >= gap:
            text = (
                f"syncbn closes the whole {_points(gap)}-point {metric} gap between {between}, "
                f"ending {_points(gain - gap)} points above the reference ({seeds}; {noise})"
            )
        else:
            text = (
                f"syncbn recovers {_points(gain)} of the {_points(gap)}-point {metric} gap "
                f"between {between} ({seeds}; {noise})"
            )
    else:
        verb = "gains" if gain >= 0 else "loses"
        text = (
            f"syncbn {verb} {_points(abs(gain))} {metric} points over per-worker BN "
            f"({seeds}; {noise})"
        )
    if local.step_time_s_mean and sync.step_time_s_mean:
        cost = sync.step_time_s_mean / local.step_time_s_mean - 1
        more = "more" if cost >= 0 else "less"
        text += f"; it costs {abs(100 * cost):.0f} % {more} time per step"
    if pending:
        text += f" (so far: {pending} job{'s' if pending != 1 else ''} still to finish)"
    return text + "."
