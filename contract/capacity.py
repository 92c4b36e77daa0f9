"""Can a Ray cluster ever run a job? The one check, for the driver and the service alike.

Ray Train retries an infeasible ``ScalingConfig`` forever, so a job that asks for more than
the cluster has (in total, or per worker on its largest node) is refused before it starts,
with the JobSpec field to change and how to make it fit. Imports nothing heavy (no ray).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from contract.spec import JobSpec

EPS = 1e-9


@dataclass(frozen=True)
class Capacity:
    """Resources of the alive nodes: totals and the largest single node."""

    total: dict[str, float]
    largest_node: dict[str, float]
    nodes: int

    @classmethod
    def of(cls, nodes: Iterable[Mapping[str, float]]) -> Capacity:
        """From the resource totals of each alive node."""
        total: dict[str, float] = {}
        largest: dict[str, float] = {}
        count = 0
        for resources in nodes:
            count += 1
            for name, amount in resources.items():
                total[name] = total.get(name, 0.0) + float(amount)
                largest[name] = max(largest.get(name, 0.0), float(amount))
        return cls(total, largest, count)


class InfeasibleJobError(ValueError):
    """The cluster can never provide what the job asks for; ``field`` names the JobSpec field
    to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"infeasible: {message}")
        self.field = field


def demand(spec: JobSpec) -> dict[str, float]:
    """Resources the whole job asks for."""
    return {name: amount * spec.workers for name, amount in spec.resources_per_worker().items()}


def check_feasible(spec: JobSpec, capacity: Capacity) -> None:
    """Raise ``InfeasibleJobError`` if no state of ``capacity`` could ever run ``spec``."""
    for resource, amount in spec.resources_per_worker().items():
        field = "use_gpu" if resource == "GPU" else "workers"
        need, have = amount * spec.workers, capacity.total.get(resource, 0.0)
        if need > have + EPS:
            nodes = f"{capacity.nodes} node{'s' if capacity.nodes != 1 else ''}"
            raise InfeasibleJobError(
                field,
                f"{_workers(spec.workers)} x {amount:g} {resource} = {need:g} {resource}, but the "
                f"Ray cluster has only {have:g} {resource} in total ({nodes})"
                + _how_to_fit(spec, resource, amount, have),
            )
        largest = capacity.largest_node.get(resource, 0.0)
        if amount > largest + EPS:
            raise InfeasibleJobError(
                "cpus_per_worker" if resource == "CPU" else field,
                f"one worker asks for {amount:g} {resource}, but no Ray node has more than "
                f"{largest:g} {resource}",
            )


def _how_to_fit(spec: JobSpec, resource: str, amount: float, have: float) -> str:
    """A hint for a job that asks for more ``resource`` than the cluster has."""
    fits = int(have // amount + EPS)
    hints = [f"use at most {_workers(fits)}"] if fits >= 1 else []
    if resource == "CPU":
        share = math.floor(100 * have / spec.workers) / 100  # two decimals, rounded down
        if share > 0:
            hints.append(f"set cpus_per_worker to {share:g} to run {_workers(spec.workers)}")
    return f": {' or '.join(hints)}" if hints else ""


def _workers(count: int) -> str:
    return f"{count} worker{'s' if count != 1 else ''}"
