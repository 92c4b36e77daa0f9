"""A study's jobs reduced to per-arm figures (pure): each job's metric, step time and curve,
and each arm's mean and spread over its seeds."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


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
    allreduce_bytes_per_step: float | None = None
    """What one rank sent for BatchNorm per optimizer step (0: no communication)."""


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
    def allreduce_bytes_per_step(self) -> float | None:
        """Mean over the seeds of what one rank sent for BatchNorm per step."""
        return _mean(
            [
                j.allreduce_bytes_per_step
                for j in self.jobs
                if j.allreduce_bytes_per_step is not None
            ]
        )

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
