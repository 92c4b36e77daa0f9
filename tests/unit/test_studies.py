"""Studies: the pure parts (arm specs, summaries, the verdict's words) and the routes in
process (the ``client`` of ``conftest.py`` on a ``FakeRay`` of 8 CPUs): jobs queued per arm
and seed, 4xx naming the field, cancel. The end-to-end study on real Ray is in
``tests/e2e/test_studies_e2e.py``."""

from __future__ import annotations

import pytest
from fakeray import FakeRay
from inprocess import tick

from contract.arms import Arm, arm_spec
from service.studies.summary import ArmSummary, JobFigures
from service.studies.verdict import verdict

BASE = {"dataset": "digits", "workers": 4, "batch_size_per_worker": 2, "epochs": 2}
PAIRS = {"name": "sync-pairs", "overrides": {"sync_group_size": 2}}


def arm(name: str, metrics: list[float], step: float = 0.01, sync: float = 0.0) -> ArmSummary:
    jobs = [
        JobFigures(f"j-{name}{i}", i, "succeeded", m, step, sync, {1: m - 0.1, 2: m})
        for i, m in enumerate(metrics)
    ]
    return ArmSummary(name, jobs)


def test_arm_specs_differ_only_in_norm_and_the_reference_batch():
    local, sync, ref = (arm_spec(BASE, a, 7) for a in ("local", "sync", "reference"))
    assert (local.norm, sync.norm, local.seed, sync.seed) == ("local", "sync", 7, 7)
    assert (local.workers, local.batch_size_per_worker) == (4, 2)
    assert (ref.workers, ref.batch_size_per_worker) == (1, 8)
    assert local.model_dump(exclude={"norm"}) == sync.model_dump(exclude={"norm"})


def test_the_group_preset_and_named_overrides_are_full_specs():
    group = arm_spec({**BASE, "precise_bn_batches": 3, "sync_group_size": 2}, "group", 1)
    assert (group.norm, group.sync_group_size, group.precise_bn_batches) == ("group", None, 0)
    pairs = arm_spec(BASE, Arm(PAIRS["name"], PAIRS["overrides"]), 1)
    assert (pairs.norm, pairs.sync_group_size, pairs.workers) == ("sync", 2, 4)
    bf16 = arm_spec(BASE, Arm("bf16", {"precision": "bf16", "norm": "local"}), 1)
    assert (bf16.precision, bf16.norm) == ("bf16", "local")


def test_the_verdict_says_what_syncbn_recovers_and_what_it_costs():
    arms = {
        "local": arm("local", [0.90, 0.91, 0.92], step=0.010),
        "sync": arm("sync", [0.95, 0.955, 0.96], step=0.0112, sync=0.002),
        "reference": arm("reference", [0.96, 0.965, 0.97]),
    }
    text = verdict(arms, "accuracy", "1x8", pending=0)
    assert text == (
        "syncbn recovers 4.5 of the 5.5-point accuracy gap between per-worker BN and the 1x8 "
        "reference (3 seeds; ranges do not overlap); it costs 12 % more time per step."
    )
    assert arms["sync"].sync_time_share == pytest.approx(0.002 / 0.0112)
    curve = arms["sync"].curve()
    assert [p["epoch"] for p in curve] == [1, 2] and curve[1]["n"] == 3


def test_the_verdict_says_when_syncbn_closes_the_gap_or_there_is_none():
    local, sync = arm("local", [0.60, 0.61, 0.62]), arm("sync", [0.975, 0.98, 0.985])
    closed = verdict(
        {"local": local, "sync": sync, "reference": arm("reference", [0.97, 0.975, 0.98])},
        "accuracy",
        "1x8",
        pending=0,
    )
    assert closed.startswith(
        "syncbn closes the whole 36.5-point accuracy gap between per-worker BN and the 1x8 "
        "reference, ending 0.5 points above the reference (3 seeds; ranges do not overlap)"
    )
    none = verdict(
        {"local": local, "sync": sync, "reference": arm("reference", [0.55, 0.56, 0.57])},
        "accuracy",
        "1x8",
        pending=0,
    )
    assert none.startswith("per-worker BN is not behind the 1x8 reference here (61.0 vs 56.0")


def test_the_verdict_is_honest_about_seed_noise():
    arms = {"local": arm("local", [0.90, 0.93]), "sync": arm("sync", [0.92, 0.94])}
    text = verdict(arms, "mIoU", "1x8", pending=0)
    assert text.startswith("no difference beyond seed noise") and "ranges overlap" in text
    one = verdict({"local": arm("local", [0.8]), "sync": arm("sync", [0.9])}, "mIoU", "1x8", 2)
    assert "one seed: no estimate of seed noise" in one and "2 jobs still to finish" in one
    assert verdict({"local": arm("local", [])}, "accuracy", "1x8", pending=3) is None


# -- the routes, in process ------------------------------------------------------------------
@pytest.fixture
def ray() -> FakeRay:
    return FakeRay(cpus=8)


@pytest.fixture
def app_settings() -> dict:
    return {"max_queued_jobs": 12}


def test_a_study_queues_one_job_per_arm_and_seed(client):
    response = client.post("/v1/studies", json={"base": BASE, "seeds": [0, 1, 2]})
    assert response.status_code == 201, response.text
    study = response.json()
    assert study["state"] == "running" and study["verdict"] is None
    assert [a["name"] for a in study["arms"]] == ["local", "sync", "reference"]
    assert all(a["metric"] == "test_accuracy" for a in study["arms"])
    assert [j["seed"] for j in study["arms"][2]["jobs"]] == [0, 1, 2]
    job = client.get(f"/v1/jobs/{study['arms'][2]['jobs'][1]['id']}").json()
    assert job["study_id"] == study["id"] and job["arm"] == "reference"
    assert (job["spec"]["workers"], job["spec"]["batch_size_per_worker"]) == (1, 8)
    assert job["spec"]["seed"] == 1 and job["state"] == "queued"
    assert client.get("/v1/studies").json()["studies"][0]["id"] == study["id"]

    cancelled = client.post(f"/v1/studies/{study['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    assert {j["state"] for a in cancelled["arms"] for j in a["jobs"]} == {"cancelled"}
    assert client.post(f"/v1/studies/{study['id']}/cancel").status_code == 200
    assert client.get("/v1/studies/s-nope").status_code == 404


def test_cancelling_a_study_that_is_over_changes_nothing(client, app, ray):
    study = client.post("/v1/studies", json={"base": BASE, "seeds": [0], "arms": ["sync"]}).json()
    (job,) = [j["id"] for arm in study["arms"] for j in arm["jobs"]]
    tick(app)
    ray.set_status(job, "FAILED")
    tick(app)
    assert client.get(f"/v1/studies/{study['id']}").json()["state"] == "failed"
    cancelled = client.post(f"/v1/studies/{study['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "failed"


def test_five_arms_queue_presets_and_overrides_as_jobs(client):
    arms = ["local", "sync", PAIRS, "group", "reference"]
    response = client.post("/v1/studies", json={"base": BASE, "seeds": [0, 1], "arms": arms})
    assert response.status_code == 201, response.text
    study = response.json()
    assert [a["name"] for a in study["arms"]] == [
        "local",
        "sync",
        "sync-pairs",
        "group",
        "reference",
    ]
    specs = {a["name"]: a["spec"] for a in study["arms"]}
    assert (specs["sync-pairs"]["norm"], specs["sync-pairs"]["sync_group_size"]) == ("sync", 2)
    assert specs["group"]["norm"] == "group" and specs["sync"]["sync_group_size"] is None
    assert all(len(a["jobs"]) == 2 and a["allreduce_bytes_per_step"] is None for a in study["arms"])
    assert study["recommendation"] is None
    job = client.get(f"/v1/jobs/{study['arms'][2]['jobs'][0]['id']}").json()
    assert job["arm"] == "sync-pairs" and job["spec"]["sync_group_size"] == 2


def test_one_worker_bases_skip_the_reference_and_segmentation_compares_miou(client):
    base = {**BASE, "dataset": "shapes", "workers": 1, "batch_size_per_worker": 4}
    study = client.post("/v1/studies", json={"base": base, "seeds": [0]}).json()
    assert [a["name"] for a in study["arms"]] == ["local", "sync"]
    assert "1 worker already" in study["skipped"]["reference"]
    assert study["arms"][0]["metric"] == "test_miou"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"base": {**BASE, "norm": "sync"}}, ["body", "base", "norm"]),
        ({"base": {**BASE, "seed": 3}}, ["body", "base", "seed"]),
        ({"base": {**BASE, "workers": 0}}, ["body", "base", "workers"]),
        ({"base": {**BASE, "bogus": 1}}, ["body", "base", "bogus"]),
        ({"base": {**BASE, "dataset": "nope"}}, ["body", "base", "dataset"]),
        ({"base": {**BASE, "workers": 64}}, ["body", "base", "workers"]),
        ({"base": {**BASE, "model": "unet"}}, ["body", "base", "model"]),
        ({"base": BASE, "seeds": [1, 1]}, ["body", "seeds"]),
        ({"base": BASE, "seeds": []}, ["body", "seeds"]),
        ({"base": BASE, "arms": ["local", "bn"]}, ["body", "arms", 1]),
        ({"base": BASE, "arms": []}, ["body", "arms"]),
        ({"base": BASE, "arms": ["sync", PAIRS, PAIRS]}, ["body", "arms"]),
        ({"base": BASE, "arms": ["local"] + [{"name": f"a{i}", "overrides": {"lr": 0.1}}
                                               for i in range(8)]}, ["body", "arms"]),
        ({"base": BASE, "arms": ["local", {**PAIRS, "overrides": {"sync_group_size": 3}}]},
         ["body", "arms", 1, "overrides", "sync_group_size"]),
        ({"base": BASE, "arms": [{"name": "x", "overrides": {"bogus": 1}}]},
         ["body", "arms", 0, "overrides", "bogus"]),
        ({"base": BASE, "arms": ["sync", {"name": "hot", "overrides": {"lr": -1}}]},
         ["body", "arms", 1, "overrides", "lr"]),
        ({"base": BASE, "arms": [{"name": "wide", "overrides": {"workers": 64}}]},
         ["body", "arms", 0, "overrides", "workers"]),
        ({"base": BASE, "arms": [{"name": "s", "overrides": {"seed": 1}}]},
         ["body", "arms", 0, "overrides"]),
        ({"base": BASE, "arms": [{"name": "sync", "overrides": {"lr": 0.1}}]}, ["body", "arms", 0]),
        ({"base": BASE, "arms": [{"name": "a-name-of-17-char", "overrides": {"lr": 0.1}}]},
         ["body", "arms", 0, "name"]),
        ({"base": BASE, "arms": [{"name": "g3", "overrides": {"norm": "group",
                                                               "group_norm_groups": 3}}]},
         ["body", "arms", 0, "overrides", "group_norm_groups"]),
        ({"base": {**BASE, "sync_group_size": 3}}, ["body", "base", "sync_group_size"]),
        ({"base": {**BASE, "precise_bn_batches": 2},
          "arms": ["local", {"name": "gn", "overrides": {"norm": "group"}}]}, ["body", "arms", 1]),
        ({"base": BASE, "extra": 1}, ["body", "extra"]),
    ],
)  # fmt: skip
def test_bad_studies_get_a_422_naming_the_field(client, body, loc):
    response = client.post("/v1/studies", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc, response.json()
    assert client.get("/v1/jobs").json()["total"] == 0


def test_a_study_that_does_not_fit_the_queue_is_429_and_queues_nothing(client):
    response = client.post("/v1/studies", json={"base": BASE, "seeds": [0, 1, 2, 3, 4]})
    assert response.status_code == 429 and "this asks for 15" in response.json()["detail"]
    assert client.get("/v1/jobs").json()["total"] == 0


def test_the_schemas_preset_names_are_the_presets():
    from typing import get_args

    from contract.spec import ARM_PRESETS, PresetName

    assert get_args(PresetName) == tuple(ARM_PRESETS)
