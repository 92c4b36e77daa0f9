# ruff: noqa: RUF001  (the recommendation writes ratios with a multiplication sign)
"""``syncbn study`` and friends in process: the CLI's ``Client`` talks to the app through a
``TestClient`` (FakeRay). While ``--watch`` polls, each pause moves the study's jobs as Ray and
the workers would (reports through the ingest endpoint, then SUCCEEDED), so the table and the
verdict appear. The study on real Ray is in
``tests/e2e/test_studies_e2e.py``."""

from __future__ import annotations

import json
import re

import pytest
from fakeray import FakeRay
from test_cli_models import TOKEN, service, syncbn  # noqa: F401 (fixture)
from test_service_inprocess import report

from client import cli, sdk
from client.commands import studies

ACCURACY = {"local": 0.80, "sync": 0.90, "reference": 0.92, "group": 0.895, "sync:2": 0.892}
STEP_S = {"local": 0.010, "sync": 0.013, "reference": 0.02, "group": 0.011, "sync:2": 0.012}
STUDY = ["study", "--dataset", "digits", "--workers", "4", "--batch-size", "2", "--epochs", "2"]


@pytest.fixture
def ray(service, monkeypatch) -> FakeRay:  # noqa: F811
    """The app's FakeRay; the SDK's ``pause`` between two polls of a study runs ``drive``
    instead of sleeping."""
    http, _ = service
    app = http.app
    fake = app.state.services.ray
    fake.cpus = 16

    def drive() -> None:
        """One scheduler tick; every job on Ray reports two epochs and succeeds."""
        app.state.services.scheduler.tick()
        for job in http.get("/v1/jobs", params={"limit": 100}).json()["jobs"]:
            if job["state"] not in ("pending", "running"):
                continue
            accuracy = ACCURACY[job["arm"]] + 0.01 * job["spec"]["seed"]
            for epoch in (1, 2):
                gain = 0.1 * (epoch - 2)
                report(
                    http, job["id"], "epoch", epoch, 4 * epoch,
                    test_accuracy=accuracy + gain,
                    step_time_s=STEP_S[job["arm"]],
                    allreduce_bytes_per_step=2048 if job["spec"]["norm"] == "sync" else 0,
                )  # fmt: skip
            fake.set_status(job["id"], "SUCCEEDED", logs='{"status": 0, "result": {}}')
        app.state.services.scheduler.tick()

    monkeypatch.setattr(sdk, "pause", lambda seconds: drive())
    return fake


def test_study_watch_prints_the_arms_table_and_the_verdict(service, ray, capsys):  # noqa: F811
    status, out = syncbn(capsys, *STUDY, "--seeds", "0", "1", "2", "--watch")
    assert status == cli.EXIT_OK, out
    study_id = re.search(r"study (s-\S+)", out).group(1)
    assert f"study {study_id}  succeeded  digits, seeds 0 1 2" in out
    for arm, spec, mean in (
        ("local", "4x2 local", "81.00 ± 1.00 %"),
        ("sync", "4x2 sync", "91.00 ± 1.00 %"),
        ("reference", "1x8 sync", "93.00 ± 1.00 %"),
    ):
        assert re.search(rf"│ {arm} +│ {spec} +│ 3/3 \(3 succeeded\) +│ +{mean} │", out)
    assert "verdict: syncbn recovers 10.0 of the 12.0-point accuracy gap" in " ".join(out.split())

    status, out = syncbn(capsys, "studies")
    assert status == cli.EXIT_OK and study_id in out and "4 x 2" in out and "succeeded" in out
    status, out = syncbn(capsys, "--json", "study-show", study_id)
    assert status == cli.EXIT_OK and json.loads(out)["state"] == "succeeded"


def test_study_arms_take_presets_and_sync_groups_and_the_watch_recommends_one(
    service,  # noqa: F811
    ray,
    capsys,
):
    arms = ["--arms", "local", "sync", "group", "sync:2"]
    status, out = syncbn(capsys, *STUDY, "--seeds", "0", "1", "2", *arms, "--watch")
    assert status == cli.EXIT_OK, out
    text = " ".join(out.split())
    assert re.search(r"│ sync:2 +│ 4x2 sync/2 +│ 3/3 \(3 succeeded\) +│ +90.20 ± 1.00 % │", out)
    assert re.search(r"│ group +│ 4x2 group +│ .* +│ +0 B │", out)
    assert "2.0 kB │" in out  # sync's BatchNorm bytes per step
    assert (
        "recommended: group. group matches sync (0.905 ± 0.010 vs 0.910 ± 0.010) with no "
        "communication; sync costs 1.2× per step here; sync:2 also within seed noise, but "
        "slower per step; local is behind."
    ) in text


@pytest.mark.parametrize(
    ("word", "arm"),
    [
        ("group", "group"),
        ("sync:2", {"name": "sync:2", "overrides": {"sync_group_size": 2}}),
        (
            "group:8",
            {
                "name": "group:8",
                "overrides": {"norm": "group", "group_norm_groups": 8, "precise_bn_batches": 0},
            },
        ),
        ('bf16={"precision": "bf16"}', {"name": "bf16", "overrides": {"precision": "bf16"}}),
    ],
)
def test_arm_words(word, arm):
    assert studies.parse_arm(word) == arm


@pytest.mark.parametrize("word", ["batch", "sync:0", "sync:x", "x={}", "x=[1]", "x={bad"])
def test_bad_arm_words_say_what_an_arm_is(capsys, word):
    with pytest.raises(SystemExit):
        cli.parse_args([*STUDY, "--arms", word])
    err = " ".join(capsys.readouterr().err.split())
    said = "the overrides are not JSON" if word == "x={bad" else "is not an arm: give presets"
    assert said in err


def test_a_cancelled_study_exits_non_zero(service, capsys):  # noqa: F811
    status, out = syncbn(capsys, *STUDY, "--seeds", "5", "--arms", "local", "sync")
    assert status == cli.EXIT_OK, out
    study_id = re.search(r"study (s-\S+): 2 arm\(s\) x 1 seed\(s\) queued", out).group(1)
    status, out = syncbn(capsys, "study-cancel", study_id)
    assert status == cli.EXIT_OK and "cancelled" in out and "local seed 5: cancelled" in out
    status, out = syncbn(capsys, "study-watch", study_id)
    assert status == cli.EXIT_JOB_FAILED and "0/1" not in out and "1/1 (1 cancelled)" in out


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--workers", "0"], "base.workers: "),
        (["--seeds", "1", "1"], "seeds: Value error, seeds must be distinct"),
        (["--dataset", "nope"], "base.dataset: "),
    ],
)
def test_a_rejected_study_names_the_field(service, capsys, args, field):  # noqa: F811
    status, out = syncbn(capsys, *STUDY, *args)
    assert status == cli.EXIT_REJECTED and "HTTP 422" in out and field in out, out
    http, _ = service
    assert http.get("/v1/studies").json()["studies"] == []


def test_study_has_no_norm_or_seed_flag(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args([*STUDY, "--norm", "sync"])
    assert "unrecognized arguments: --norm" in capsys.readouterr().err
