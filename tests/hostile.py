"""Hostile requests of issue 20's table, as a stranger would send them, and a meter of what one
costs the real service process (its peak RSS and CPU seconds).

Used by the tests (``tests/e2e/test_safe_defaults.py`` against the service, the limit tests in
``tests/unit`` and their costs in ``tests/e2e``) and by ``benchmarks/abuse.py``, so the
benchmark's figures come from the very requests the tests assert on.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil


# -- payloads ---------------------------------------------------------------------------------
def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def ast_bomb_zip(source_bytes: int = 3 << 20) -> bytes:
    """A module ``x=[1,1,...]`` of ``source_bytes`` (a few KB zipped; +1.5 GB to parse)."""
    body = b"1," * (source_bytes // 2)
    return zip_bytes({"bomb.py": b"x=[" + body + b"]\n"})


def nested_zip(depth: int = 100_000) -> bytes:
    """``x = -------...1``: the parser's MemoryError (was a 500)."""
    return zip_bytes({"deep.py": b"x = " + b"-" * depth + b"1\n"})


def pax_bomb_tar_gz(value_bytes: int = 256 << 20) -> bytes:
    """A tar.gz whose first pax header declares a ``value_bytes`` path (~1 KB per MB zipped):
    ``tarfile`` reads the whole header into memory before any limit could be checked."""
    base = len(" path=\n") + value_bytes  # a record counts its own length's digits too
    record_len = base + len(str(base))
    record_len = base + len(str(record_len))
    prefix = f"{record_len} path=".encode()
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, record_len
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as out:
        out.write(header.tobuf(tarfile.USTAR_FORMAT))
        out.write(prefix)
        chunk = b"a" * (1 << 20)
        left = value_bytes
        while left > 0:
            out.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
        out.write(b"\n")
    return buffer.getvalue()


def zeros_npz(megabytes: int = 63) -> bytes:
    """``megabytes`` MiB of uint8 zeros, compressed to some 60 KB."""
    n = megabytes * 1024
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((n, 1024), np.uint8), y=np.arange(n) % 2)
    return buffer.getvalue()


def lying_npz() -> bytes:
    """An ``.npz`` whose ``x.npy`` header claims shape (10**10, 1) (was a 500)."""
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000, 1), }"
    header += b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64)
    labels = io.BytesIO()
    np.save(labels, np.arange(8) % 2)
    return zip_bytes({"x.npy": npy, "y.npy": labels.getvalue()})


def flat_png(side: int = 4096, colour: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_bomb_folder(images: int = 40, side: int = 4096) -> bytes:
    """An image folder of ``images`` flat ``side``-square PNGs (a few KB each)."""
    png = flat_png(side)
    return zip_bytes({f"{('a', 'b')[i % 2]}/{i}.png": png for i in range(images)})


def unknown_fields_json(route: str, keys: int = 70_000) -> bytes:
    """Just under 1 MiB of JSON for ``/v1/jobs`` or ``/v1/studies`` (in the base, or in each of
    8 arms' overrides) full of unknown fields: one validation error each."""
    base = {"dataset": "digits", "workers": 2, "batch_size_per_worker": 2, "epochs": 1}
    if route == "/v1/jobs":
        return json.dumps({**base, **{f"k{i:06d}": 0 for i in range(keys)}}).encode()
    if route == "/v1/studies/base":
        return json.dumps({"base": {**base, **{f"k{i:06d}": 0 for i in range(keys)}}}).encode()
    unknown = {f"k{i:06d}": 0 for i in range(keys // 8)}
    arms = [{"name": f"a{i}", "overrides": unknown} for i in range(8)]
    return json.dumps({"base": base, "arms": arms}).encode()


def chunked(total: int, size: int = 64 << 10, head: bytes = b"") -> Iterator[bytes]:
    """A body of ``total`` bytes (after ``head``) sent without Content-Length (chunked
    transfer encoding)."""
    yield head
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


MULTIPART = "multipart/form-data; boundary=b"
FILE_PART = (
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
    b"Content-Type: application/zip\r\n\r\n"
)
"""The start of a multipart upload of one file (what follows is the file, endless)."""


LOOKALIKE_OUTCOME = '{"status": "x", "result": "not a mapping", "error": {"a": 1}}'
"""A line that looks like the driver's outcome to a scraper of stdout (issue 27: one such
``atexit`` print stopped all scheduling, across restarts)."""
_LIAR_SOURCE = """
import atexit
import os
import sys

import torch
from torch import nn

LINE = LOOKALIKE


def _lie():
    print(LINE, flush=True)
    args = sys.argv
    if "--storage" in args and "--name" in args:  # the driver's own outcome, overwritten
        run = os.path.join(args[args.index("--storage") + 1], args[args.index("--name") + 1])
        with open(os.path.join(run, "outcome.json"), "w") as handle:
            handle.write(LINE)


atexit.register(_lie)
print("x" * LOG_BYTES, flush=True)


def build_model(input_shape, num_classes):
    size = int(torch.tensor(input_shape).prod())
    return nn.Sequential(nn.Flatten(), nn.Linear(size, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, num_classes))
"""


def liar_net(log_bytes: int = 0) -> bytes:
    """A code bundle's ``liar.py`` (``liar:build_model``) whose driver prints ``log_bytes``
    bytes on one line, then at exit prints ``LOOKALIKE_OUTCOME`` and writes it over the
    outcome file its driver wrote."""
    source = _LIAR_SOURCE.replace("LOOKALIKE", repr(LOOKALIKE_OUTCOME))
    return source.replace("LOG_BYTES", str(int(log_bytes))).encode()


def hold_body(port: int, path: str, token: str | None = None, declared: int = 16_000_000):
    """A socket with a POST to ``path`` whose headers declare ``declared`` bytes of body and
    that sent its first bytes (a multipart file part for an upload route, else ``[``); the
    caller keeps it open (a slow client) and closes it."""
    import socket

    upload = path in ("/v1/datasets", "/v1/code")
    kind, first = (MULTIPART, FILE_PART) if upload else ("application/json", b"[")
    sock = socket.create_connection(("127.0.0.1", port))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
            f"Content-Type: {kind}\r\nContent-Length: {declared}\r\n\r\n")  # fmt: skip
    sock.sendall(head.encode() + first)
    return sock


# -- meters -----------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
_SUBPROCESS_METER = r"""
import json, resource, sys

def kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])

setup, call = sys.argv[1], sys.argv[2]
exec(setup)  # imports and inputs: not measured
try:  # reset the peak, so that VmHWM is the call's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before, start = kib("VmRSS"), resource.getrusage(resource.RUSAGE_SELF)
result = {"error": None, "kind": None, "setting": None, "value": None}
try:
    result["value"] = repr(eval(call))[:300]
except Exception as exc:
    result.update(error=str(exc), kind=type(exc).__name__, setting=getattr(exc, "setting", None))
end = resource.getrusage(resource.RUSAGE_SELF)
result["cpu_s"] = end.ru_utime - start.ru_utime + end.ru_stime - start.ru_stime
result["rss_mib"] = (kib("VmHWM") - before) / 1024
print(json.dumps(result))
"""


def cost_in_subprocess(setup: str, call: str) -> dict[str, Any]:
    """Evaluate ``call`` after ``setup`` (both Python, run from the repository) in a fresh
    interpreter: its value (repr) or exception (``error``, ``kind``, ``setting``), its CPU
    seconds and its peak RSS above the RSS before it, in MiB."""
    out = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_METER, setup, call],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass
class Cost:
    """What one request cost the service process: peak RSS above its RSS before, CPU seconds
    (all its threads), and wall time."""

    rss_mib: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    status: int | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def metered(pid: int) -> Iterator[Cost]:
    """Measure the service process ``pid`` around the block: its peak RSS is reset first
    (``/proc/PID/clear_refs``), so ``VmHWM`` after the block is this block's peak."""
    process = psutil.Process(pid)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before_rss = _status_kib(pid, "VmRSS")
    before_cpu = sum(process.cpu_times()[:2])
    started = time.perf_counter()
    cost = Cost()
    yield cost
    cost.wall_s = time.perf_counter() - started
    cost.cpu_s = sum(process.cpu_times()[:2]) - before_cpu
    cost.rss_mib = max(0, _status_kib(pid, "VmHWM") - before_rss) / 1024


def measure(pid: int, send: Callable[[], Any]) -> Cost:
    """``send()`` (an httpx call) under ``metered``; the answer's status and detail kept."""
    with metered(pid) as cost:
        response = send()
    cost.status = response.status_code
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    cost.detail = str(detail)[:300]
    return cost


def service_pid(process: Any) -> int:
    """The uvicorn process of a ``ServiceProcess`` (``python -m service`` itself)."""
    return int(process.process.pid)
