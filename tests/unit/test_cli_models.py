"""``syncbn download`` and ``syncbn predict`` in process: the CLI's ``Client`` talks to the app
(``make_app`` of ``conftest.py``) through a ``TestClient``; model files are written where a
job's checkpoints would be, as in ``test_model_files.py``. The CLI against a real job on Ray
is in ``tests/e2e/test_model_e2e.py``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from fakeray import FakeRay
from fastapi.testclient import TestClient
from inprocess import LOCAL, TOKEN, local_client
from safetensors import safe_open
from test_model_files import model_file, submit

from client import cli
from contract.spec import JobSpec
from workers.data.builtin import load_digits, make_shapes


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture
def service(make_app, tmp_path, monkeypatch):
    """(TestClient with the token, settings); ``cli.main``'s SDK client reaches the same app
    through a ``TestClient`` that sends only the SDK's own headers."""
    app = make_app(ray=FakeRay(cpus=4))
    settings = app.state.settings
    real = cli.Client

    def client(url: str | None, token: str | None) -> cli.Client:
        return real(url, token, http=TestClient(app, base_url=LOCAL))

    monkeypatch.setattr(cli, "Client", client)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    return local_client(app), settings


def syncbn(capsys, *args: str) -> tuple[int, str]:
    """``syncbn --token TOKEN ARGS``: (exit status, stdout and stderr)."""
    status = cli.main(["--token", TOKEN, *args])
    out = capsys.readouterr()
    return status, out.out + out.err


def checkpoint(settings, job_id: str, epoch: int, data, spec: JobSpec) -> None:
    folder = settings.runs_dir / job_id / f"checkpoint_2026-01-01_00-00-0{epoch}.000000"
    folder.mkdir(parents=True)
    model_file(folder, data, spec, epoch=epoch)


def test_download_streams_the_newest_or_a_kept_epoch(service, digits, capsys, tmp_path):
    http, settings = service
    job = submit(http)
    status, out = syncbn(capsys, "download", job)
    assert status == cli.EXIT_REJECTED and "HTTP 409" in out and "no checkpoint yet" in out
    spec = JobSpec(dataset="digits", precise_bn_batches=2)
    for epoch in (2, 3):
        checkpoint(settings, job, epoch, digits, spec)
    listing = http.get(f"/v1/jobs/{job}/models").json()["models"]

    status, out = syncbn(capsys, "download", job)  # the newest, under the server's name
    assert status == cli.EXIT_OK, out
    path = tmp_path / f"{job}-epoch3.safetensors"
    assert path.read_bytes() == http.get(f"/v1/jobs/{job}/model").content
    assert f"saved {path.name}" in out and f"sha256 {listing[1]['sha256']}" in out
    assert "epoch 3, " in out and " kB, " in out and "test acc 0.5000" in out
    assert f"BatchNorm statistics: {listing[1]['bn_statistics']}" in out
    assert not list(tmp_path.glob("*.part"))

    status, out = syncbn(capsys, "download", job, "--epoch", "2", "-o", "m.st", "--json")
    assert status == cli.EXIT_OK, out
    saved = json.loads(out)
    assert saved == {**listing[0], "path": "m.st"}
    with safe_open("m.st", framework="pt") as handle:
        assert json.loads(handle.metadata()["syncbn.recipe"])["epoch"] == 2

    status, out = syncbn(capsys, "download", job, "--epoch", "1")
    assert status == cli.EXIT_REJECTED and "HTTP 404" in out and "kept epochs: 2, 3" in out


def test_predict_prints_each_sample_class_and_probability(service, digits, capsys, tmp_path):
    from sklearn.datasets import load_digits as sk_digits

    http, settings = service
    job = submit(http)
    checkpoint(settings, job, 1, digits, JobSpec(dataset="digits"))
    images = sk_digits().images[:3]
    expected = http.post(f"/v1/jobs/{job}/predict", json={"inputs": images.tolist()}).json()
    np.save(tmp_path / "x.npy", images)
    (tmp_path / "x.json").write_text(json.dumps(images.tolist()))

    status, out = syncbn(capsys, "predict", job, "x.npy")
    assert status == cli.EXIT_OK, out
    assert f"job {job}, model of epoch 1: classification" in out
    rows = zip(expected["predictions"], expected["probabilities"], strict=True)
    for i, (k, p) in enumerate(rows):
        assert re.search(rf"│ +{i} │ {k} +│ +{p[k]:.4f} │", out), out
    status, out = syncbn(capsys, "--json", "predict", job, "x.json", "--epoch", "1")
    assert status == cli.EXIT_OK and json.loads(out) == expected

    np.save(tmp_path / "bad.npy", images[:, :4])
    status, out = syncbn(capsys, "predict", job, "bad.npy")
    assert status == cli.EXIT_REJECTED and "inputs: " in out and "shape [3, 4, 8]" in out
    status, out = syncbn(capsys, "predict", job, "x.txt")
    assert status == cli.EXIT_REJECTED and "expected a .npy array or a .json list" in out


def test_predict_counts_the_pixels_of_each_class_of_a_mask(service, capsys, tmp_path):
    http, settings = service
    shapes = make_shapes(n_train=32, n_test=8)
    job = submit(http, dataset="shapes")
    checkpoint(settings, job, 1, shapes, JobSpec(dataset="shapes", batch_size_per_worker=4))
    raw = shapes.x_test[:2] * shapes.std + shapes.mean
    np.save(tmp_path / "x.npy", raw)
    expected = http.post(f"/v1/jobs/{job}/predict", json={"inputs": raw.tolist()}).json()

    status, out = syncbn(capsys, "predict", job, "x.npy")
    assert status == cli.EXIT_OK, out
    assert f"job {job}, model of epoch 1: segmentation" in out
    for i, mask in enumerate(np.asarray(expected["masks"])):
        counts = np.bincount(mask.ravel(), minlength=4)
        names = expected["classes"]
        pixels = ", ".join(f"{k} {names[k]}: {n}" for k, n in enumerate(counts) if n)
        assert re.search(rf"│ +{i} │ 24 x 24 │ {re.escape(pixels)} +│", out), out
