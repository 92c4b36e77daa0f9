"""Uploads bounded by the work they cause, not only by their bytes (no Ray, no service).

Hostile inputs are small: a lying ``.npy`` header, 60 kB of compressed zeros, flat 4096x4096
PNGs of a few kB, progressive JPEGs of thousands of scans, zips listing 300,000 entries. Each
must be refused (or accepted) before the costly part, with a ``DatasetError`` whose
``setting`` names the service setting of the limit. The zips and images are made by
``limitkit.py``; the costliest are measured in a fresh process (peak RSS and CPU seconds) in
``tests/e2e/test_dataset_costs.py``.
"""

from __future__ import annotations

import io
import math
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from limitkit import image_zip, many_entries_zip, png
from PIL import Image

from contract.datasets import DatasetError
from workers.data.imagefolder import (
    is_image_folder,
    read_image_folder,
    write_npz,
)
from workers.data.images import MAX_JPEG_SCANS, decode_image, decode_images
from workers.data.npz import NpzInfo, inspect_npz, load_npz

MiB = 1 << 20


# -- helpers -----------------------------------------------------------------------------------


def npy(shape: tuple[int, ...], descr: str, data: bytes) -> bytes:
    """A version 1.0 ``.npy`` file claiming ``shape`` and ``descr``, holding ``data``."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def npy_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def labels(n: int) -> bytes:
    return npy_of(np.arange(n) % 2)


def scan_bomb(side: int, extra_scans: int) -> bytes:
    """A progressive gray JPEG with ``extra_scans`` copies of one of its AC scans appended:
    libjpeg decodes each (a warning, not an error), a pass over the whole image every time."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 7).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    scans = []  # (start, end) of every scan: its SOS, entropy-coded data and tables before it
    at = previous = data.index(b"\xff\xda")
    while data[at + 1] != 0xD9:
        end = at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if data[at + 1] == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
            scans.append((previous, end))
            previous = end
        at = end
    start, end = min(scans[1:], key=lambda s: s[1] - s[0])  # a small AC scan
    return data[:-2] + data[start:end] * extra_scans + b"\xff\xd9"


# -- .npz ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("reader", [inspect_npz, load_npz], ids=["inspect", "load"])
def test_a_lying_npy_header_is_refused_before_anything_is_allocated(tmp_path, reader):
    path = write_zip(
        tmp_path / "lying.npz", {"x.npy": npy((10**10, 1), "<f8", bytes(80)), "y.npy": labels(10)}
    )
    with pytest.raises(DatasetError, match=r"declares shape \(10000000000, 1\)") as error:
        reader(path)  # np.load tried to allocate 74.5 GiB: MemoryError, an HTTP 500
    assert "holds 80 bytes" in str(error.value)


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (npy((2, 1), "<f8", bytes(80)), "declares shape (2, 1) of float64 (16 bytes)"),
        (npy((4, -2), "<f8", b""), "declares shape (4, -2)"),
        (npy((4, 2), "|O", bytes(64)), "dtype object cannot be used"),
        (npy((4,), [("a", "<f8"), ("b", "<i4")], bytes(48)), "cannot be used"),
        (npy((4,), "|V8", bytes(32)), "cannot be used"),
        (b"not an npy file at all", "cannot read arrays (x: "),
        (npy((4, 2), "<f8", bytes(64))[:70], "cannot read arrays (x: "),
    ],
    ids=["too-many-bytes", "negative-dim", "object", "structured", "void", "not-npy", "short"],
)
def test_bad_npy_members_are_dataset_errors(tmp_path, member, message):
    path = write_zip(tmp_path / "bad.npz", {"x.npy": member, "y.npy": labels(4)})
    for reader in (inspect_npz, load_npz):
        with pytest.raises(DatasetError) as error:
            reader(path)
        assert message in str(error.value)


def test_npz_memory_counts_the_float32_copy_training_makes(tmp_path):
    x = np.zeros((1000, 10), np.uint8)  # 10 kB stored; 50 kB with its float32 copy
    path = tmp_path / "u8.npz"
    np.savez(path, x=x, y=np.arange(1000) % 2)
    need = x.nbytes + 8 * 1000 + 4 * x.size + 8 * 1000  # stored x and y, then float32 and int64
    assert inspect_npz(path, memory_limit=need).n_train == 800
    with pytest.raises(DatasetError, match=f"need {need} bytes in memory") as error:
        inspect_npz(path, memory_limit=need - 1)
    assert error.value.setting == "max_dataset_memory"
    with pytest.raises(DatasetError, match="file is") as error:  # the file itself
        load_npz(path, limit=1000)
    assert error.value.setting == "max_upload_bytes"


@pytest.mark.parametrize("n", [2, 3, 5, 7, 10, 11, 101])
def test_inspect_npz_tells_what_load_npz_loads(tmp_path, n):
    rng = np.random.default_rng(n)
    path = tmp_path / "data.npz"
    np.savez(path, x=rng.normal(size=(n, 3)), y=np.arange(n) % 2, classes=np.array(["a", "b"]))
    info, data = inspect_npz(path, name="ds"), load_npz(path, name="ds")
    assert isinstance(info, NpzInfo)
    assert (info.n_train, info.n_test) == (len(data.x_train), len(data.x_test))
    assert info.n_test == math.ceil(0.2 * n)
    assert info.info == data.info and not info.from_images

    masks = rng.integers(0, 3, (n, 4, 5)).astype(np.uint8)
    np.savez(path, x=rng.normal(size=(n, 4, 5)), y=masks, x_test=np.zeros((2, 4, 5)),
             y_test=np.full((2, 4, 5), 255, np.uint8))  # fmt: skip
    info, data = inspect_npz(path), load_npz(path)
    assert (info.n_train, info.n_test, info.task) == (n, 2, "segmentation")
    assert info.num_classes == data.num_classes == int(masks.max()) + 1


def test_nan_and_mask_checks_run_in_chunks_with_the_same_messages(tmp_path):
    x = np.zeros((3000, 1000), np.float32)  # 3 M values: several chunks
    x[0, 0] = x[-1, -1] = np.nan
    x[1500, 7] = np.inf
    path = tmp_path / "nan.npz"
    np.savez(path, x=x, y=np.arange(3000) % 2)
    with pytest.raises(DatasetError, match="x: contains 3 NaN or infinite values"):
        inspect_npz(path)
    y = np.zeros((40, 256, 256), np.int16)  # 2.6 M labels
    y[0, 0, :3] = (300, 255, 1)
    y[-1, -1, -2:] = (-4, 400)
    np.savez(path, x=np.zeros((40, 256, 256), np.float32), y=y)
    with pytest.raises(DatasetError, match=r"3 pixels have other values, e\.g\. \[-4, 300, 400\]"):
        inspect_npz(path)


# -- zips listing too many entries ---------------------------------------------------------------
@pytest.fixture(scope="module")
def entries_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("entries") / "entries.zip"
    path.write_bytes(many_entries_zip(300_000))
    return path


def test_is_image_folder_is_bounded_and_never_raises(entries_zip):
    assert is_image_folder(entries_zip)
    blob = io.BytesIO(entries_zip.read_bytes())
    assert is_image_folder(blob) and blob.tell() == 0
    small = image_zip({f"{c}/{i}.png": png("L", (2, 2), i) for c in "ab" for i in range(3)})
    assert is_image_folder(io.BytesIO(small))
    assert is_image_folder(io.BytesIO(small), max_members=3)  # over: an image folder to refuse
    with pytest.raises(DatasetError, match="6 images, more than the limit of 1") as error:
        read_image_folder(io.BytesIO(small), max_images=1)
    assert error.value.setting == "max_upload_images"
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, 46, 10**9, 0)
    for garbage in [b"", b"PK", b"PK\x05\x06", end, b"\0" * 100 + end, b"PK\x03\x04" * 100]:
        assert not is_image_folder(io.BytesIO(garbage))


# -- image folders --------------------------------------------------------------------------------


def test_the_decoded_pixel_budget_is_the_sum_of_all_images():
    members = {f"{c}/{i}.png": png("RGB", (8, 6), (i, 2, 3)) for c in "ab" for i in range(3)}
    blob = image_zip(members)
    arrays = read_image_folder(io.BytesIO(blob), max_decoded_pixels=6 * 48)
    assert arrays.x.shape == (6, 3, 6, 8)
    with pytest.raises(DatasetError, match="6 images of 288 pixels in all") as error:
        read_image_folder(io.BytesIO(blob), size=(1, 1), max_decoded_pixels=6 * 48 - 1)
    assert error.value.setting == "max_decoded_pixels" and error.value.field == "dataset"


@pytest.mark.parametrize(
    ("blob", "kwargs", "setting", "field"),
    [
        (image_zip({"a/0.png": png("L", (4, 4), 1), "b/0.png": png("L", (4, 4), 2)}),
         {"max_pixels": 15}, "max_image_pixels", "dataset"),
        (image_zip({"a/0.png": png("L", (4, 4), 1), "b/0.png": png("L", (4, 4), 2)}),
         {"size": (5, 5), "max_pixels": 24}, "max_image_pixels", "image_size"),
        (image_zip({f"{c}/{i}.png": png("L", (4, 4), i) for c in "ab" for i in range(2)}),
         {"max_images": 3}, "max_upload_images", "dataset"),
        (image_zip({"a/0.png": png("L", (4, 4), 1), "b/0.bmp": bytes(5000)}),
         {"max_bytes": 4000}, "max_upload_bytes", "dataset"),
        (image_zip({"a/0.png": png("L", (4, 4), 1), "b/0.png": png("L", (4, 4), 2)}),
         {"size": (40, 40), "max_memory": 16_000}, "max_dataset_memory", "dataset"),
    ],
    ids=["image-pixels", "size-pixels", "images", "unpacked-bytes", "decoded-memory"],
)  # fmt: skip
def test_limit_errors_name_their_setting(blob, kwargs, setting, field):
    with pytest.raises(DatasetError) as error:
        read_image_folder(io.BytesIO(blob), **kwargs)
    assert (error.value.setting, error.value.field) == (setting, field)


def test_a_decoded_folder_within_its_limits_passes_inspect_npz_with_those_limits(tmp_path):
    images = {f"{c}/{i}.png": png("RGB", (16, 12), (i, 9, 9)) for c in "ab" for i in range(5)}
    blob = image_zip(images)
    with pytest.raises(DatasetError, match=r"decode to about (\d+) bytes") as error:
        read_image_folder(io.BytesIO(blob), max_memory=1000)
    assert error.value.setting == "max_dataset_memory"
    need = int(str(error.value).split("decode to about ")[1].split()[0])
    assert need > 5 * 10 * 3 * 12 * 16  # the uint8 pixels and their float32 copy
    with pytest.raises(DatasetError, match=r"decode to about (\d+) bytes") as error:
        read_image_folder(io.BytesIO(blob), max_bytes=need // 4)
    assert error.value.setting == "max_upload_bytes"
    stored = int(str(error.value).split("decode to about ")[1].split()[0])
    arrays = read_image_folder(io.BytesIO(blob), max_bytes=stored, max_memory=need)
    write_npz(arrays, tmp_path / "converted.npz")
    info = inspect_npz(tmp_path / "converted.npz", limit=stored, memory_limit=need)
    assert (info.n_train, info.n_test, info.input_shape) == (8, 2, (3, 12, 16))
    assert info.from_images and info.class_names == ("a", "b")


def test_16_bit_images_convert_in_bands_exactly():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (1100, 2048), dtype=np.uint16)  # 3 bands of 512 rows
    wide[0, :3] = (0, 65535, 32768)
    image = Image.fromarray(wide)
    assert image.mode == "I;16"
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    got = decode_image(buffer.getvalue(), "w.png", (1100, 2048), 2048 * 1100)
    expected = ((wide.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.array_equal(got, expected)


# -- predict with image files ---------------------------------------------------------------------
def test_decode_images_reads_every_header_before_decoding_anything(monkeypatch):
    items = [(f"{i}.png", png("RGB", (10, 10), (i, 0, 0))) for i in range(3)]
    shape = (3, 4, 4)
    x = decode_images(items, shape, max_pixels=100, max_decoded_pixels=300)
    assert x.dtype == np.uint8 and x.shape == (3, *shape)
    assert np.array_equal(x, np.stack([decode_image(d, n, shape, 100) for n, d in items]))

    def no_decoding(*args):
        raise AssertionError("decoded before the budget was checked")

    monkeypatch.setattr("workers.data.images.decode_image", no_decoding)
    with pytest.raises(DatasetError, match="3 images of 300 pixels in all") as error:
        decode_images(items, shape, max_pixels=100, max_decoded_pixels=299)
    assert error.value.setting == "max_decoded_pixels"
    with pytest.raises(DatasetError, match=r"0\.png: 10x10 is 100 pixels") as error:
        decode_images(items, shape, max_pixels=99, max_decoded_pixels=10**9)
    assert error.value.setting == "max_image_pixels"
    with pytest.raises(DatasetError, match=r"bad\.png: cannot decode image"):
        decode_images([*items, ("bad.png", b"\x89PNG no")], shape, 100, 10**9)


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding():
    bomb = scan_bomb(256, 3 * MAX_JPEG_SCANS)
    start = time.process_time()
    with pytest.raises(DatasetError, match=f"scans, more than the limit of {MAX_JPEG_SCANS}"):
        decode_image(bomb, "bomb.jpg", (8, 8), 10**8)
    assert time.process_time() - start < 0.5
    fine = scan_bomb(256, MAX_JPEG_SCANS - 20)  # a few more scans than encoders write: decoded
    assert decode_image(fine, "ok.jpg", (8, 8), 10**8).shape == (8, 8)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buffer, "JPEG", progressive=True)
    assert decode_image(buffer.getvalue(), "p.jpg", (3, 48, 64), 10**8).shape == (3, 48, 64)
