"""Image-folder uploads: ``workers.data.imagefolder`` on its own, then through the REST service.

Images are made here with Pillow (nothing is downloaded). REST tests use ``idle_service``
(256 kB uploads, jobs never start), one service of their own with tiny image limits, and one
end-to-end training run on ``service``.
"""

from __future__ import annotations

import io
import json
import stat
import struct
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from conftest import UPLOAD_LIMIT
from PIL import Image
from servicekit import ServiceProcess

from contract.datasets import DatasetError
from workers.data.imagefolder import (
    ImageFolderArrays,
    is_image_folder,
    parse_size,
    read_image_folder,
    write_npz,
)
from workers.data.images import decode_image
from workers.data.npz import load_npz


# -- making archives ---------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def solid(mode: str, value, size: tuple[int, int] = (6, 4), fmt: str = "PNG") -> bytes:
    return encode(Image.new(mode, size, value), fmt)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def make_zip(members: dict[str, bytes | None], links: tuple[str, ...] = ()) -> bytes:
    """A zip of ``members`` (None: a folder entry); ``links``: symlink members."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            if data is None:
                archive.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            else:
                archive.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def two_classes(n: int = 3, prefix: str = "", **extra: bytes | None) -> dict[str, bytes | None]:
    members: dict[str, bytes | None] = {}
    for i in range(n):
        members[f"{prefix}cats/{i:03d}.png"] = solid("L", 40 + i)
        members[f"{prefix}dogs/{i:03d}.png"] = solid("L", 200 - i)
    members.update(extra)
    return members


def read(members: dict[str, bytes | None], **kwargs) -> ImageFolderArrays:
    return read_image_folder(io.BytesIO(make_zip(members)), **kwargs)


# -- decoding ----------------------------------------------------------------------------------
def test_class_folders_grayscale_sorted_like_torchvision():
    members = {
        f"{name}/{i}.png": solid("L", 10 * k + i) for k, name in enumerate("bCa") for i in (0, 1)
    }
    arrays = read(members)
    assert arrays.classes == ("C", "a", "b")  # plain str sort, as torchvision's sorted()
    assert arrays.x.dtype == np.uint8 and arrays.x.shape == (6, 4, 6)
    assert arrays.y.dtype == np.int64 and arrays.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert arrays.x[:, 0, 0].tolist() == [10, 11, 20, 21, 0, 1]  # C=second, a=third, b=first
    assert arrays.x_test is None and arrays.y_test is None


def test_train_test_layout_uses_trains_class_list():
    members = {
        **two_classes(3, "train/"),
        "train/emus/0.png": solid("L", 99),
        "test/dogs/0.png": solid("L", 7),
        "test/cats/0.png": solid("L", 8),
    }
    arrays = read(members)
    assert arrays.classes == ("cats", "dogs", "emus")
    assert arrays.y.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert arrays.x_test.shape == (2, 4, 6) and arrays.y_test.tolist() == [0, 1]
    assert arrays.x_test[:, 0, 0].tolist() == [8, 7]


def test_any_colour_image_makes_every_image_rgb_channels_first():
    members = {
        "a/gray.png": solid("L", 77),
        "a/bits.png": solid("1", 1),
        "a/wide.png": encode(Image.fromarray(np.full((4, 6), 65535, np.uint16))),  # I;16
        "a/alpha.png": solid("LA", (90, 0)),
        "b/rgb.png": solid("RGB", (255, 0, 0)),
        "b/rgba.png": solid("RGBA", (0, 255, 0, 10)),
        "b/cmyk.jpg": solid("CMYK", (0, 0, 0, 0), fmt="JPEG"),
        "b/palette.png": encode(Image.new("RGB", (6, 4), (0, 0, 255)).convert("P")),
        "b/photo.bmp": solid("RGB", (1, 2, 3), fmt="BMP"),
    }
    arrays = read(members)
    assert arrays.x.shape == (9, 3, 4, 6)
    first = {
        n.rsplit("/", 1)[1]: arrays.x[i, :, 0, 0].tolist() for i, n in enumerate(sorted(members))
    }
    assert first["gray.png"] == [77, 77, 77] and first["bits.png"] == [255] * 3
    assert first["wide.png"] == [255] * 3 and first["alpha.png"] == [90] * 3
    assert first["rgb.png"] == [255, 0, 0] and first["rgba.png"] == [0, 255, 0]
    assert first["palette.png"] == [0, 0, 255] and first["photo.bmp"] == [1, 2, 3]
    assert min(first["cmyk.jpg"]) > 240  # no ink: white


def test_grayscale_modes_stay_single_channel():
    members = {
        "a/l.png": solid("L", 5),
        "a/16bit.png": encode(Image.fromarray(np.full((4, 6), 257 * 100, np.uint16))),
        "b/alpha.png": solid("LA", (33, 255)),
        "b/bits.tif": solid("1", 0, fmt="TIFF"),
    }
    arrays = read(members)
    assert arrays.x.shape == (4, 4, 6)
    assert arrays.x[:, 1, 1].tolist() == [100, 5, 33, 0]


def test_resize_to_the_given_width_and_height():
    members = {
        "a/small.png": solid("L", 50, (3, 3)),
        "a/wide.png": solid("L", 60, (40, 10)),
        "b/colour.jpg": solid("RGB", (0, 0, 250), (7, 9), fmt="JPEG"),
    }
    with pytest.raises(DatasetError, match="differ in size"):
        read(members)
    arrays = read(members, size=(8, 5))
    assert arrays.x.shape == (3, 3, 5, 8)  # (N, C, height, width)
    assert (arrays.x[0] == 50).all() and (arrays.x[1] == 60).all()  # bilinear keeps solids
    assert abs(int(arrays.x[2, 2].mean()) - 250) < 8


def test_wrapper_folder_nested_images_and_ignored_files():
    members = {
        **two_classes(2, "mydata/"),
        "mydata/cats/more/deep.png": solid("L", 1),
        "mydata/.DS_Store": b"\0",
        "mydata/dogs/._001.png": b"AppleDouble",
        "mydata/dogs/Thumbs.db": b"\0",
        "__MACOSX/mydata/._cats": b"\0",
        ".git/config": b"[core]",
    }
    arrays = read(members)
    assert arrays.classes == ("cats", "dogs") and arrays.y.tolist() == [0, 0, 0, 1, 1]
    assert arrays.x[2, 0, 0] == 1  # cats/more/deep.png is a cat


@pytest.mark.parametrize("split", [False, True])
def test_npz_round_trip_through_load_npz(tmp_path, split):
    members = two_classes(10, "train/" if split else "")
    if split:
        members.update({"test/cats/0.png": solid("L", 3), "test/dogs/0.png": solid("L", 250)})
    arrays = read(members)
    path = tmp_path / "converted"  # no .npz suffix: write_npz must not add one
    write_npz(arrays, path)
    assert path.exists() and not (tmp_path / "converted.npz").exists()
    data = load_npz(path)
    assert data.class_names == ("cats", "dogs") and data.num_classes == 2
    assert data.input_shape == (4, 6) and data.task == "classification"
    assert (len(data.x_train), len(data.x_test)) == ((20, 2) if split else (16, 4))


def test_is_image_folder_tells_npz_from_images():
    npz = io.BytesIO()
    np.savez(npz, x=np.zeros((4, 2)), y=np.arange(4))
    assert not is_image_folder(io.BytesIO(npz.getvalue()))
    assert is_image_folder(io.BytesIO(make_zip(two_classes())))
    assert is_image_folder(io.BytesIO(make_zip({"notes.txt": b"hi"})))  # an image folder error
    assert not is_image_folder(io.BytesIO(make_zip({})))
    assert not is_image_folder(io.BytesIO(b"PK\x03\x04 not a zip"))


@pytest.mark.parametrize(
    ("text", "size"),
    [(None, None), ("", None), ("  ", None), ("32", (32, 32)), ("32x24", (32, 24)),
     (" 8 X 4 ", (8, 4))],
)  # fmt: skip
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "32x0", "32x", "x32", "abc", "-3", "1e3", "3.5", "9999999"])
def test_parse_size_rejects(text):
    with pytest.raises(DatasetError) as error:
        parse_size(text)
    assert error.value.field == "image_size"


def _bad_crc_zip() -> bytes:
    image = solid("L", 9)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in two_classes().items():
            archive.writestr(name, data)
        archive.writestr("dogs/bad.png", image)
    blob = bytearray(buffer.getvalue())
    at = blob.index(image) + len(image) - 1  # the last byte: IEND's CRC (not read by Pillow)
    blob[at] ^= 0xFF
    return bytes(blob)


def _noise_png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels))


def _duplicate_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in two_classes().items():
            archive.writestr(name, data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Duplicate name": exactly what is tested
            archive.writestr("cats/000.png", solid("L", 3))
    return buffer.getvalue()


def _float_tiff() -> bytes:
    return encode(Image.fromarray(np.ones((4, 6), np.float32)), "TIFF")


# (id, archive bytes, read_image_folder kwargs, text the message must contain)
ERRORS = [
    ("not-a-zip", b"hello, world", {}, "not a .zip"),
    ("no-images", make_zip({"cats/": None, ".DS_Store": b"\0"}), {}, "no images found"),
    ("empty-class-folder", make_zip(two_classes() | {"emus/": None}), {},
     "emus/: class folder has no images"),
    ("not-an-image-file", make_zip(two_classes(**{"cats/notes.txt": b"hi"})), {},
     "cats/notes.txt: not an image file"),
    ("gif-not-accepted", make_zip(two_classes(**{"cats/a.gif": solid("L", 1, fmt="GIF")})), {},
     "cats/a.gif: not an image file"),
    ("image-outside-class", make_zip(two_classes(**{"001.png": solid("L", 1)})), {},
     "001.png: outside the layout"),
    ("image-directly-in-train",
     make_zip(two_classes(prefix="train/") | two_classes(prefix="test/")
              | {"train/x.png": solid("L", 1)}), {}, "train/x.png: outside the layout"),
    ("absolute-path", make_zip(two_classes(**{"/etc/cats/1.png": solid("L", 1)})), {},
     "/etc/cats/1.png: absolute paths"),
    ("dotdot", make_zip(two_classes(**{"cats/../../1.png": solid("L", 1)})), {},
     "cats/../../1.png: '..'"),
    ("symlink", make_zip(two_classes(), links=("cats/link.png",)), {},
     "cats/link.png: links are not allowed"),
    ("too-many-images", make_zip(two_classes(2)), {"max_images": 3},
     "4 images, more than the limit of 3"),
    ("pixels-over-limit", make_zip(two_classes()), {"max_pixels": 20},
     "cats/000.png: 6x4 is 24 pixels, more than the limit of 20"),
    ("pixels-from-header", make_zip(two_classes(**{"dogs/big.png": png_header(5000, 5000)})), {},
     "dogs/big.png: 5000x5000 is 25000000 pixels"),
    ("decompression-bomb", make_zip(two_classes(**{"dogs/bomb.png": png_header(30000, 30000)})),
     {"max_pixels": 10**9}, "dogs/bomb.png: more than the limit"),
    ("archive-bytes", make_zip(two_classes(**{"cats/pad.bmp": solid("L", 0, (300, 300), "BMP")})),
     {"max_bytes": 50_000}, "unpacks to"),
    ("decoded-bytes", make_zip(two_classes()), {"size": (100, 100), "max_bytes": 50_000},
     "decode to about"),
    ("mixed-sizes", make_zip(two_classes(**{"dogs/009.png": solid("L", 1, (5, 5))})), {},
     "cats/000.png is 6x4 but dogs/009.png is 5x5"),
    ("one-class", make_zip({"cats/0.png": solid("L", 1), "cats/1.png": solid("L", 2)}), {},
     "found 1 class folder(s) (cats); need at least 2"),
    ("test-class-not-in-train",
     make_zip(two_classes(prefix="train/") | {"test/birds/0.png": solid("L", 1)}), {},
     "test/birds/: class 'birds' is not in train/"),
    ("train-without-test", make_zip(two_classes(prefix="train/") | {"val/cats/0.png": b""}), {},
     "train/: needs a test/ folder"),
    ("folder-beside-train-test",
     make_zip(two_classes(prefix="train/") | two_classes(prefix="test/")
              | {"val/cats/0.png": solid("L", 1)}), {}, "val: outside the layout"),
    ("duplicate-member", _duplicate_zip(), {}, "cats/000.png: appears twice"),
    ("garbage-image", make_zip(two_classes(**{"cats/003.png": b"\x89PNG not really"})), {},
     "cats/003.png: cannot decode image"),
    ("truncated-image",
     make_zip(two_classes(**{"cats/003.png": _noise_png()[:60]})), {},
     "cats/003.png: cannot decode image"),
    ("eps-named-png", make_zip(two_classes(**{"cats/x.png": b"%!PS-Adobe-3.0 EPSF-3.0\n"})), {},
     "cats/x.png: cannot decode image"),
    ("float-image", make_zip(two_classes(**{"cats/f.tif": _float_tiff()})), {},
     "cats/f.tif: 32-bit"),
    ("bad-crc", _bad_crc_zip(), {}, "dogs/bad.png: cannot read from the archive"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("blob", "kwargs", "message"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_bad_image_folders_raise_dataset_error_naming_the_problem(blob, kwargs, message):
    with pytest.raises(DatasetError) as error:
        read_image_folder(io.BytesIO(blob), **kwargs)
    assert message in str(error.value)
    assert error.value.field == "dataset"


def test_a_size_over_the_pixel_limit_is_an_image_size_error():
    with pytest.raises(DatasetError, match="size 100x100 has more than the limit of 999") as error:
        read(two_classes(), size=(100, 100), max_pixels=999)
    assert error.value.field == "image_size"


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
    ("truncated-image", make_zip(two_classes(**{"dogs/7.png": _noise_png()[:60]})), {}, 422,
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
