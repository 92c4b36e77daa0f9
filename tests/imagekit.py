"""Images and image-folder archives made with Pillow in memory (nothing is downloaded), for the
image-folder tests (``tests/unit/test_imagefolder.py``, ``tests/e2e/test_imagefolder_e2e.py``).
"""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image


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


def noise_png() -> bytes:
    """A 6x4 RGB PNG of random pixels (compresses badly: cut short, it is truncated)."""
    pixels = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels))
