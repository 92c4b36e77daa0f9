"""Image files decoded with Pillow, with the work bounded before it is done: only the PNG, JPEG,
BMP, PPM/PGM, TIFF and WebP decoders; the pixels of every image read from its header first
(``max_pixels`` each, ``max_decoded_pixels`` for a whole request); JPEGs of at most
``MAX_JPEG_SCANS`` scans; a PNG's compressed text bounded. Grayscale modes (1, L, LA, I;16,
I) become 8-bit gray (16-bit values scaled by 255/65535, alpha dropped); every other mode
becomes RGB, alpha dropped; a sample is ``(H, W)`` gray or ``(3, H, W)`` RGB, resized
(bilinear) when its size differs. Every problem is a ``contract.datasets.DatasetError``
naming the file (and, for a limit, its service setting)."""

from __future__ import annotations

import io
import zipfile
import zlib
from typing import IO

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from contract.datasets import DatasetError

Image.init()  # register every plugin: Image.open(formats=...) only loads the common five
# Pillow inflates a PNG's compressed text chunks when it opens the file, up to 64 MB an image
# by default: a few KB of zlib each. 4 MB of text an image is ample for real metadata (XMP).
PngImagePlugin.MAX_TEXT_MEMORY = 4 << 20


PIL_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "TIFF", "WEBP")
"""The only Pillow decoders tried (no EPS/ghostscript, no exotic plugins); JPEG covers MPO."""


GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})


MAX_PIXELS = 4096 * 4096
"""Default ``max_pixels`` per image (the service's ``max_image_pixels``)."""


MAX_DECODED_PIXELS = 128 * 1024 * 1024
"""Default ``max_decoded_pixels``: the pixels (width x height) of all images of one upload or
predict request together, about 134 M: 50,000 images of 32x32 (51 M) or 5,000 of 128x128
(82 M) fit; at the slowest decoding measured (about 18 ms per megapixel) it is 2.4 s of CPU."""


MAX_JPEG_SCANS = 100
"""Most scans (SOS markers) in a JPEG file. A progressive JPEG's decoder makes a pass over the
whole image per scan, and a scan can take a few bytes: a 1 MiB file of 30,000 scans of a
4096x4096 image costs some 40 s of CPU. Encoders write about 10 (libjpeg's progressive
script); 100 is libtiff's default limit for the JPEG data in TIFF files."""


# -- decoding ----------------------------------------------------------------------------------
def open_image(handle: IO[bytes], name: str, max_pixels: int) -> Image.Image:
    """Open (lazily: header only) and check the pixel count before anything is decoded."""
    try:
        image = Image.open(handle, formats=PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise DatasetError(
            f"{name}: more than the limit of {max_pixels} pixels ({exc})",
            setting="max_image_pixels",
        ) from exc
    except (zipfile.BadZipFile, zlib.error) as exc:  # the member itself, read while parsing
        raise DatasetError(f"{name}: cannot read from the archive ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise DatasetError(
            f"{name}: cannot decode image (not a PNG, JPEG, BMP, PPM/PGM, TIFF or WebP image)"
        ) from exc
    except Exception as exc:  # Pillow raises many kinds on malformed input
        raise DatasetError(f"{name}: cannot decode image ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise DatasetError(
            f"{name}: {width}x{height} is {width * height} pixels, more than the limit of "
            f"{max_pixels}",
            setting="max_image_pixels",
        )
    if image.mode == "F":
        image.close()
        raise DatasetError(f"{name}: 32-bit float images (mode F) are not supported")
    return image


def decode_images(
    items: list[tuple[str, bytes]],
    shape: tuple[int, ...],
    max_pixels: int,
    max_decoded_pixels: int,
) -> np.ndarray:
    """Image files (name, bytes) as uint8 samples ``(N, *shape)``, as ``decode_image`` makes
    them, once every header has been read: each image of at most ``max_pixels`` pixels, all
    of them of at most ``max_decoded_pixels`` together (``DatasetError`` naming the limit)."""
    pixels = 0
    for name, data in items:
        with open_image(io.BytesIO(data), name, max_pixels) as image:
            width, height = image.size
        pixels += width * height
    if pixels > max_decoded_pixels:
        raise DatasetError(
            f"{len(items)} images of {pixels} pixels in all (width x height, summed), more "
            f"than the limit of {max_decoded_pixels} decoded per request: send fewer or "
            "smaller images",
            setting="max_decoded_pixels",
        )
    out = np.empty((len(items), *shape), dtype=np.uint8)
    for i, (name, data) in enumerate(items):
        out[i] = decode_image(data, name, shape, max_pixels)
    return out


def decode_image(data: bytes, name: str, shape: tuple[int, ...], max_pixels: int) -> np.ndarray:
    """One image file's bytes as a uint8 sample of ``shape`` (``(H, W)`` gray or
    ``(3, H, W)`` RGB): converted as the module doc says and resized (bilinear) when its size
    differs. ``DatasetError`` naming ``name`` when it cannot be decoded (or is over
    ``max_pixels``, or is a JPEG of more than ``MAX_JPEG_SCANS`` scans)."""
    colour = len(shape) == 3
    size = (shape[-1], shape[-2])
    with open_image(io.BytesIO(data), name, max_pixels) as image:
        if image.format in ("JPEG", "MPO"):
            # Every SOS marker: entropy-coded data stuffs 0xFF as FF 00, so only headers
            # (an EXIF thumbnail's, say) can add to the count, never hide a scan.
            scans = data.count(b"\xff\xda")
            if scans > MAX_JPEG_SCANS:
                raise DatasetError(
                    f"{name}: a JPEG of {scans} scans, more than the limit of {MAX_JPEG_SCANS} "
                    "(each scan is a pass over the whole image)"
                )
        try:
            image.load()
            pixels = _convert(image, colour)
        except Exception as exc:
            raise DatasetError(f"{name}: cannot decode image ({exc})") from exc
    if pixels.size != size:
        pixels = pixels.resize(size, Image.Resampling.BILINEAR)
    array = np.asarray(pixels)
    return array.transpose(2, 0, 1) if colour else array


def _convert(image: Image.Image, colour: bool) -> Image.Image:
    """8-bit gray (``L``) or ``RGB``, as the module doc says."""
    mode = image.mode
    if mode.startswith("I"):  # 16-bit (or 32-bit integer) gray: scale 0..65535 to 0..255
        wide = np.asarray(image)
        narrow = np.empty(wide.shape, dtype=np.uint8)
        rows = max(1, (1 << 20) // max(1, wide.shape[1]))  # int64 temporaries of 8 MiB at most
        for start in range(0, len(wide), rows):
            band = np.clip(wide[start : start + rows].astype(np.int64), 0, 65535)
            narrow[start : start + rows] = (band * 255 + 32767) // 65535
        gray = Image.fromarray(narrow)
    elif mode in GRAY_MODES:
        gray = image.convert("L")
    elif mode in ("P", "PA"):
        return image.convert("RGBA").convert("RGB")
    else:
        return image.convert("RGB")
    return gray.convert("RGB") if colour else gray
