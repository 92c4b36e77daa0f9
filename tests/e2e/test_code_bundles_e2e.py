"""Code bundles end to end (real uvicorn and Ray): a bundle's model trains, its BN layers
reported by the user's names, predictions run on Ray with the bundle (and are capped); a
builder that raises fails the job at once with the user's traceback; the CLI uploads, lists and
submits a bundle.

Unpacking, the routes in process and the builder check are in
``tests/unit/test_code_bundles.py``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import safetensors.torch
import torch
from bundlekit import BROKEN, NETWORK, tar_bytes, zip_bytes
from sklearn.datasets import load_digits

from workers.data.arrays import standardize


# -- end to end: real uvicorn, real Ray ---------------------------------------------------------
def _scale(service, job_id: str) -> tuple[float, float]:
    """The standardization in the job's model recipe."""
    recipe = service.client.get(f"/v1/jobs/{job_id}/models").json()["recipe"]
    scale = recipe["preprocess"]["standardize"]
    return scale["mean"], scale["std"]


def test_a_bundle_trains_reports_its_own_layer_names_and_predicts_on_ray(service) -> None:
    response = service.client.post(
        "/v1/code", files={"file": ("tinynet.tar.gz", tar_bytes({"tinynet.py": NETWORK}))}
    )
    assert response.status_code == 201, response.text
    code = response.json()["id"]
    job = service.submit(
        dataset="digits", code=code, model="tinynet:build_model", workers=2,
        batch_size_per_worker=16, epochs=2, lr=0.1,
    )  # fmt: skip
    done = service.wait_final(job["id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["test_accuracy"] > 0.5
    workers = service.client.get(f"/v1/jobs/{job['id']}/workers").json()["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    for worker in workers:
        assert set(worker["bn"]) == {"stem_norm", "encoder.1"}
        assert (
            worker["bn"]["stem_norm"]["global_count"]
            == 2 * worker["bn"]["stem_norm"]["local_count"]
        )

    # Predictions run on Ray with the bundle (the service never imports it) and equal the
    # user's network built here from the downloaded file.
    images = load_digits().images[:4]
    response = service.client.post(
        f"/v1/jobs/{job['id']}/predict", json={"inputs": images.tolist()}
    )
    assert response.status_code == 200, response.text
    from ray.job_submission import JobSubmissionClient

    runs = JobSubmissionClient(service.ray_address).list_jobs()
    assert any(str(r.submission_id).startswith("predict-") for r in runs)
    namespace: dict = {}
    exec(NETWORK, namespace)
    model = namespace["build_model"]((8, 8), 10)
    weights = service.client.get(f"/v1/jobs/{job['id']}/model").content
    model.load_state_dict(safetensors.torch.load(weights))
    x = torch.from_numpy(standardize(images, *_scale(service, job["id"])))
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x), 1).numpy()
    np.testing.assert_allclose(response.json()["probabilities"], expected, atol=1e-5)
    check_predictions_are_capped(service, job["id"], images.tolist())


def check_predictions_are_capped(service, job_id: str, inputs: list) -> None:
    """Row 8 of issue 20: a flood of predictions (each a Ray Job for a bundle's model) is served
    at most SYNCBN_MAX_CONCURRENT_PREDICTS (2) at a time; the rest get a 429 at once with
    Retry-After, and /healthz answers quickly meanwhile (the thread pool is never exhausted)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> httpx.Response:
        return service.client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": inputs})

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        health = httpx.get(f"{service.url}/healthz", timeout=5)  # while they are served
        answers = [future.result() for future in futures]
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["retry-after"] == "2"
    assert "SYNCBN_MAX_CONCURRENT_PREDICTS" in refused.json()["detail"]
    assert health.status_code == 200


def test_a_builder_that_raises_fails_the_job_at_once_with_its_traceback(service) -> None:
    bundle = zip_bytes({"brokennet.py": BROKEN})
    response = service.client.post("/v1/code", files={"file": ("broken.zip", bundle)})
    assert response.status_code == 201, response.text
    job = service.submit(
        dataset="digits", code=response.json()["id"], model="brokennet:build_model",
        max_failures=3,
    )  # fmt: skip
    done = service.wait_final(job["id"], timeout_s=120)
    assert done["state"] == "failed", done
    reason = done["reason"]
    assert "your code (brokennet:build_model): the builder raised an exception" in reason
    assert "brokennet.py" in reason and "my builder cannot handle (8, 8)" in reason
    assert done["progress"]["step"] == 0  # no worker trained, nothing retried
    metrics = service.client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert metrics["reports"] == []


def test_cli_uploads_lists_and_submits_a_bundle(idle_service, tmp_path: Path) -> None:
    archive = tmp_path / "clinet.zip"
    archive.write_bytes(zip_bytes({"clinet.py": NETWORK}))
    uploaded = idle_service.cli("upload-code", str(archive))
    assert uploaded.returncode == 0, uploaded.stderr
    code = uploaded.stdout.split()[1].rstrip(":")
    assert code.startswith("code-") and "modules clinet" in uploaded.stdout
    listed = idle_service.cli("code")
    assert listed.returncode == 0 and f"{code}  clinet.zip  modules clinet" in listed.stdout
    submitted = idle_service.cli(
        "--json", "submit", "--dataset", "digits", "--code", code, "--model", "clinet:build_model"
    )
    assert submitted.returncode == 0, submitted.stderr
    assert '"model": "clinet:build_model"' in submitted.stdout
    missing = idle_service.cli("submit", "--dataset", "digits", "--code", code, "--model", "x:f")
    assert missing.returncode != 0 and "has no module 'x'" in missing.stdout + missing.stderr
