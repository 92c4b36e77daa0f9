"""Model files and predictions without Ray: the file format and its recipe, plain-torch
loading, eval-mode batch independence, and the download/predict routes in process
(``make_app`` of ``conftest.py``; model files written where a job's checkpoints would be). The
end-to-end path (a real job on Ray, uvicorn, the CLI) is in ``tests/e2e/test_model_e2e.py``."""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from fakeray import FakeRay
from inprocess import local_client
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from contract.recipe import MODEL_FILE, RECIPE_KEY, check_inputs, read_recipe
from contract.spec import JobSpec
from workers import export
from workers.data.builtin import load_digits, make_shapes
from workers.data.imagefolder import read_image_folder, write_npz
from workers.data.images import decode_image
from workers.data.npz import load_npz
from workers.export import load_model, predict, recipe_for, write_model_file
from workers.nets import apply_norm, build_model, model_from_recipe


def trained_like(model: torch.nn.Module, x: np.ndarray, steps: int = 3) -> torch.nn.Module:
    """``model`` after a few training-mode forwards (running statistics away from 0/1)."""
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(torch.from_numpy(x[8 * i : 8 * i + 8]))
    return model


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(n_train=32, n_test=8)


def model_file(tmp_path, data, spec: JobSpec, epoch: int = 1, name: str = MODEL_FILE):
    """A model file as rank 0 writes it (syncbn layers: converted with ``norm=sync``)."""
    torch.manual_seed(epoch)
    model = build_model(spec.model, data.input_shape, data.num_classes, data.task)
    normalized = apply_norm(model, spec.norm, group_norm_groups=spec.group_norm_groups)
    model = trained_like(normalized, data.x_train)
    metrics = {"test_accuracy": 0.5, "test_loss": 1.0, "test_miou": None}
    path = tmp_path / name
    write_model_file(path, model, recipe_for(spec, data, epoch, metrics))
    return path, model


@pytest.mark.parametrize("model", ["auto", "mlp"])
def test_the_file_is_plain_batchnorm_state_with_the_recipe(tmp_path, digits, model):
    spec = JobSpec(dataset="digits", model=model, norm="sync", precise_bn_batches=4)
    path, trained = model_file(tmp_path, digits, spec)
    recipe = read_recipe(path)
    assert recipe["model"] == ("resnet" if model == "auto" else "mlp")
    assert recipe["input_shape"] == [8, 8] and recipe["num_classes"] == 10
    assert recipe["preprocess"]["standardize"] == {"mean": digits.mean, "std": digits.std}
    assert recipe["bn_statistics"].startswith("precise")
    assert JobSpec.model_validate(recipe["spec"]) == spec
    # Only tensors and JSON metadata: no pickle. It loads into the plain torch model.
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.metadata()) == {RECIPE_KEY}
    plain = model_from_recipe(recipe)
    assert not any("syncbn" in type(m).__module__ for m in plain.modules())
    plain.load_state_dict(load_file(str(path)), strict=True)
    for key, value in trained.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value), key
    assert any(k.endswith("running_var") for k in load_file(str(path)))


def test_predict_uses_the_recipe_preprocessing_and_running_statistics(tmp_path, digits):
    from sklearn.datasets import load_digits as sk_digits

    path, trained = model_file(tmp_path, digits, JobSpec(dataset="digits"))
    model, recipe = load_model(path)
    raw = sk_digits().images[:40]
    out = predict(model, recipe, raw)
    x = torch.from_numpy(((raw - digits.mean) / digits.std).astype(np.float32))
    with torch.no_grad():
        expected = torch.softmax(trained.eval()(x), 1).numpy()
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-6)
    assert (out["predictions"] == expected.argmax(1)).all()
    # Eval mode: a sample alone gets what it gets inside the batch.
    for i in (0, 17, 39):
        alone = predict(model, recipe, raw[i : i + 1])["probabilities"][0]
        np.testing.assert_allclose(alone, out["probabilities"][i], atol=1e-6, rtol=0)


@pytest.mark.parametrize("groups", [None, 2])
def test_a_group_norm_model_file_loads_and_predicts_without_batch_statistics(
    tmp_path, shapes, groups
):
    spec = JobSpec(dataset="shapes", norm="group", group_norm_groups=groups)
    path, trained = model_file(tmp_path, shapes, spec)
    recipe = read_recipe(path)
    assert recipe["bn_statistics"].startswith("none: norm=group")
    assert not any(k.endswith("running_mean") for k in load_file(str(path)))
    model, _ = load_model(path)  # rebuilt with GroupNorm, loaded strictly
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == (groups or 16) for m in norms[:1])
    raw = shapes.x_test[:4] * shapes.std + shapes.mean
    out = predict(model, recipe, raw)
    x = torch.from_numpy(shapes.x_test[:4])
    with torch.no_grad():
        expected = torch.softmax(trained.eval()(x), 1).numpy()
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    assert out["masks"].shape == (4, *shapes.input_shape[-2:])


def test_segmentation_predicts_a_class_per_pixel(tmp_path, shapes):
    path, _ = model_file(tmp_path, shapes, JobSpec(dataset="shapes", batch_size_per_worker=4))
    model, recipe = load_model(path)
    assert recipe["task"] == "segmentation" and recipe["class_names"][0] == "background"
    raw = shapes.x_test * shapes.std + shapes.mean
    out = predict(model, recipe, raw)
    assert out["masks"].shape == (8, 24, 24) and out["probabilities"].shape == (8, 4, 24, 24)
    np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, atol=1e-5)
    alone = predict(model, recipe, raw[5:6])["probabilities"][0]
    np.testing.assert_allclose(alone, out["probabilities"][5], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        ([[1.0, 2.0]], "shape [1, 2]"),
        ([[[1.0] * 8] * 8, [[1.0] * 8] * 7], "shapes differ"),
        ([[["a"] * 8] * 8], "of numbers"),
        ([[[1.0] * 8] * 8] * 5, "at most 4"),
        ([[[float("nan")] * 8] * 8], "NaN"),
    ],
)
def test_bad_inputs_say_what_is_wrong(inputs, says):
    recipe = {"input_shape": [8, 8]}
    with pytest.raises(ValueError, match=re.escape(says)):
        check_inputs(inputs, recipe, max_samples=4)
    assert check_inputs([[[1] * 8] * 8], recipe, 4).dtype == np.float64


# -- the routes, in process ------------------------------------------------------------------
@pytest.fixture
def service(make_app):
    """(client, settings) of an in-process app on a ``FakeRay`` of 4 CPUs."""
    app = make_app(ray=FakeRay(cpus=4))
    return local_client(app), app.state.settings


def submit(client, **spec) -> str:
    response = client.post("/v1/jobs", json={"dataset": "digits", "epochs": 3, **spec})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def checkpoint(settings, job_id: str, epoch: int, data) -> None:
    folder = settings.runs_dir / job_id / f"checkpoint_2026-01-01_00-00-0{epoch}.000000"
    folder.mkdir(parents=True)
    model_file(folder, data, JobSpec(dataset="digits"), epoch=epoch)


def test_download_lists_serves_and_tags_the_kept_checkpoints(service, digits):
    client, settings = service
    job = submit(client)
    response = client.get(f"/v1/jobs/{job}/model")
    assert response.status_code == 409 and "no checkpoint yet" in response.json()["detail"]
    assert client.get(f"/v1/jobs/{job}/models").json()["models"] == []
    for epoch in (2, 3):
        checkpoint(settings, job, epoch, digits)

    listing = client.get(f"/v1/jobs/{job}/models").json()
    assert [m["epoch"] for m in listing["models"]] == [2, 3]
    assert listing["recipe"]["epoch"] == 3 and listing["recipe"]["model"] == "resnet"
    newest = client.get(f"/v1/jobs/{job}/model")
    assert newest.status_code == 200 and newest.headers["x-syncbn-epoch"] == "3"
    assert newest.headers["etag"] == f'"{listing["models"][1]["sha256"]}"'
    assert f"{job}-epoch3.safetensors" in newest.headers["content-disposition"]
    older = client.get(listing["models"][0]["url"])
    assert older.headers["x-syncbn-epoch"] == "2" and older.content != newest.content
    again = client.get(f"/v1/jobs/{job}/model", headers={"If-None-Match": newest.headers["etag"]})
    assert again.status_code == 304 and again.content == b""

    missing = client.get(f"/v1/jobs/{job}/model", params={"epoch": 1})
    assert missing.status_code == 404 and "kept epochs: 2, 3" in missing.json()["detail"]
    assert client.get("/v1/jobs/job-nope/model").status_code == 404
    assert client.get(f"/v1/jobs/{job}/model", params={"epoch": 0}).status_code == 422


def test_a_job_that_ended_without_a_checkpoint_has_no_model(service):
    client, _ = service
    job = submit(client)
    client.post(f"/v1/jobs/{job}/cancel")
    response = client.post(f"/v1/jobs/{job}/predict", json={"inputs": [[[0] * 8] * 8]})
    assert response.status_code == 404 and "left no checkpoint" in response.json()["detail"]


def test_predict_route_answers_with_classes_and_422s_naming_inputs(service, digits):
    client, settings = service
    job = submit(client)
    checkpoint(settings, job, 1, digits)
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits().images[:6]
    response = client.post(f"/v1/jobs/{job}/predict", json={"inputs": raw.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["epoch"] == 1 and body["task"] == "classification"
    assert len(body["predictions"]) == 6 and np.shape(body["probabilities"]) == (6, 10)
    assert body["masks"] is None and body["classes"] is None
    alone = client.post(f"/v1/jobs/{job}/predict", json={"inputs": raw[2:3].tolist()}).json()
    np.testing.assert_allclose(alone["probabilities"][0], body["probabilities"][2], atol=1e-6)

    for bad in ([[1, 2, 3]], [[["x"] * 8] * 8], [], "digits"):
        response = client.post(f"/v1/jobs/{job}/predict", json={"inputs": bad})
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"][-1] == "inputs", response.json()
    too_many = [[[0] * 8] * 8] * (settings.max_predict_samples + 1)
    response = client.post(f"/v1/jobs/{job}/predict", json={"inputs": too_many})
    assert response.status_code == 422 and "at most" in response.text
    images = client.post(
        f"/v1/jobs/{job}/predict/images", files=[("files", ("a.png", png(np.zeros((8, 8)))))]
    )
    assert images.status_code == 422 and "trained on arrays" in images.text
    assert images.json()["detail"][0]["loc"][-1] == "files"


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_a_model_of_an_image_folder_predicts_image_files(service, tmp_path):
    """Image files are decoded, converted and resized as the upload was, then predicted."""
    rng = np.random.default_rng(0)
    members = {
        f"{name}/{i}.png": png(rng.integers(lo, lo + 100, (10, 12, 3)))
        for name, lo in (("dark", 0), ("light", 150))
        for i in range(6)
    }
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    write_npz(read_image_folder(archive, size=(8, 6)), tmp_path / "pics.npz")
    data = load_npz(tmp_path / "pics.npz")
    assert data.from_images and data.input_shape == (3, 6, 8)
    client, settings = service
    job = submit(client)
    folder = settings.runs_dir / job / "checkpoint_2026-01-01_00-00-01.000000"
    folder.mkdir(parents=True)
    model_file(folder, data, JobSpec(dataset="pics", batch_size_per_worker=4))

    # A gray image and an RGB one of another size: converted to RGB and resized to 8x6.
    gray, colour = png(rng.integers(0, 256, (20, 30))), members["light/0.png"]
    answer = client.post(
        f"/v1/jobs/{job}/predict/images",
        files=[("files", ("g.png", gray)), ("files", ("c.png", colour))],
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["classes"] == ["dark", "light"]
    decoded = [decode_image(b, "x", (3, 6, 8), 10**6) for b in (gray, colour)]
    same = client.post(f"/v1/jobs/{job}/predict", json={"inputs": np.stack(decoded).tolist()})
    np.testing.assert_allclose(
        answer.json()["probabilities"], same.json()["probabilities"], atol=1e-6
    )
    bad = client.post(
        f"/v1/jobs/{job}/predict/images", files=[("files", ("notes.png", b"not an image"))]
    )
    assert bad.status_code == 422 and "notes.png" in bad.json()["detail"][0]["msg"]


def test_predictions_are_bounded_before_any_work(make_app, digits, monkeypatch):
    """Row 4 of issue 20: what a request takes in and gives back is budgeted before the model
    runs (SYNCBN_MAX_PREDICT_VALUES), image files' pixels before they are decoded
    (SYNCBN_MAX_DECODED_PIXELS), and the model runs in chunks with the same answers."""
    app = make_app(
        ray=FakeRay(cpus=4), max_predict_values=110 * (64 + 10), max_decoded_pixels=4096 * 4096
    )
    settings, client = app.state.settings, local_client(app)
    job = submit(client)
    checkpoint(settings, job, 1, digits)
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits().images
    response = client.post(f"/v1/jobs/{job}/predict", json={"inputs": raw[:111].tolist()})
    assert response.status_code == 422, response.text
    assert "SYNCBN_MAX_PREDICT_VALUES" in response.text and "111 samples" in response.text
    whole = client.post(f"/v1/jobs/{job}/predict", json={"inputs": raw[:110].tolist()}).json()
    monkeypatch.setattr(export, "PREDICT_CHUNK_VALUES", 64 * 7)  # 7 samples a forward pass
    chunked = client.post(f"/v1/jobs/{job}/predict", json={"inputs": raw[:110].tolist()}).json()
    np.testing.assert_allclose(chunked["probabilities"], whole["probabilities"], atol=1e-6)
    assert chunked["predictions"] == whole["predictions"]

    flat = io.BytesIO()
    Image.new("L", (4096, 4096), 7).save(flat, format="PNG")
    files = [("files", (f"{i}.png", flat.getvalue())) for i in range(2)]
    images = client.post(f"/v1/jobs/{job}/predict/images", files=files)
    assert images.status_code == 422  # a model of arrays: refused before decoding anything
    pics = make_shapes(n_train=8, n_test=2)
    pictures = submit(client, dataset="shapes")
    folder = settings.runs_dir / pictures / "checkpoint_2026-01-01_00-00-01.000000"
    folder.mkdir(parents=True)
    model_file(folder, replace(pics, from_images=True), JobSpec(dataset="shapes"))
    response = client.post(f"/v1/jobs/{pictures}/predict/images", files=files)
    assert response.status_code == 422, response.text
    assert "SYNCBN_MAX_DECODED_PIXELS" in response.text
    assert response.json()["detail"][0]["loc"][-1] == "files"


def test_a_model_whose_code_bundle_was_deleted_says_so(service, digits):
    client, settings = service
    job = submit(client)
    folder = settings.runs_dir / job / "checkpoint_2026-01-01_00-00-01.000000"
    folder.mkdir(parents=True)
    spec = JobSpec(dataset="digits", code="code-0123456789ab", model="net:build_model")
    model = build_model("mlp", digits.input_shape, digits.num_classes, digits.task)
    write_model_file(folder / MODEL_FILE, model, recipe_for(spec, digits, 1, {}))
    response = client.post(f"/v1/jobs/{job}/predict", json={"inputs": [[[0] * 8] * 8]})
    assert response.status_code == 409 and "was deleted" in response.json()["detail"]
