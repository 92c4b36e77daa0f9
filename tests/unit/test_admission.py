"""The admission function alone: FIFO, room, the running-jobs limit, rejection, fair share
between users and their running-workers quotas (no Ray)."""

from __future__ import annotations

from contract.capacity import Capacity
from contract.spec import JobSpec
from service.jobs.admission import Admit, Holding, Queued, Reject, Wait, admit


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


def test_fair_share_the_user_with_fewest_running_workers_goes_next():
    """A queues 10 jobs, then B queues 2: when one slot frees, B's first job takes it."""
    queued = [Queued(f"a{i}", spec(1), "alice") for i in range(10)]
    queued += [Queued("b0", spec(1), "bob"), Queued("b1", spec(1), "bob")]
    decisions = admit(queued, cluster(4), [Holding(spec(1), "alice")] * 3)
    assert decisions[10] == Admit()  # bob's first, though 10 of alice's are older
    blocked = "b1 needs 1 CPU, 0 of 4 free"
    assert decisions[0] == Wait(f"waiting: {blocked} (fair share: its owner goes first)")
    assert decisions[11] == Wait("waiting for resources: needs 1 CPU, 0 of 4 free")


def test_ties_go_to_the_oldest_job_and_each_user_is_fifo():
    queued = [Queued("a0", spec(1), "alice"), Queued("b0", spec(1), "bob")]
    queued += [Queued("a1", spec(1), "alice"), Queued("b1", spec(1), "bob")]
    decisions = admit(queued, cluster(3), [])
    assert decisions[:3] == [Admit(), Admit(), Admit()]
    assert decisions[3] == Wait("waiting for resources: needs 1 CPU, 0 of 3 free")
    # alice runs 2 workers, bob none: bob's jobs go first, in his order, until he runs as
    # many as she does; then the tie goes to her older job
    queued = [Queued("a0", spec(1), "alice"), Queued("b0", spec(1), "bob")]
    queued += [Queued("b1", spec(1), "bob"), Queued("b2", spec(1), "bob")]
    decisions = admit(queued, cluster(4), [Holding(spec(2), "alice")])
    assert decisions == [
        Wait("waiting for resources: needs 1 CPU, 0 of 4 free"),
        Admit(),
        Admit(),
        Wait("waiting behind 1 earlier job(s): a0 needs 1 CPU, 0 of 4 free"),
    ]


def test_a_user_at_their_worker_quota_waits_while_others_go_on():
    queued = [Queued("a0", spec(2), "alice"), Queued("a1", spec(1), "alice")]
    queued += [Queued("b0", spec(2), "bob")]
    decisions = admit(queued, cluster(8), [Holding(spec(2), "alice")], worker_quotas={"alice": 3})
    reason = "waiting: alice runs 2 worker(s), and their quota is 3 (max_running_workers)"
    assert decisions == [Wait(reason), Wait(reason), Admit()]


def test_a_job_over_its_owners_lowered_quota_waits_and_others_go_on():
    """An admin lowered alice's quota below her queued job (to pause her): it waits, it is not
    failed, and bob's job starts."""
    queued = [Queued("a0", spec(4), "alice"), Queued("b0", spec(1), "bob")]
    decisions = admit(queued, cluster(8), [], worker_quotas={"alice": 2})
    assert isinstance(decisions[0], Wait) and decisions[1] == Admit()
    assert "over alice's quota of 2 running workers" in decisions[0].reason
    assert "starts if an admin raises the quota" in decisions[0].reason


def test_with_room_for_one_job_users_take_turns():
    """Nobody runs anything: the tie goes to the user whose last start is oldest (bob never
    started one), not to alice's older job."""
    queued = [Queued("a1", spec(2), "alice"), Queued("b0", spec(2), "bob")]
    decisions = admit(queued, cluster(2), [], last_started={"alice": 100.0})
    assert decisions == [Wait("waiting for resources: needs 2 CPU, 0 of 2 free"), Admit()]
    both = {"alice": 100.0, "bob": 200.0}  # alice waited longer: her turn
    assert admit(queued, cluster(2), [], last_started=both)[0] == Admit()
