"""The admission function alone: FIFO, room, the running-jobs limit, rejection (no Ray)."""

from __future__ import annotations

from contract.capacity import Capacity
from contract.spec import JobSpec
from service.jobs.admission import Admit, Reject, Wait, admit


def spec(workers: int = 1, cpus: float = 1.0) -> JobSpec:
    return JobSpec(dataset="synthetic", workers=workers, cpus_per_worker=cpus)


def cluster(*cpus: float) -> Capacity:
    return Capacity.of({"CPU": c} for c in cpus)


def test_jobs_start_in_order_while_they_fit():
    queued = [("a", spec(1)), ("b", spec(1)), ("c", spec(1))]
    assert admit(queued, cluster(2), []) == [
        Admit(),
        Admit(),
        Wait("waiting for resources: needs 1 CPU, 0 of 2 free"),
    ]


def test_the_first_job_that_does_not_fit_stops_the_queue_no_overtaking():
    queued = [("big", spec(2)), ("small", spec(1))]
    decisions = admit(queued, cluster(2), [spec(1)])
    assert decisions[0] == Wait("waiting for resources: needs 2 CPU, 1 of 2 free")
    assert decisions[1] == Wait("waiting behind 1 earlier job(s): big needs 2 CPU, 1 of 2 free")


def test_running_jobs_limit_holds_the_queue():
    decisions = admit([("a", spec(1)), ("b", spec(1))], cluster(8), [spec(1)], max_running=1)
    assert decisions == [
        Wait("waiting: the service runs at most 1 job(s) at once"),
        Wait("waiting behind 1 earlier job(s): the service runs at most 1 job(s) at once"),
    ]
    assert admit([("a", spec(1))], cluster(8), [], max_running=0)[0] == Wait(
        "waiting: the service runs at most 0 job(s) at once"
    )


def test_a_job_the_shrunken_cluster_can_never_run_is_rejected_and_the_queue_goes_on():
    decisions = admit([("huge", spec(4)), ("ok", spec(1))], cluster(2), [])
    assert isinstance(decisions[0], Reject)
    assert decisions[0].reason.startswith("infeasible: 4 workers x 1 CPU = 4 CPU")
    assert "set cpus_per_worker to 0.5 to run 4 workers" in decisions[0].reason
    assert decisions[1] == Admit()


def test_fractional_cpus_and_per_node_limits():
    assert admit([("a", spec(4, 0.5))], cluster(2), []) == [Admit()]
    (decision,) = admit([("a", spec(1, 3))], cluster(2, 2), [])
    assert decision == Reject(
        "infeasible: one worker asks for 3 CPU, but no Ray node has more than 2 CPU"
    )
