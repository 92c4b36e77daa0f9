"""Which queued jobs start now: a pure function of the queue, the cluster and what runs.

Fair share: whenever there is room, the next job comes from the user with the fewest workers
running; ties go to the user who has waited longest since one of their jobs last started
(so on a cluster with room for one job, users take turns), then to the oldest job; each
user's jobs start in their order (FIFO within a user). A job that does not fit the free
resources stops the queue: nothing overtakes it, so a big job is not starved by small ones,
and every job behind it is told why. A user at their running-workers quota waits while the
others go on (and a job wider than its owner's quota, lowered since it was queued, waits for
the quota to rise: an admin may pause a user that way). A job the cluster can never run is
rejected. With one
user this is the FIFO queue it always was.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from contract.capacity import EPS, Capacity, InfeasibleJobError, check_feasible, demand
from contract.spec import JobSpec

DEFAULT_OWNER = "admin"


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


class Queued(NamedTuple):
    """A queued job: its id, spec and owner."""

    id: str
    spec: JobSpec
    owner: str = DEFAULT_OWNER


class Holding(NamedTuple):
    """A job that holds Ray resources: its spec and owner."""

    spec: JobSpec
    owner: str = DEFAULT_OWNER


def admit(
    queued: Sequence[Queued | tuple[str, JobSpec]],
    capacity: Capacity,
    on_ray: Sequence[Holding | JobSpec],
    max_running: int | None = None,
    worker_quotas: Mapping[str, int | None] | None = None,
    last_started: Mapping[str, float] | None = None,
) -> list[Decision]:
    """One decision per queued job (given oldest first), in the same order; ``on_ray``: the
    jobs that hold Ray resources; ``max_running``: the service's limit on jobs (None: none);
    ``worker_quotas``: each user's most workers running at once (missing or None: no limit);
    ``last_started``: when each user's newest job started (a timestamp; missing: never)."""
    jobs = [Queued(*job) for job in queued]
    used: dict[str, float] = {}
    workers: dict[str, int] = defaultdict(int)
    for holding in on_ray:
        holding = holding if isinstance(holding, Holding) else Holding(holding)
        _add(used, demand(holding.spec))
        workers[holding.owner] += holding.spec.workers
    running = len(on_ray)
    lines: dict[str, list[int]] = defaultdict(list)  # each user's queue, oldest first
    for index, job in enumerate(jobs):
        lines[job.owner].append(index)
    quotas = worker_quotas or {}
    turn = {name: float("-inf") for name in lines} | dict(last_started or {})
    decisions: dict[int, Decision] = {}
    blocked_by: str | None = None
    blocker = -1  # the index of the job that stops the queue
    while lines and blocked_by is None:
        owner = min(lines, key=lambda name: (workers[name], turn[name], lines[name][0]))
        index = lines[owner].pop(0)
        if not lines[owner]:
            del lines[owner]
        job, quota = jobs[index], quotas.get(owner)
        if max_running is not None and running >= max_running:
            blocked_by = f"the service runs at most {max_running} job(s) at once"
            decisions[index], blocker = Wait(f"waiting: {blocked_by}"), index
            continue
        try:
            check_feasible(job.spec, capacity)
        except InfeasibleJobError as exc:
            decisions[index] = Reject(str(exc))
            continue
        if quota is not None and workers[owner] + job.spec.workers > quota:
            reason = (
                f"waiting: {owner} runs {workers[owner]} worker(s), and their quota is {quota} "
                "(max_running_workers)"
            )
            for waiting in lines.pop(owner, []):
                decisions[waiting] = Wait(reason)
            if job.spec.workers > quota:  # the quota was lowered after it was queued
                reason = _over_quota(job, quota)
            decisions[index] = Wait(reason)
            continue
        needs = demand(job.spec)
        free = {r: capacity.total.get(r, 0.0) - used.get(r, 0.0) for r in needs}
        short = {r: a for r, a in needs.items() if a > free[r] + EPS}
        if short:
            missing = ", ".join(
                f"needs {a:g} {r}, {free[r]:g} of {capacity.total.get(r, 0.0):g} free"
                for r, a in short.items()
            )
            decisions[index] = Wait(f"waiting for resources: {missing}")
            blocked_by, blocker = f"{job.id} {missing}", index
            continue
        decisions[index] = Admit()
        turn[owner] = float("inf")  # just started: the others' turn first
        running += 1
        workers[owner] += job.spec.workers
        _add(used, needs)
    ahead = 0  # older jobs still queued
    for index in range(len(jobs)):
        if index not in decisions:
            if index > blocker:
                decisions[index] = Wait(f"waiting behind {ahead} earlier job(s): {blocked_by}")
            else:
                decisions[index] = Wait(f"waiting: {blocked_by} (fair share: its owner goes first)")
        ahead += isinstance(decisions[index], Wait)
    return [decisions[index] for index in range(len(jobs))]


def _over_quota(job: Queued, quota: int) -> str:
    return (
        f"waiting: {job.spec.workers} workers are over {job.owner}'s quota of {quota} running "
        "workers (max_running_workers): it starts if an admin raises the quota, or cancel it"
    )


def _add(used: dict[str, float], amounts: dict[str, float]) -> None:
    for resource, amount in amounts.items():
        used[resource] = used.get(resource, 0.0) + amount
