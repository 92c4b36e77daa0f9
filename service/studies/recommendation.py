"""Which arm a study recommends (pure): the cheapest arm, by step time, among those whose
metric is within seed noise of the best, with a sentence that gives the numbers.

Seed noise: an arm is within noise of the best when its mean is no further below the best
mean than the larger of the two arms' standard deviations over seeds (with one seed there is
no estimate, and the sentence says so). Arms without a succeeded job take no part (the
sentence names them), and while jobs are still running the recommendation is "so far".

The ``reference`` arm (one worker with the whole global batch) is a yardstick, not a choice
for the base's workers x batch: it is never recommended, and the sentence ends with its
figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.arms import REFERENCE
from contract.states import FINAL_STATES
from service.studies.summary import ArmSummary


@dataclass(frozen=True)
class Recommendation:
    """The arm to use, and why, in plain words with the numbers."""

    arm: str
    reason: str


def _figure(arm: ArmSummary) -> str:
    mean, std = arm.metric_mean, arm.metric_std
    return f"{mean:.3f}" if len(arm.metrics) < 2 else f"{mean:.3f} ± {std:.3f}"


def _price(arm: ArmSummary) -> str:
    """ " with no communication", " sending ... per step", or "" when not known."""
    sent = arm.allreduce_bytes_per_step
    if sent is None:
        return ""
    if sent == 0:
        return " with no communication"
    return f" sending {sent / 1000:.1f} kB per step for BatchNorm"


def within_noise(arm: ArmSummary, best: ArmSummary) -> bool:
    """Whether ``arm``'s metric is within seed noise of ``best``'s (both have results)."""
    noise = max(arm.metric_std or 0.0, best.metric_std or 0.0)
    return arm.metric_mean >= best.metric_mean - noise  # type: ignore[operator]


def _ratio(slow: ArmSummary, fast: ArmSummary) -> str | None:
    if not slow.step_time_s_mean or not fast.step_time_s_mean:
        return None
    return f"{slow.step_time_s_mean / fast.step_time_s_mean:.1f}\N{MULTIPLICATION SIGN}"


def _cheapest(arms: list[ArmSummary]) -> ArmSummary | None:
    """The arm with the shortest mean step time; None when no arm has one."""
    timed = [a for a in arms if a.step_time_s_mean]
    return min(timed, key=lambda a: a.step_time_s_mean) if timed else None  # type: ignore[arg-type,return-value]


def _why(choice: ArmSummary, best: ArmSummary, ranked: list[ArmSummary]) -> str:
    """The sentence's first part: the choice against the best, or against the cheapest."""
    if choice is not best:
        text = f"{choice.name} matches {best.name} ({_figure(choice)} vs {_figure(best)})"
        text += _price(choice)
        if ratio := _ratio(best, choice):
            text += f"; {best.name} costs {ratio} per step here"
        return text
    price = _price(choice)
    text = f"{choice.name} has the best {'' if len(ranked) > 1 else 'and only '}metric"
    text += f" ({_figure(choice)}){',' if price else ''}{price}"
    cheapest = _cheapest(ranked)
    if cheapest is not None and cheapest is not choice and (ratio := _ratio(choice, cheapest)):
        text += f"; it costs {ratio} {cheapest.name}'s step time"
    return text


def recommend(arms: dict[str, ArmSummary], pending: int) -> Recommendation | None:
    """The recommendation from the arms' figures; None before any arm has a result."""
    ranked = [a for name, a in arms.items() if a.metrics and name != REFERENCE]
    if not ranked:
        return None
    best = max(ranked, key=lambda a: a.metric_mean)  # type: ignore[arg-type,return-value]
    close = [a for a in ranked if within_noise(a, best)]
    choice = _cheapest(close) or best
    parts = [_why(choice, best, ranked)]
    if len(close) == len(ranked) > 2:
        parts.append(f"all {len(ranked)} arms are within seed noise of each other")
    elif others := [a.name for a in close if a not in (best, choice)]:
        parts.append(f"{', '.join(others)} also within seed noise, but slower per step")
    if behind := [a.name for a in ranked if a not in close]:
        parts.append(f"{', '.join(behind)} {'is' if len(behind) == 1 else 'are'} behind")
    without = [a for name, a in arms.items() if not a.metrics and name != REFERENCE]
    if failed := [a.name for a in without if all(j.state in FINAL_STATES for j in a.jobs)]:
        parts.append(f"no result for {', '.join(failed)}")
    if waiting := [a.name for a in without if a.name not in failed]:
        parts.append(f"no result yet for {', '.join(waiting)}")
    reference = arms.get(REFERENCE)
    if reference is not None and reference.metrics:
        parts.append(f"the 1-worker reference reaches {_figure(reference)}")
    reason = "; ".join(parts)
    if max(len(a.metrics) for a in ranked) < 2:
        reason += " (one seed: no estimate of seed noise, so only a tie counts as a match)"
    if pending:
        reason += f" (so far: {pending} job{'s' if pending != 1 else ''} still to finish)"
    return Recommendation(choice.name, reason + ".")
