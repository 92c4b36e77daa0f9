"""Image-folder uploads through the real REST service: ``idle_service`` (256 kB uploads, jobs
never start), one service of their own with tiny image limits, and one end-to-end training run
on ``service`` whose model predicts image files. Images are made with Pillow
(``imagekit.py``); the reader alone is tested in ``tests/unit/test_imagefolder.py``.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from imagekit import encode, make_zip, noise_png, png_header, solid, two_classes
from PIL import Image
from servicekit import UPLOAD_LIMIT, ServiceProcess

from workers.data.images import decode_image
from workers.data.npz import load_npz


# -- through the REST service ------------------------------------------------------------------
def post(service, blob: bytes, name: str = "images.zip", **form: str):
    files = {"file": (name, blob, "application/zip")}
    return service.client.post("/v1/datasets", files=files, data=form)


def stored(service) -> tuple[set[str], set[str]]:
    """Files in the service's datasets folder, and the dataset ids it lists."""
    folder = service.home / "datasets"
    files = {p.name for p in folder.iterdir()} if folder.exists() else set()
    listed = service.client.get("/v1/datasets")
    assert listed.status_code == 200, listed.text
    return files, {d["id"] for d in listed.json()["datasets"]}


def assert_error_names(response, status: int, field: str | None, text: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    if field is None:
        assert text in detail, detail
        return
    messages = [e["msg"] for e in detail if e["loc"][-1] == field]
    assert messages and any(text in m for m in messages), detail


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


GOOD_ZIP = make_zip(two_classes(6))
SMALL_NPZ = _npz_bytes(x=np.zeros((8, 3), np.float32), y=np.arange(8) % 2)

# (id, upload, form fields, status, field named, text in its message)
REST_ERRORS = [
    ("corrupt-image", make_zip(two_classes(**{"cats/003.png": b"\x89PNG broken"})), {}, 422,
     "file", "cats/003.png: cannot decode image"),
    ("truncated-image", make_zip(two_classes(**{"dogs/7.png": noise_png()[:60]})), {}, 422,
     "file", "dogs/7.png: cannot decode image"),
    ("mixed-sizes", make_zip(two_classes(**{"dogs/009.png": solid("L", 1, (5, 5))})), {}, 422,
     "file", "cats/000.png is 6x4 but dogs/009.png is 5x5"),
    ("one-class", make_zip({"cats/0.png": solid("L", 1), "cats/1.png": solid("L", 2)}), {}, 422,
     "file", "need at least 2"),
    ("dotdot", make_zip(two_classes(**{"cats/../../1.png": solid("L", 1)})), {}, 422, "file",
     "cats/../../1.png: '..'"),
    ("symlink", make_zip(two_classes(), links=("dogs/l.png",)), {}, 422, "file",
     "dogs/l.png: links"),
    ("not-an-image", make_zip(two_classes(**{"cats/notes.txt": b"hi"})), {}, 422, "file",
     "cats/notes.txt: not an image file"),
    ("test-class-not-in-train",
     make_zip(two_classes(prefix="train/") | {"test/emus/0.png": solid("L", 1)}), {}, 422,
     "file", "test/emus/: class 'emus' is not in train/"),
    ("pixels-from-header", make_zip(two_classes(**{"dogs/big.png": png_header(5000, 5000)})), {},
     422, "file", "dogs/big.png: 5000x5000 is 25000000 pixels"),
    ("decompression-bomb", make_zip(two_classes(**{"dogs/b.png": png_header(30000, 30000)})), {},
     422, "file", "dogs/b.png: "),
    ("unpacks-over-limit",
     make_zip(two_classes(**{"cats/pad.bmp": solid("L", 0, (600, 600), "BMP")})), {}, 422,
     "file", "unpacks to"),
    ("decodes-over-limit", GOOD_ZIP, {"image_size": "300x300"}, 422, "file", "decode to about"),
    ("image-size-garbage", GOOD_ZIP, {"image_size": "big"}, 422, "image_size", "not a size"),
    ("image-size-zero", GOOD_ZIP, {"image_size": "0x3"}, 422, "image_size", "at least 1"),
    ("image-size-over-pixel-limit", GOOD_ZIP, {"image_size": "5000x5000"}, 422, "image_size",
     "more than the limit"),
    ("image-size-on-npz", SMALL_NPZ, {"image_size": "32"}, 422, "image_size", "image-folder"),
    ("upload-over-limit", b"PK\x03\x04" + bytes(UPLOAD_LIMIT), {}, 413, None, "larger than"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("blob", "form", "status", "field", "text"),
    [c[1:] for c in REST_ERRORS],
    ids=[c[0] for c in REST_ERRORS],
)
def test_bad_image_folder_uploads_get_a_4xx_and_leave_nothing(
    idle_service, blob, form, status, field, text
):
    before = stored(idle_service)
    assert_error_names(post(idle_service, blob, **form), status, field, text)
    assert stored(idle_service) == before


@pytest.fixture(scope="module")
def limited_service(tmp_path_factory, ray_head):
    """A service (jobs never start) taking at most 10 images of at most 30 pixels each."""
    env = {
        "SYNCBN_MAX_RUNNING_JOBS": "0",
        "SYNCBN_MAX_UPLOAD_IMAGES": "10",
        "SYNCBN_MAX_IMAGE_PIXELS": "30",
    }
    process = ServiceProcess(tmp_path_factory.mktemp("limited"), ray_head.dashboard_url, env=env)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_image_limits_come_from_the_settings(limited_service):
    before = stored(limited_service)
    assert_error_names(post(limited_service, GOOD_ZIP), 422, "file", "12 images, more than")
    big = make_zip({"a/0.png": solid("L", 1, (6, 6)), "b/0.png": solid("L", 2, (6, 6))})
    assert_error_names(post(limited_service, big), 422, "file", "a/0.png: 6x6 is 36 pixels")
    small = make_zip(two_classes(5))  # 10 images of 6x4 = 24 pixels
    assert post(limited_service, small).status_code == 201
    files, ids = stored(limited_service)
    (new,) = ids - before[1]
    assert files - before[0] == {f"{new}.npz"}


def test_good_upload_returns_task_class_names_and_shape(idle_service):
    members = {
        **{f"train/{c}/{i}.png": solid("RGB", (40 * i, k, 9), (10, 8)) for k, c in
           enumerate(["zebra", "ant", "Moth"]) for i in range(4)},
        "train/ant/big.jpg": solid("L", 100, (20, 16), "JPEG"),
        "test/ant/0.png": solid("L", 3, (5, 4)),
        "test/zebra/0.png": solid("RGBA", (1, 2, 3, 4), (30, 24)),
    }  # fmt: skip
    before = stored(idle_service)
    response = post(idle_service, make_zip(members), "../pics.zip", image_size=" 10x8 ")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["name"] == "pics.zip" and dataset["task"] == "classification"
    assert dataset["class_names"] == ["Moth", "ant", "zebra"] and dataset["num_classes"] == 3
    assert dataset["input_shape"] == [3, 8, 10]  # (channels, height, width)
    assert (dataset["n_train"], dataset["n_test"]) == (13, 2)
    files, ids = stored(idle_service)
    assert ids - before[1] == {dataset["id"]}
    assert files - before[0] == {f"{dataset['id']}.npz"}  # no partial or converted file
    data = load_npz(idle_service.home / "datasets" / f"{dataset['id']}.npz")
    assert data.class_names == ("Moth", "ant", "zebra") and data.y_test.tolist() == [1, 2]


def test_npz_uploads_keep_their_class_names(idle_service):
    blob = _npz_bytes(
        x=np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32),
        y=np.arange(20) % 2,
        classes=np.array(["no", "yes"]),
    )
    response = post(idle_service, blob, "table.npz")
    assert response.status_code == 201, response.text
    assert response.json()["class_names"] == ["no", "yes"]


def _pattern(kind: int, rng: np.random.Generator) -> bytes:
    """12x12 images: dark noise (gray), bright noise (gray), red/blue stripes (RGB)."""
    if kind == 0:
        return encode(Image.fromarray(rng.integers(0, 80, (12, 12), dtype=np.uint8)))
    if kind == 1:
        return encode(Image.fromarray(rng.integers(170, 256, (12, 12), dtype=np.uint8)))
    pixels = np.zeros((12, 12, 3), np.uint8)
    offset = int(rng.integers(0, 2))
    pixels[:, offset::2, 0] = rng.integers(150, 256, (12, 6))
    pixels[:, 1 - offset :: 2, 2] = 200
    return encode(Image.fromarray(pixels))


def test_an_uploaded_image_folder_trains_end_to_end_and_predicts_image_files(service, tmp_path):
    rng = np.random.default_rng(0)
    names = ["dark", "light", "stripes"]
    members = {f"{names[k]}/{i:03d}.png": _pattern(k, rng) for k in range(3) for i in range(40)}
    response = post(service, make_zip(members), "patterns.zip")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["class_names"] == names and dataset["input_shape"] == [3, 12, 12]
    job = service.submit(dataset=dataset["id"], workers=2, batch_size_per_worker=8, epochs=2)
    done = service.wait_final(job["id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["test_accuracy"] > 0.6  # chance: 1/3

    # Predict image files with the CLI: decoded (gray -> RGB) as the upload was.
    for name in ("dark/000.png", "stripes/001.png"):
        (tmp_path / name.replace("/", "-")).write_bytes(members[name])
    images = sorted(tmp_path.glob("*.png"))
    cli = service.cli("predict", job["id"], *map(str, images), "--json")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    answer = json.loads(cli.stdout)
    assert answer["classes"] == names and len(answer["predictions"]) == 2
    arrays = [decode_image(p.read_bytes(), p.name, (3, 12, 12), 10**6) for p in images]
    same = service.client.post(
        f"/v1/jobs/{job['id']}/predict", json={"inputs": np.stack(arrays).tolist()}
    )
    np.testing.assert_allclose(answer["probabilities"], same.json()["probabilities"], atol=1e-6)
