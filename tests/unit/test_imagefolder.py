"""Image-folder uploads: ``workers.data.imagefolder`` on its own (layouts, colour modes, resizing,
the ``.npz`` it writes, every bad archive named). Images are made with Pillow
(``imagekit.py``); the uploads through the REST service are in
``tests/e2e/test_imagefolder_e2e.py``.
"""

from __future__ import annotations

import io
import warnings
import zipfile

import numpy as np
import pytest
from imagekit import encode, make_zip, noise_png, png_header, solid, two_classes
from PIL import Image

from contract.datasets import DatasetError
from workers.data.imagefolder import (
    ImageFolderArrays,
    is_image_folder,
    parse_size,
    read_image_folder,
    write_npz,
)
from workers.data.npz import load_npz


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
     make_zip(two_classes(**{"cats/003.png": noise_png()[:60]})), {},
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
