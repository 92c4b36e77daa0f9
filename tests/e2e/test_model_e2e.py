"""Taking the trained model back, end to end: a real job on Ray through the real service,
its model file downloaded with the CLI, loaded with plain torch by the user guide's own example
(no syncbn, Ray or service imported), and compared with the service's predictions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open
from sklearn.datasets import load_digits

GUIDE = Path(__file__).parents[2] / "docs" / "guide.md"
MARKER = "<!-- plain-torch example -->"
JOB = {
    "dataset": "digits",
    "workers": 2,
    "batch_size_per_worker": 16,
    "epochs": 2,
    "norm": "local",
    "precise_bn_batches": 4,
}


def guide_example() -> str:
    """The guide's plain-torch loading example (the python block after ``MARKER``)."""
    text = GUIDE.read_text().split(MARKER, 1)[1]
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def run_plain_torch(path: Path) -> np.ndarray:
    """The guide's example on ``path`` in a fresh interpreter; its ``probabilities``. It
    fails if it imported syncbn, ray or the service."""
    check = (
        "\nimport json, sys\n"
        "assert not {'syncbn', 'ray', 'service'} & set(sys.modules), sorted(sys.modules)\n"
        "print(json.dumps(probabilities.tolist()))\n"
    )
    source = guide_example().replace("j-3f9c0e1a2b4d-epoch3.safetensors", str(path))
    out = subprocess.run(
        [sys.executable, "-c", source + check], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


def test_download_load_with_plain_torch_and_predict(service, tmp_path) -> None:
    job = service.submit(**JOB)
    early = service.client.get(f"/v1/jobs/{job['id']}/model")
    assert early.status_code == 409, early.text  # queued: no checkpoint yet
    done = service.wait_final(job["id"])
    assert done["state"] == "succeeded", done

    # precise_bn_batches with norm="local": every rank ends with the same (global) statistics.
    last = service.client.get(f"/v1/jobs/{job['id']}/workers").json()["workers"]
    assert last[0]["bn_running"] == last[1]["bn_running"]

    listing = service.client.get(f"/v1/jobs/{job['id']}/models").json()
    assert [m["epoch"] for m in listing["models"]] == [1, 2]
    assert listing["models"][1]["metrics"]["test_accuracy"] == done["result"]["test_accuracy"]
    assert listing["recipe"]["bn_statistics"].startswith("precise")

    path = tmp_path / "downloaded.safetensors"
    cli = service.cli("download", job["id"], "-o", str(path))
    assert cli.returncode == 0, cli.stdout + cli.stderr
    with safe_open(str(path), framework="pt") as handle:
        recipe = json.loads(handle.metadata()["syncbn.recipe"])
    assert recipe["epoch"] == 2 and recipe["model"] == "resnet"
    first = service.client.get(f"/v1/jobs/{job['id']}/model", params={"epoch": 1})
    assert first.headers["x-syncbn-epoch"] == "1" and first.content != path.read_bytes()
    gone = service.client.get(f"/v1/jobs/{job['id']}/model", params={"epoch": 3})
    assert gone.status_code == 404 and "kept epochs: 1, 2" in gone.json()["detail"]
    etag = service.client.get(f"/v1/jobs/{job['id']}/model").headers["etag"]
    assert etag == f'"{listing["models"][1]["sha256"]}"'
    cached = service.client.get(f"/v1/jobs/{job['id']}/model", headers={"If-None-Match": etag})
    assert cached.status_code == 304

    # The service's predictions equal plain torch's on the downloaded file.
    images = load_digits().images[:5]
    response = service.client.post(
        f"/v1/jobs/{job['id']}/predict", json={"inputs": images.tolist()}
    )
    assert response.status_code == 200, response.text
    served = np.array(response.json()["probabilities"])
    np.testing.assert_allclose(run_plain_torch(path), served, atol=1e-5)
    assert response.json()["predictions"] == served.argmax(1).tolist()
    # Eval mode: each sample's output does not depend on the others in the request.
    for i in (0, 3):
        alone = service.client.post(
            f"/v1/jobs/{job['id']}/predict", json={"inputs": images[i : i + 1].tolist()}
        )
        np.testing.assert_allclose(alone.json()["probabilities"][0], served[i], atol=1e-6)
    bad = service.client.post(f"/v1/jobs/{job['id']}/predict", json={"inputs": [[1, 2]]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "inputs"]
