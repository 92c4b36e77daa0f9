"""Model files a job's user code wrote (issue 27): whatever lies in ``<runs>/<job>/checkpoint_*``
is untrusted. A recipe that is not valid, a header over the limit, absurd shapes, a link out of
the run folder (the file, its checkpoint folder or the run folder itself) are refused with a
409 naming the file and the field on ``/models``, ``/model``, ``/predict`` and
``/predict/images``, never a 500 and never read through the link; the valid files still work;
the recipe cache stays under its bound in bytes. The in-process app and the model files are
those of ``test_model_files.py``."""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from fakeray import FakeRay
from inprocess import local_client
from test_model_files import model_file, png, submit

from contract.recipe import (
    MAX_HEADER_BYTES,
    MAX_NAME_CHARS,
    MODEL_FILE,
    RECIPE_KEY,
    RecipeError,
    read_recipe,
    validate_recipe,
)
from contract.spec import JobSpec
from service.errors import Conflict
from service.files import trained_models
from service.files.lru import LRU
from service.files.trained_models import RECIPE_CACHE_BYTES, model_files
from workers.data.builtin import load_digits
from workers.export import recipe_for, write_model_file
from workers.nets import build_model

DIGIT = [[0] * 8] * 8
FOLDER = "checkpoint_2026-01-01_00-00-0{}.000000"


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def good(digits) -> dict:
    """A valid recipe, as the worker writes it (digits, resnet, epoch 1)."""
    recipe = recipe_for(JobSpec(dataset="digits"), digits, 1, {"test_accuracy": 0.5})
    return json.loads(json.dumps(recipe))


@pytest.fixture
def service(make_app):
    app = make_app(ray=FakeRay(cpus=4))
    return local_client(app), app.state.settings


def raw_file(path: Path, recipe=None, *, metadata=None, header: bytes | None = None) -> Path:
    """A safetensors file of no tensors whose header is ``header``, or holds ``metadata``, or a
    recipe (``recipe``: JSON text, or a value to dump)."""
    if header is None:
        if metadata is None:
            text = recipe if isinstance(recipe, str) else json.dumps(recipe)
            metadata = {RECIPE_KEY: text}
        header = json.dumps({"__metadata__": metadata}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def folder(settings, job: str, epoch: int = 1) -> Path:
    path = settings.runs_dir / job / FOLDER.format(epoch)
    path.mkdir(parents=True, exist_ok=True)
    return path


def answers(client, job: str) -> dict[str, object]:
    """What each model route answers for ``job`` (the newest model)."""
    image = [("files", ("a.png", png(np.zeros((8, 8)))))]
    return {
        "models": client.get(f"/v1/jobs/{job}/models"),
        "model": client.get(f"/v1/jobs/{job}/model"),
        "predict": client.post(f"/v1/jobs/{job}/predict", json={"inputs": [DIGIT]}),
        "images": client.post(f"/v1/jobs/{job}/predict/images", files=image),
    }


def assert_refused(client, job: str, *says: str) -> None:
    for route, response in answers(client, job).items():
        assert response.status_code == 409, (route, response.status_code, response.text)
        detail = response.json()["detail"]
        assert FOLDER.format(1) in detail and "refuses" in detail, (route, detail)
        for words in says:
            assert words in detail, (route, detail)


HOSTILE = {
    "a list": ([1], "recipe: Input should be a valid dictionary"),
    "the epoch alone": ({"epoch": 1}, "version: Field required"),
}
"""Recipes on their own."""
CHANGED = {
    "absurd shapes": (
        {"input_shape": [10**12, 10**12]},
        "input_shape.0: Input should be less than or equal to 65536",
    ),
    "too many values": ({"input_shape": [4096, 4096, 4096]}, "values per sample"),
    "absurd classes": ({"num_classes": 10**12}, "num_classes"),
    "names for other classes": ({"class_names": ["a", "b"]}, "2 names for num_classes=10"),
    "a shape the model cannot take": ({"input_shape": [64]}, "cannot take samples"),
    "a 1-D segmentation": (
        {"task": "segmentation", "model": "unet", "input_shape": [64]},
        "segmentation samples",
    ),
    "an unknown builder": ({"model": "evil:build"}, "not a built-in model"),
    "builtin with code": ({"builtin": False}, "disagree with the spec"),
    "an invalid spec": ({"spec": {"dataset": "../etc"}}, "spec.dataset"),
    "a newer version": ({"version": 2}, "version"),
    "an unknown field": ({"rm": "-rf"}, "rm: Extra inputs are not permitted"),
    "a long class name": (
        {"class_names": ["x" * (MAX_NAME_CHARS + 1)] + ["y"] * 9, "num_classes": 10},
        "class_names.0",
    ),
}
"""Valid recipes with these fields changed."""


@pytest.mark.parametrize("case", [*HOSTILE, *CHANGED])
def test_a_hostile_recipe_is_a_409_naming_the_file_and_field(service, good, case):
    if case in HOSTILE:
        recipe, says = HOSTILE[case]
    else:
        change, says = CHANGED[case]
        recipe = {**good, **change}
    client, settings = service
    job = submit(client)
    raw_file(folder(settings, job) / MODEL_FILE, recipe)
    named = "invalid recipe of epoch 1" if case in CHANGED else "invalid recipe"
    assert_refused(client, job, says, named, "no valid model file is kept")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ({"metadata": {"other": "x"}}, "no 'syncbn.recipe' metadata"),
        ({"metadata": {RECIPE_KEY: 1}}, "no 'syncbn.recipe' metadata"),
        ({"recipe": "{not json"}, "its recipe is not JSON"),
        ({"recipe": "[" * 100_000}, "its recipe is not JSON"),
        ({"header": b"[1, 2]"}, "not a JSON object"),
        ({"header": b'{"__metadata__": [1]}'}, "not a JSON object"),
        ({"header": b"\xff" * 64}, "its safetensors header is not JSON"),
        ({"header": b"[" * 200_000}, "its safetensors header is not JSON"),
        ({"header": b"1" * 5000}, "its safetensors header is not JSON"),
    ],
)
def test_a_file_that_is_not_a_model_file_is_a_409(service, content, says):
    client, settings = service
    job = submit(client)
    options = {k: v for k, v in content.items() if k != "recipe"}
    raw_file(folder(settings, job) / MODEL_FILE, content.get("recipe"), **options)
    assert_refused(client, job, says)


def test_a_header_over_the_limit_is_refused_before_it_is_read(service, good):
    client, settings = service
    job = submit(client)
    padded = {**good, "bn_statistics": "x" * 1000}
    metadata = {RECIPE_KEY: json.dumps(padded), "padding": "p" * MAX_HEADER_BYTES}
    raw_file(folder(settings, job) / MODEL_FILE, metadata=metadata)
    assert_refused(client, job, f"over the limit of {MAX_HEADER_BYTES}")
    # A header length of 2**64 - 1 (the file is short): refused by its length alone.
    path = folder(settings, job, 2) / MODEL_FILE
    path.write_bytes(b"\xff" * 8 + b"{}")
    response = client.get(f"/v1/jobs/{job}/models")
    assert response.status_code == 409 and str(2**64 - 1) in response.json()["detail"]


def test_a_file_shorter_than_its_header_is_being_written(service, good):
    """A file cut short (Ray Train copying it) is skipped, as before: no model yet."""
    client, settings = service
    job = submit(client)
    path = raw_file(folder(settings, job) / MODEL_FILE, good)
    path.write_bytes(path.read_bytes()[:100])
    response = client.get(f"/v1/jobs/{job}/model")
    assert response.status_code == 409 and "no checkpoint yet" in response.json()["detail"]
    assert client.get(f"/v1/jobs/{job}/models").json()["models"] == []


def test_a_valid_epoch_is_still_served_beside_a_refused_file(service, digits):
    client, settings = service
    job = submit(client)
    model_file(folder(settings, job, 1), digits, JobSpec(dataset="digits"), epoch=1)
    raw_file(folder(settings, job, 2) / MODEL_FILE, [1])

    listing = client.get(f"/v1/jobs/{job}/models")
    assert listing.status_code == 200, listing.text
    assert [m["epoch"] for m in listing.json()["models"]] == [1]
    assert listing.json()["recipe"]["epoch"] == 1
    assert FOLDER.format(2) in listing.headers["x-syncbn-refused-models"]
    # The newest cannot be told (the refused file's epoch is unknown): a 409 saying so.
    newest = client.get(f"/v1/jobs/{job}/model")
    assert newest.status_code == 409, newest.text
    assert "valid kept epochs: 1" in newest.json()["detail"]
    assert FOLDER.format(2) in newest.json()["detail"]
    chosen = client.get(f"/v1/jobs/{job}/model", params={"epoch": 1})
    assert chosen.status_code == 200 and chosen.headers["x-syncbn-epoch"] == "1"
    predicted = client.post(f"/v1/jobs/{job}/predict", json={"inputs": [DIGIT], "epoch": 1})
    assert predicted.status_code == 200, predicted.text
    missing = client.post(f"/v1/jobs/{job}/predict", json={"inputs": [DIGIT], "epoch": 3})
    assert missing.status_code == 409 and "valid kept epochs: 1" in missing.text


def test_a_non_finite_metric_reads_as_null(service, digits, good):
    client, settings = service
    job = submit(client)
    model = build_model("resnet", digits.input_shape, digits.num_classes, digits.task)
    recipe = {**good, "metrics": {"test_loss": float("nan"), "test_accuracy": 0.5}}
    write_model_file(folder(settings, job) / MODEL_FILE, model, recipe)
    listing = client.get(f"/v1/jobs/{job}/models")
    assert listing.status_code == 200, listing.text
    assert listing.json()["models"][0]["metrics"] == {"test_loss": None, "test_accuracy": 0.5}


# -- links out of the run folder --------------------------------------------------------------
@pytest.fixture
def outside(tmp_path, digits) -> Path:
    """A valid model file outside any run folder (another job's, say)."""
    where = tmp_path / "elsewhere"
    where.mkdir()
    return model_file(where, digits, JobSpec(dataset="digits"), epoch=1)[0]


def test_a_linked_model_file_is_refused_even_when_valid(service, outside):
    client, settings = service
    job = submit(client)
    (folder(settings, job) / MODEL_FILE).symlink_to(outside)
    assert_refused(client, job, "a symbolic link")


def test_a_link_to_a_secret_is_refused_without_reading_it(service, tmp_path):
    """Before, the listing skipped it but ``size``/``etag`` followed the link: now it is
    never opened, so neither its size nor its hash leaks."""
    client, settings = service
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret")
    job = submit(client)
    (folder(settings, job) / MODEL_FILE).symlink_to(secret)
    assert_refused(client, job, "a symbolic link")


def test_a_linked_checkpoint_folder_is_refused(service, outside):
    client, settings = service
    job = submit(client)
    (settings.runs_dir / job).mkdir(parents=True)
    (settings.runs_dir / job / FOLDER.format(1)).symlink_to(outside.parent)
    assert_refused(client, job, "a symbolic link")


def test_a_linked_run_folder_is_refused(service, outside):
    client, settings = service
    job = submit(client)
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    target = outside.parent.parent / "run"
    (target / FOLDER.format(1)).mkdir(parents=True)
    shutil.copy(outside, target / FOLDER.format(1) / MODEL_FILE)
    (settings.runs_dir / job).symlink_to(target)
    for route, response in answers(client, job).items():
        assert response.status_code == 409, (route, response.text)
        assert "a symbolic link" in response.json()["detail"], route


def test_a_fifo_is_refused_without_blocking(service):
    client, settings = service
    job = submit(client)
    os.mkfifo(folder(settings, job) / MODEL_FILE)
    done = threading.Event()
    result = {}

    def ask() -> None:
        result["r"] = client.get(f"/v1/jobs/{job}/models")
        done.set()

    threading.Thread(target=ask, daemon=True).start()
    assert done.wait(20), "reading a FIFO blocked the route"
    assert result["r"].status_code == 409 and "not a plain file" in result["r"].text


def test_a_file_swapped_after_its_check_is_not_served(service, digits, outside):
    """Between the listing and the read the job may swap the file: a link is refused, another
    file is 'removed' (ask again), never served as the checked one."""
    client, settings = service
    job = submit(client)
    where = folder(settings, job)
    model_file(where, digits, JobSpec(dataset="digits"), epoch=1)
    (file,) = model_files(settings.runs_dir, job).files.values()
    (where / MODEL_FILE).unlink()
    (where / MODEL_FILE).symlink_to(outside)
    with pytest.raises(Conflict, match="symbolic link"):
        file.open()
    (where / MODEL_FILE).unlink()
    model_file(where, digits, JobSpec(dataset="digits"), epoch=1)
    with pytest.raises(FileNotFoundError):
        file.open()
    assert client.get(f"/v1/jobs/{job}/model").status_code == 200


def test_weights_that_do_not_fit_the_recipe_are_a_409_on_predict(service, digits, good):
    client, settings = service
    job = submit(client)
    mlp = build_model("mlp", digits.input_shape, digits.num_classes, digits.task)
    write_model_file(folder(settings, job) / MODEL_FILE, mlp, good)  # says resnet
    assert client.get(f"/v1/jobs/{job}/model").status_code == 200  # served as it is
    response = client.post(f"/v1/jobs/{job}/predict", json={"inputs": [DIGIT]})
    assert response.status_code == 409, response.text
    assert "cannot be loaded" in response.json()["detail"]


def test_a_file_larger_than_its_weights_is_not_loaded(service, digits, good):
    client, settings = service
    job = submit(client)
    resnet = build_model("resnet", digits.input_shape, digits.num_classes, digits.task)
    path = write_model_file(folder(settings, job) / MODEL_FILE, resnet, good)
    with open(path, "ab") as handle:
        handle.truncate(path.stat().st_size + 2 * MAX_HEADER_BYTES)
    response = client.post(f"/v1/jobs/{job}/predict", json={"inputs": [DIGIT]})
    assert response.status_code == 409 and "weights: refused" in response.json()["detail"]


# -- the recipe itself, and what is kept in memory --------------------------------------------
def test_valid_recipes_read_back_as_written(tmp_path, good):
    path = raw_file(tmp_path / MODEL_FILE, good)
    assert read_recipe(path) == good
    older = {k: v for k, v in good.items() if k != "inputs"}  # before image-folder uploads
    assert validate_recipe(older) == older
    with pytest.raises(RecipeError, match=r"bad\.safetensors: invalid recipe"):
        read_recipe(raw_file(tmp_path / "bad.safetensors", [1]))


def large_recipe(good: dict, epoch: int) -> dict:
    """A valid recipe near the largest allowed: 1000 class names of 512 characters."""
    names = [f"{i:04d}".ljust(MAX_NAME_CHARS, "x") for i in range(1000)]
    return {
        **good,
        "model": "mlp",
        "input_shape": [16],
        "num_classes": 1000,
        "class_names": names,
        "epoch": epoch,
    }


def test_the_recipe_cache_stays_under_its_bound_in_bytes(tmp_path, good, monkeypatch):
    monkeypatch.setattr(trained_models, "_recipes", LRU(RECIPE_CACHE_BYTES))
    runs = tmp_path / "runs"
    for job in range(24):  # 24 x 0.5 MB of recipes, three times the bound
        raw_file(runs / f"job-{job}" / FOLDER.format(1) / MODEL_FILE, large_recipe(good, 1))
        kept = model_files(runs, f"job-{job}")
        assert list(kept.files) == [1] and not kept.refused
        assert trained_models._recipes.total <= RECIPE_CACHE_BYTES
    assert 8 <= len(trained_models._recipes) < 24
    # Small real recipes are many more.
    assert len(json.dumps(large_recipe(good, 1))) > 500_000


def test_the_lru_keeps_the_recently_used_within_its_bytes_and_entries():
    cache = LRU(100, max_entries=3)
    for key in "abc":
        cache.put(key, key.upper(), 30)
    assert cache.get("a") == "A"  # now the most recent
    cache.put("d", "D", 30)  # over 100 bytes: b goes
    assert cache.get("b") is None and cache.total == 90 and len(cache) == 3
    cache.put("huge", "H", 101)  # heavier than the bound: not kept, nothing dropped
    assert cache.get("huge") is None and len(cache) == 3
    cache.put("e", "E", 1)  # 4 entries: the least recent (c) goes
    assert cache.get("c") is None and cache.get("a") == "A" and cache.total == 61
