"""The study's verdict: what synchronizing BatchNorm bought, in plain words, from the arms'
figures (pure)."""

from __future__ import annotations

from contract.arms import REFERENCE
from service.studies.summary import ArmSummary


def _points(value: float) -> str:
    return f"{100 * value:.1f}"


def _overlap(a: list[float], b: list[float]) -> bool:
    return max(a) >= min(b) and max(b) >= min(a)


def verdict(
    arms: dict[str, ArmSummary], metric: str, reference_label: str, pending: int
) -> str | None:
    """Plain words on what syncbn bought, from the finished jobs; None before any result, and
    for a study without both the ``local`` and the ``sync`` arm (its recommendation speaks)."""
    local, sync = arms.get("local"), arms.get("sync")
    if local is None or sync is None:
        return None
    if not local.metrics or not sync.metrics:
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
    reference = arms.get(REFERENCE)
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
