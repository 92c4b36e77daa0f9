"""Studies end to end: real uvicorn, a real Ray head, a real SQLite file.

The one-seed, four-arm digits study (local, sync, group, reference) that runs to a verdict and
a recommendation is started from the page, through ``POST /v1/studies``:
``test_page_studies.py::test_run_a_study_from_the_form_and_compare_its_jobs`` checks the page
and ``check_one_seed_study`` below the REST answer (one study for both, to keep the suite
short)."""

from __future__ import annotations

from typing import Any

from servicekit import wait_ray_idle
from sklearn.datasets import load_digits

BASE = {"dataset": "digits", "workers": 2, "batch_size_per_worker": 8, "epochs": 1}


def check_one_seed_study(service: Any, study: dict) -> None:
    """What ``GET /v1/studies/{id}`` says of a finished one-seed study of ``BASE``."""
    assert study["state"] == "succeeded", study
    arms = {a["name"]: a for a in study["arms"]}
    assert list(arms) == ["local", "sync", "group", "reference"]
    assert arms["group"]["spec"]["norm"] == "group"
    assert arms["reference"]["spec"]["workers"] == 1
    assert arms["reference"]["spec"]["batch_size_per_worker"] == 16
    for arm in arms.values():
        assert arm["metric_mean"] > 0.5 and arm["metric_std"] == 0.0
        assert arm["step_time_s_mean"] > 0
        assert arm["curve"] == [{"epoch": 1, "mean": arm["metric_mean"], "std": 0.0, "n": 1}]
        job = service.job(arm["jobs"][0]["id"])
        assert job["state"] == "succeeded" and job["result"]["test_accuracy"] == arm["metric_mean"]
        assert job["study_id"] == study["id"] and job["arm"] == arm["name"]
    assert arms["sync"]["sync_time_share"] > 0 and arms["local"]["sync_time_share"] == 0
    assert "one seed: no estimate of seed noise" in study["verdict"]
    assert "time per step" in study["verdict"]
    # The price: only the synchronized arm with 2 workers all-reduces (1 worker: no collective).
    sent = {name: arm["allreduce_bytes_per_step"] for name, arm in arms.items()}
    assert sent["sync"] > 0 and sent["local"] == sent["group"] == sent["reference"] == 0, sent
    advice = study["recommendation"]
    assert advice["arm"] in arms and "one seed: no estimate of seed noise" in advice["reason"]
    # The GroupNorm model: no BatchNorm statistics, and its file serves predictions.
    group_job = arms["group"]["jobs"][0]["id"]
    workers = service.client.get(f"/v1/jobs/{group_job}/workers").json()["workers"]
    assert len(workers) == 2 and all(w["bn"] == {} for w in workers)
    models = service.client.get(f"/v1/jobs/{group_job}/models").json()
    assert models["models"][-1]["bn_statistics"].startswith("none: norm=group")
    samples = load_digits().images[:3].tolist()
    answer = service.client.post(f"/v1/jobs/{group_job}/predict", json={"inputs": samples})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 3


def test_cancelling_a_study_leaves_no_running_jobs(service, ray_head) -> None:
    base = {**BASE, "epochs": 5}
    study = service.client.post("/v1/studies", json={"base": base, "seeds": [0, 1]}).json()
    first = study["arms"][0]["jobs"][0]["id"]
    service.wait_for(first, lambda j: j["state"] == "running", what="the first job running")
    cancelled = service.client.post(f"/v1/studies/{study['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    assert {j["state"] for a in cancelled["arms"] for j in a["jobs"]} == {"cancelled"}
    wait_ray_idle(ray_head.dashboard_url)
    running = service.client.get("/v1/jobs", params={"state": "running"}).json()
    assert running["total"] == 0
