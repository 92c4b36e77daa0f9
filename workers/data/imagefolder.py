"""Image folders: a ``.zip`` laid out like torchvision's ``ImageFolder``, decoded to arrays.

Layouts (class names are the folder names, sorted as torchvision sorts them; label i is the
i-th name):

- ``<class>/<image>``: one set, split into train and test later (``load_npz``: 80/20);
- ``train/<class>/<image>`` with ``test/<class>/<image>``: the test split uses train's class
  list (a test class that train lacks is an error; a train class may be missing from test).

Images may sit deeper inside a class folder (``cats/batch1/001.png`` is a cat), as torchvision
walks class folders recursively. One folder wrapping everything in its subfolders
(``mydata/cats/...``, what zipping a folder gives) is skipped. A ``train`` or ``test`` folder
needs the other beside it, and nothing else. Hidden files and folders (a path part starting
with ``.``: ``.DS_Store``, ``._*``), ``__MACOSX/``, ``Thumbs.db`` and ``desktop.ini`` are
ignored; any other file must be an image in a class folder, with one of torchvision's
extensions (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp, any case): anything else is an
error naming the file, so nothing is dropped silently. Empty class folders are errors too.
Absolute paths, ``..`` and symbolic links are refused; ``\\`` separators count as ``/``.

Decoding (Pillow, restricted to the PNG, JPEG, BMP, PPM/PGM, TIFF and WebP decoders; first
frame of multi-frame files): grayscale modes (1, L, LA, I;16, I) become 8-bit gray (16-bit
values scaled by 255/65535, alpha dropped); every other mode (RGB, RGBA, P, CMYK, YCbCr...)
becomes RGB, alpha dropped. If every image is grayscale, ``x`` is ``(N, H, W)``; if any is
colour, every image is RGB and ``x`` is ``(N, 3, H, W)`` (channels first). 32-bit float
images (mode F) are rejected. All images must have one size, unless ``size`` (width,
height) is given: then each is resized to it (bilinear).

Limits, all checked before anything is decoded: the zip's entry count, from its end record
before its directory is parsed (``image_folder_members(max_images)``); ``max_images`` images;
``max_pixels`` pixels per image (from its header, and for ``size``); ``max_decoded_pixels``
for the sum of all images' pixels (from their headers: what decoding costs, in time and in
memory, whatever the files' compressed size); ``max_bytes`` for the archive's uncompressed
size and for the decoded arrays (the ``.npz`` this makes); ``max_memory`` for the memory they
need in training (``workers.data.npz.dataset_memory``: the arrays and the float32 copy training
makes of them); and JPEG files of at most
``MAX_JPEG_SCANS`` scans (each scan of a progressive JPEG is a pass over the whole image).
Every problem is a ``contract.datasets.DatasetError`` naming the member at fault
(``field="image_size"`` when the size is what is wrong); a limit's error names the service
setting in ``setting`` (``max_upload_images``, ``max_image_pixels``, ``max_decoded_pixels``,
``max_upload_bytes``, ``max_dataset_memory``).

``decode_images`` applies the same per-image and summed pixel limits to the image files of a
predict request, all headers first.

Decoding costs about 2 to 18 ms of CPU per megapixel with Pillow 13 on one core of the
machine this was measured on (PNG, JPEG, WebP, TIFF; RGBA and RGB PNGs the slowest), so the
default ``MAX_DECODED_PIXELS`` (128 Mi pixels) is at most a few seconds of CPU per request.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

from contract.datasets import IMAGE_EXTENSIONS, MAX_CLASSES, DatasetError
from workers.data.archives import ArchiveTooLarge, open_zip
from workers.data.images import (
    GRAY_MODES,
    MAX_DECODED_PIXELS,
    MAX_PIXELS,
    decode_image,
    open_image,
)
from workers.data.npz import MAX_DATASET_MEMORY, dataset_memory

IGNORED_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
SPLITS = ("train", "test")
NPZ_OVERHEAD = 4096
"""Bytes of .npy headers and zip records counted on top of the arrays against ``max_bytes``."""
SIZE_RE = re.compile(r"^\s*(\d{1,6})\s*(?:[xX]\s*(\d{1,6}))?\s*$")
MAX_IMAGES = 50_000
"""Default ``max_images`` (the service's ``max_upload_images``)."""

Source = str | os.PathLike | IO[bytes]


@dataclass(frozen=True)
class ImageFolderArrays:
    """Decoded images (uint8) and int64 labels; ``x_test``/``y_test`` for train/test layouts."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


@dataclass(frozen=True)
class _Image:
    name: str
    """The member's name in the archive (what messages show)."""
    info: zipfile.ZipInfo
    label: int


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"32x24"`` -> ``(32, 24)`` (width, height), ``"32"`` -> ``(32, 32)``, blank -> None."""
    if text is None or not text.strip():
        return None
    match = SIZE_RE.match(text)
    if match is None:
        raise DatasetError(
            f"{text!r} is not a size: use WIDTHxHEIGHT or one number, e.g. 32x32 or 32",
            field="image_size",
        )
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if width < 1 or height < 1:
        raise DatasetError(f"{text!r}: width and height must be at least 1", field="image_size")
    return width, height


def image_folder_members(max_images: int) -> int:
    """Zip entries allowed in an image folder of at most ``max_images`` images: each image,
    its ``__MACOSX/._`` twin (what macOS's Compress adds), class and split folders (twice
    too), and a few more ignored files."""
    return 2 * max_images + 4 * MAX_CLASSES + 64


def is_image_folder(source: Source, max_members: int = image_folder_members(MAX_IMAGES)) -> bool:
    """Whether ``source`` is a zip to read as an image folder rather than as an ``.npz``.

    An ``.npz`` is a zip of ``.npy`` members: a zip with any ``.npy`` member, an empty zip and
    anything that is not a zip are not image folders (``inspect_npz`` says what is wrong). A
    zip of more than ``max_members`` entries (pass ``image_folder_members(max_images)``) is
    not inspected (its directory is not parsed): it is too large for an ``.npz`` (six arrays
    at most), so it counts as an image folder, which ``read_image_folder`` then refuses,
    naming the limit. Never raises.
    """
    try:
        with open_zip(source, max_members) as archive:
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
    except ArchiveTooLarge:
        return True
    except Exception:  # not a zip, or one zipfile cannot parse: inspect_npz says so
        return False
    finally:
        if hasattr(source, "seek"):
            source.seek(0)
    return bool(names) and not any(name.endswith(".npy") for name in names)


def read_image_folder(
    source: Source,
    *,
    size: tuple[int, int] | None = None,
    max_images: int = MAX_IMAGES,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = 256 << 20,
    max_decoded_pixels: int = MAX_DECODED_PIXELS,
    max_memory: int = MAX_DATASET_MEMORY,
) -> ImageFolderArrays:
    """Decode the image folder zip ``source`` (a path or a binary file); see the module doc."""
    if size is not None and size[0] * size[1] > max_pixels:
        raise DatasetError(
            f"size {size[0]}x{size[1]} has more than the limit of {max_pixels} pixels",
            field="image_size",
            setting="max_image_pixels",
        )
    try:
        archive = open_zip(source, image_folder_members(max_images))
    except ArchiveTooLarge as exc:
        raise DatasetError(
            f"the archive has {exc}: too many for an image folder of at most {max_images} images",
            setting="max_upload_images",
        ) from exc
    except Exception as exc:  # BadZipFile, or whatever a malformed archive raises
        raise DatasetError(f"not a .zip archive ({exc})") from exc
    with archive:
        train, test, classes = _layout(archive, max_bytes)
        images = train + test
        if len(images) > max_images:
            raise DatasetError(
                f"{len(images)} images, more than the limit of {max_images} per upload",
                setting="max_upload_images",
            )
        shape, pixels = _check_headers(archive, images, size, max_pixels)
        if pixels > max_decoded_pixels:
            raise DatasetError(
                f"{len(images)} images of {pixels} pixels in all (width x height, summed), more "
                f"than the limit of {max_decoded_pixels} decoded per upload: use fewer or "
                "smaller images",
                setting="max_decoded_pixels",
            )
        values = len(images) * int(np.prod(shape))
        names = np.array(classes, dtype=np.str_)
        stored = values + len(images) * 8 + names.nbytes + NPZ_OVERHEAD  # and int64 labels
        need = dataset_memory(stored, values, len(images))
        for amount, limit, what, setting in (
            (stored, max_bytes, "the uint8 pixels", "max_upload_bytes"),
            (
                need,
                max_memory,
                "the pixels and the float32 copy training makes",
                "max_dataset_memory",
            ),
        ):
            if amount > limit:
                raise DatasetError(
                    f"{len(images)} images of shape {shape} decode to about {amount} bytes "
                    f"({what}), more than the limit of {limit}: use fewer or smaller images "
                    "(or a smaller image_size)",
                    setting=setting,
                )
        x, y = _decode(archive, train, shape, max_pixels)
        if not test:
            return ImageFolderArrays(x, y, classes)
        x_test, y_test = _decode(archive, test, shape, max_pixels)
        return ImageFolderArrays(x, y, classes, x_test, y_test)


def write_npz(arrays: ImageFolderArrays, target: str | os.PathLike | IO[bytes]) -> None:
    """Save as the ``.npz`` ``workers.data.npz.load_npz`` reads (``classes`` as a unicode array)."""
    payload = {
        "x": arrays.x,
        "y": arrays.y,
        "classes": np.array(arrays.classes, dtype=np.str_),
        "images": np.array(True),  # the samples are decoded images (predict takes image files)
    }
    if arrays.x_test is not None and arrays.y_test is not None:
        payload.update(x_test=arrays.x_test, y_test=arrays.y_test)
    if isinstance(target, str | os.PathLike):
        with open(target, "wb") as handle:  # np.savez would append ".npz" to a str path
            np.savez(handle, **payload)
    else:
        np.savez(target, **payload)


# -- layout ------------------------------------------------------------------------------------
def _parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The member's path parts, after refusing absolute paths, ``..`` and links."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise DatasetError(f"{info.filename}: absolute paths are not allowed")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise DatasetError(f"{info.filename}: '..' is not allowed in paths")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetError(f"{info.filename}: links are not allowed")
    return parts


def _ignored(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p.lower() in IGNORED_NAMES for p in parts)


def _members(
    archive: zipfile.ZipFile, max_bytes: int
) -> tuple[dict[tuple[str, ...], zipfile.ZipInfo], set[tuple[str, ...]]]:
    """Files (by path parts) and folders of the archive, safe and not ignored."""
    files: dict[tuple[str, ...], zipfile.ZipInfo] = {}
    folders: set[tuple[str, ...]] = set()
    total = 0
    for info in archive.infolist():
        parts = _parts(info)
        if not info.is_dir():
            total += info.file_size
        if not parts or _ignored(parts):
            continue
        if info.is_dir() or info.filename.endswith("\\"):
            folders.add(parts)
        elif parts in files:
            raise DatasetError(f"{info.filename}: appears twice in the archive")
        else:
            files[parts] = info
            folders.update(parts[:i] for i in range(1, len(parts)))
    if total > max_bytes:
        raise DatasetError(
            f"the archive unpacks to {total} bytes, more than the limit of {max_bytes}",
            setting="max_upload_bytes",
        )
    return files, folders


def _layout(
    archive: zipfile.ZipFile, max_bytes: int
) -> tuple[list[_Image], list[_Image], tuple[str, ...]]:
    files, folders = _members(archive, max_bytes)
    for parts, info in sorted(files.items()):
        if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            raise DatasetError(
                f"{info.filename}: not an image file (an image folder holds only images "
                f"named *{' *'.join(IMAGE_EXTENSIONS)} in class folders; hidden files and "
                "__MACOSX/ are ignored)"
            )
    if not files:
        raise DatasetError(
            "no images found: expected an image folder (<class>/<image>, or train/<class>/... "
            "with test/<class>/...) or an .npz with arrays x and y"
        )
    root: tuple[str, ...] = ()
    tops = {p[0] for p in files} | {p[0] for p in folders}
    if len(tops) == 1 and tops.isdisjoint(SPLITS) and all(len(p) > 2 for p in files):
        root = (tops.pop(),)  # one folder wrapping everything, all of it in subfolders
        tops = {p[1] for p in files} | {p[1] for p in folders if len(p) > 1}
    present = sorted(tops.intersection(SPLITS))
    if not present:
        train = _classes(files, folders, root)
        classes = tuple(sorted(train))
        test: dict[str, list[tuple[str, ...]]] = {}
    else:
        where = "/".join(root) + "/" if root else ""
        if len(present) == 1:
            other = "test" if present[0] == "train" else "train"
            raise DatasetError(
                f"{where}{present[0]}/: needs a {other}/ folder beside it "
                "(train/<class>/... with test/<class>/...)"
            )
        extra = sorted(tops.difference(SPLITS))
        if extra:
            raise DatasetError(
                f"{where}{extra[0]}: outside the layout (beside train/ and test/ only "
                "those two folders are allowed)"
            )
        train = _classes(files, folders, (*root, "train"))
        test = _classes(files, folders, (*root, "test"))
        classes = tuple(sorted(train))
        for name in sorted(test):
            if name not in train:
                raise DatasetError(
                    f"{where}test/{name}/: class {name!r} is not in train/ "
                    f"(train's classes: {', '.join(classes)})"
                )
    if len(classes) < 2:
        raise DatasetError(
            f"found {len(classes)} class folder(s) ({', '.join(classes)}); need at least 2"
        )
    if len(classes) > MAX_CLASSES:
        raise DatasetError(f"{len(classes)} class folders, more than the limit of {MAX_CLASSES}")
    label = {name: i for i, name in enumerate(classes)}

    def samples(groups: dict[str, list[tuple[str, ...]]]) -> list[_Image]:
        return [
            _Image(files[parts].filename, files[parts], label[name])
            for name in sorted(groups, key=label.__getitem__)
            for parts in sorted(groups[name])
        ]

    return samples(train), samples(test), classes


def _classes(
    files: dict[tuple[str, ...], zipfile.ZipInfo],
    folders: set[tuple[str, ...]],
    root: tuple[str, ...],
) -> dict[str, list[tuple[str, ...]]]:
    """Images under ``root`` grouped by class folder; every class folder must hold one."""
    depth = len(root)
    groups: dict[str, list[tuple[str, ...]]] = {
        p[depth]: [] for p in folders if len(p) == depth + 1 and p[:depth] == root
    }
    for parts, info in files.items():
        if parts[:depth] != root:
            continue
        if len(parts) < depth + 2:
            where = "/".join(root) + "/" if root else ""
            raise DatasetError(
                f"{info.filename}: outside the layout (images go in class folders: "
                f"{where}<class>/<image>)"
            )
        groups.setdefault(parts[depth], []).append(parts)
    for name, members in sorted(groups.items()):
        if not members:
            raise DatasetError(f"{'/'.join((*root, name))}/: class folder has no images")
    return groups


def _headers(
    archive: zipfile.ZipFile, images: list[_Image], max_pixels: int
) -> Iterator[tuple[str, tuple[int, int], str]]:
    """Name, (width, height) and mode of every image, from its header only."""
    for item in images:
        try:
            handle = archive.open(item.info)
        except Exception as exc:  # encrypted, unsupported compression, corrupt record
            raise DatasetError(f"{item.name}: cannot read from the archive ({exc})") from exc
        with handle, open_image(handle, item.name, max_pixels) as image:
            yield item.name, image.size, image.mode


def _check_headers(
    archive: zipfile.ZipFile,
    images: list[_Image],
    size: tuple[int, int] | None,
    max_pixels: int,
) -> tuple[tuple[int, ...], int]:
    """The shape of one decoded sample (``(H, W)`` or ``(3, H, W)``), and the pixels of all
    images (what decoding them costs)."""
    first: tuple[str, tuple[int, int]] | None = None
    colour = False
    pixels = 0
    for name, image_size, mode in _headers(archive, images, max_pixels):
        pixels += image_size[0] * image_size[1]
        colour = colour or mode not in GRAY_MODES
        if first is None:
            first = (name, image_size)
        elif size is None and image_size != first[1]:
            (w0, h0), (w1, h1) = first[1], image_size
            raise DatasetError(
                f"images differ in size: {first[0]} is {w0}x{h0} but {name} is {w1}x{h1} "
                "(width x height); make them one size, or pass a size (image_size=WxH) to "
                "resize every image to it"
            )
    assert first is not None
    width, height = size or first[1]
    return ((3, height, width) if colour else (height, width)), pixels


def _decode(
    archive: zipfile.ZipFile,
    images: list[_Image],
    shape: tuple[int, ...],
    max_pixels: int,
) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((len(images), *shape), dtype=np.uint8)
    y = np.array([item.label for item in images], dtype=np.int64)
    for i, item in enumerate(images):
        try:
            data = archive.read(item.info)
        except Exception as exc:  # bad CRC, truncated member
            raise DatasetError(f"{item.name}: cannot read from the archive ({exc})") from exc
        x[i] = decode_image(data, item.name, shape, max_pixels)
    return x, y
