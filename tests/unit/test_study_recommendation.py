# ruff: noqa: RUF001  (the reasons write ratios with a multiplication sign)
"""A study's recommendation (pure): the cheapest arm, by step time, among those within seed
noise of the best metric, with the numbers in words; and the price of each arm."""

from __future__ import annotations

from service.studies.recommendation import recommend
from service.studies.summary import ArmSummary, JobFigures


def arm(
    name: str,
    metrics: list[float],
    step: float = 0.01,
    sent: float | None = 0.0,
    failed: int = 0,
) -> ArmSummary:
    jobs = [
        JobFigures(f"j-{name}{i}", i, "succeeded", m, step, None, allreduce_bytes_per_step=sent)
        for i, m in enumerate(metrics)
    ]
    jobs += [JobFigures(f"j-{name}-f{i}", 9 + i, "failed", None, None, None) for i in range(failed)]
    return ArmSummary(name, jobs)


def arms(*summaries: ArmSummary) -> dict[str, ArmSummary]:
    return {a.name: a for a in summaries}


def test_a_clear_winner_is_recommended_with_its_price_against_the_cheapest() -> None:
    said = recommend(
        arms(
            arm("local", [0.80, 0.81, 0.82], step=0.010),
            arm("sync", [0.95, 0.955, 0.96], step=0.013, sent=2000),
            arm("group", [0.85, 0.86, 0.87], step=0.011),
        ),
        pending=0,
    )
    assert said is not None and said.arm == "sync"
    assert said.reason == (
        "sync has the best metric (0.955 ± 0.005), sending 2.0 kB per step for BatchNorm; "
        "it costs 1.3× local's step time; local, group are behind."
    )


def test_a_tie_within_seed_noise_goes_to_the_cheaper_arm() -> None:
    said = recommend(
        arms(
            arm("local", [0.70, 0.71, 0.72], step=0.010),
            arm("sync", [0.84, 0.847, 0.854], step=0.031, sent=4096),
            arm("group", [0.836, 0.846, 0.856], step=0.010),
        ),
        pending=0,
    )
    assert said is not None and said.arm == "group"
    assert said.reason == (
        "group matches sync (0.846 ± 0.010 vs 0.847 ± 0.007) with no communication; sync costs "
        "3.1× per step here; local is behind."
    )


def test_when_every_arm_is_within_noise_the_cheapest_wins_and_it_says_so() -> None:
    said = recommend(
        arms(
            arm("local", [0.90, 0.92, 0.94], step=0.010),
            arm("sync", [0.91, 0.93, 0.95], step=0.012, sent=1024),
            arm("sync-pairs", [0.90, 0.925, 0.95], step=0.011, sent=1024),
        ),
        pending=0,
    )
    assert said is not None and said.arm == "local"
    assert said.reason.startswith("local matches sync (0.920 ± 0.020 vs 0.930 ± 0.020)")
    assert said.reason.endswith("all 3 arms are within seed noise of each other.")


def test_failed_arms_take_no_part_and_are_named() -> None:
    said = recommend(
        arms(
            arm("local", [0.80, 0.82], step=0.010),
            arm("sync", [], failed=2),
            arm("group", [0.85, 0.87], step=0.012, failed=1),
        ),
        pending=0,
    )
    assert said is not None and said.arm == "group"
    assert said.reason == (
        "group has the best metric (0.860 ± 0.014), with no communication; it costs 1.2× "
        "local's step time; local is behind; no result for sync."
    )
    assert recommend(arms(arm("sync", [], failed=1)), pending=0) is None


def test_one_seed_and_running_jobs_are_said() -> None:
    queued = ArmSummary("group", [JobFigures("q", 0, "queued", None, None, None)])
    said = recommend(
        {
            **arms(arm("local", [0.80], step=0.01), arm("sync", [0.82], step=0.02, sent=None)),
            "group": queued,
        },
        pending=3,
    )
    assert said is not None and said.arm == "sync"
    assert said.reason == (
        "sync has the best metric (0.820); it costs 2.0× local's step time; local is behind; "
        "no result yet for group "
        "(one seed: no estimate of seed noise, so only a tie counts as a match) "
        "(so far: 3 jobs still to finish)."
    )
    assert recommend(arms(arm("local", []), arm("sync", [])), pending=6) is None


def test_an_arm_costs_the_mean_of_its_seeds_bytes() -> None:
    summary = ArmSummary(
        "sync",
        [
            JobFigures("a", 0, "succeeded", 0.9, 0.01, 0.001, allreduce_bytes_per_step=1000),
            JobFigures("b", 1, "succeeded", 0.9, 0.01, 0.001, allreduce_bytes_per_step=1000),
            JobFigures("c", 2, "queued", None, None, None),
        ],
    )
    assert summary.allreduce_bytes_per_step == 1000
    assert (
        ArmSummary(
            "local", [JobFigures("d", 0, "queued", None, None, None)]
        ).allreduce_bytes_per_step
        is None
    )


def test_the_reference_is_a_yardstick_never_the_recommendation() -> None:
    said = recommend(
        arms(
            arm("local", [0.60, 0.62, 0.64], step=0.010),
            arm("sync", [0.95, 0.96, 0.97], step=0.030, sent=3072),
            arm("reference", [0.96, 0.97, 0.98], step=0.002),
        ),
        pending=0,
    )
    assert said is not None and said.arm == "sync"
    assert said.reason.endswith("; the 1-worker reference reaches 0.970 ± 0.010.")
    assert recommend(arms(arm("reference", [0.9])), pending=0) is None
