"""Hostile archives of the limit tests, made in memory: what ``tests/unit/test_bundle_limits.py``
and ``test_dataset_limits.py`` check is refused (or accepted) before the costly part, and what
``tests/e2e/test_bundle_costs.py`` and ``test_dataset_costs.py`` meter in a fresh interpreter.

- code bundles: the costliest source per byte, ``x=[1,1,...]``, raw tar headers and gzip
  streams, zips whose central directory lists more entries than its end record says, and the
  hostile bundles of the security review (``hostile(kind)``);
- datasets: zips listing many entries (``many_entries_zip``), PNGs and zips of them.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from hostile import zip_bytes
from PIL import Image

MiB = 1 << 20
LINUX = Path("/proc/self/status").exists()
LIMITS = {"max_bytes": 16 * MiB, "max_files": 2000}  # a code bundle's, the service's defaults
NET = b"def build_model(input_shape, num_classes):\n    return None\n"


# -- code bundles --------------------------------------------------------------------------------


def worst_source(size: int) -> bytes:
    """``size`` bytes of the costliest source per byte found (a one-name tuple per line:
    ~1 KiB of memory per byte while parsed)."""
    return b"a,\n" * (size // 3) + b"\n" * (size % 3)


def list_source(size: int) -> bytes:
    """``x=[1,1,...,1]`` of ``size`` bytes."""
    body = b"1," * ((size - 5) // 2)
    return b"x=[" + body + b"1]" + b" " * (size - 5 - len(body))


def tar_bytes(files: dict[str, bytes], mode: str = "w:gz", **options) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, **options) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> bytes:
    """One ustar header block (its size field may lie)."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(tarfile.USTAR_FORMAT)


def gz_stream(chunks: Iterable[bytes]) -> bytes:
    """A gzip of the concatenated chunks, compressed as they come (nothing held in full)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return b"".join(compressor.compress(chunk) for chunk in chunks) + compressor.flush()


def end_of_tar() -> bytes:
    return b"\0" * (2 * tarfile.BLOCKSIZE)


def zip_of_empty_entries(count: int, listed: int) -> bytes:
    """A zip with ``count`` central directory entries (all pointing at one empty local file)
    whose end record says ``listed``."""
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"a"
    directory = bytearray()
    for i in range(count):
        name = b"%x" % i
        directory += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0, 0
        )
        directory += name
    listed = min(listed, 0xFFFF)
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, listed, listed, len(directory), len(local), 0
    )
    return local + bytes(directory) + end


def hostile(kind: str) -> bytes:
    """The hostile bundles of the security review, each at most ~1 MiB on the wire (but the
    zip of 300,000 entries, ~14 MB: the upload limit is 16 MiB)."""
    if kind == "module-3mib":  # a 3 KB zip of a 3 MiB module
        return zip_bytes({"net.py": list_source(3 * MiB)})
    if kind == "module-3mib-tgz":
        return tar_bytes({"net.py": worst_source(3 * MiB)})
    if kind == "pax-1gb":  # a pax header declaring 1 GB, and 16 MiB of it
        head = header("././@PaxHeader", 10**9, tarfile.XHDTYPE)
        return gz_stream([head, b"1000000000 path=", *[b"a" * MiB] * 16])
    if kind == "tar-500k-members":
        block = header("a.py")
        return gz_stream([*[block * 1000] * 500, end_of_tar()])
    if kind == "zip-300k-entries":
        return zip_of_empty_entries(300_000, 300_000)
    if kind == "zeros-16mib":  # accepted: 16 MiB unpacked in all
        return zip_bytes({"net.py": NET, "data.bin": b"\0" * (16 * MiB - 4096)})
    raise AssertionError(kind)


# -- datasets ------------------------------------------------------------------------------------


def many_entries_zip(n: int) -> bytes:
    """A zip whose central directory lists ``n`` empty files (zip64 end records, as zipfile
    writes past 65,535 entries): some 47 bytes an entry, parsed by zipfile into ``n``
    ``ZipInfo`` objects (about 500 bytes each) if nothing stops it first."""
    record = struct.pack(
        "<4s4B4HL2L5HLL", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0
    )
    directory = record + b"a"
    body = directory * n
    end64 = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(body), 0
    )  # zip64 end of central directory, at offset len(body)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(body), 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return body + end64 + locator + end


def png(mode: str, size: tuple[int, int], value) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, "PNG")
    return buffer.getvalue()


def image_zip(images: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in images.items():
            archive.writestr(name, data)
    return buffer.getvalue()
