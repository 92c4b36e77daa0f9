"""Which queued jobs start now: a pure function of the queue, the cluster and what runs.

Strict FIFO: queued jobs start in order while the cluster has room (its alive nodes' totals
minus what the jobs on Ray ask for) and the service's limit on running jobs allows; the first
job that does not fit stops the queue (no overtaking), and every job behind it is told why.
A job the cluster can no longer run at all (it shrank since submission) is rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from contract.capacity import EPS, Capacity, InfeasibleJobError, check_feasible, demand
from contract.spec import JobSpec


@dataclass(frozen=True)
class Admit:
    """Submit the job to Ray now."""


@dataclass(frozen=True)
class Wait:
    """Keep the job queued; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class Reject:
    """Fail the job: no state of the cluster can run it."""

    reason: str


Decision = Admit | Wait | Reject


def admit(
    queued: Sequence[tuple[str, JobSpec]],
    capacity: Capacity,
    on_ray: Sequence[JobSpec],
    max_running: int | None = None,
) -> list[Decision]:
    """One decision per queued ``(job id, spec)``, oldest first; ``on_ray``: the specs of the
    jobs that hold Ray resources; ``max_running``: the service's limit (None: no limit)."""
    used: dict[str, float] = {}
    for spec in on_ray:
        _add(used, demand(spec))
    running = len(on_ray)
    blocked_by: str | None = None
    decisions: list[Decision] = []
    for position, (job_id, spec) in enumerate(queued):
        if blocked_by is not None:
            decisions.append(Wait(f"waiting behind {position} earlier job(s): {blocked_by}"))
            continue
        if max_running is not None and running >= max_running:
            blocked_by = f"the service runs at most {max_running} job(s) at once"
            decisions.append(Wait(f"waiting: {blocked_by}"))
            continue
        try:
            check_feasible(spec, capacity)
        except InfeasibleJobError as exc:
            decisions.append(Reject(str(exc)))
            continue
        needs = demand(spec)
        free = {r: capacity.total.get(r, 0.0) - used.get(r, 0.0) for r in needs}
        short = {r: a for r, a in needs.items() if a > free[r] + EPS}
        if short:
            missing = ", ".join(
                f"needs {a:g} {r}, {free[r]:g} of {capacity.total.get(r, 0.0):g} free"
                for r, a in short.items()
            )
            decisions.append(Wait(f"waiting for resources: {missing}"))
            blocked_by = f"{job_id} {missing}"
            continue
        decisions.append(Admit())
        running += 1
        _add(used, needs)
    return decisions


def _add(used: dict[str, float], amounts: dict[str, float]) -> None:
    for resource, amount in amounts.items():
        used[resource] = used.get(resource, 0.0) + amount
