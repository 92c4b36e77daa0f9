"""What the costliest code bundles cost a fresh Python process at the default limits: peak RSS
over the baseline (``VmHWM`` after the call minus ``VmRSS`` before it) and CPU seconds of
``unpack`` (``hostile.cost_in_subprocess``), each seconds to run.

- the costliest source within the defaults (a module at exactly the file limit, modules
  filling the total) is accepted under +256 MiB and 5 s of CPU;
- every hostile bundle of the security review costs under 16 MiB (32 for 16 MiB of zeros,
  accepted and streamed to disk) and 1 s of CPU.

The limits themselves are tested in process in ``tests/unit/test_bundle_limits.py``; the
archives are made by ``limitkit.py``; the same payloads against the real service are in
``test_safe_defaults.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hostile import cost_in_subprocess, zip_bytes
from limitkit import LIMITS, LINUX, hostile, worst_source

from service.files.code_bundles import DEFAULT_MAX_FILE_SOURCE_BYTES, DEFAULT_MAX_SOURCE_BYTES


def measure(tmp_path: Path, data: bytes, **limits: int) -> dict:
    """``unpack`` of ``data`` in a fresh Python: its error and setting (or files), CPU seconds
    and peak RSS delta in MiB."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    archive = folder / "bundle"
    archive.write_bytes(data)
    setup = "from pathlib import Path\nfrom service.files.code_bundles import unpack\n"
    target, options = str(folder / "unpacked"), {**LIMITS, **limits}
    call = f"unpack(Path({str(archive)!r}), Path({target!r}), **{options!r}).files"
    result = cost_in_subprocess(setup, call)
    result["files"] = int(result["value"]) if result["value"] is not None else None
    return result


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/status")
def test_the_costliest_source_within_the_defaults_stays_bounded(tmp_path) -> None:
    # The most memory per byte (a module at exactly the file limit) and the most CPU (modules
    # filling the total), at the defaults: accepted, under +256 MiB and 5 s of CPU.
    one = measure(tmp_path, zip_bytes({"net.py": worst_source(DEFAULT_MAX_FILE_SOURCE_BYTES)}))
    assert one["files"] == 1, one
    assert one["rss_mib"] < 256 and one["cpu_s"] < 5, one
    count = DEFAULT_MAX_SOURCE_BYTES // DEFAULT_MAX_FILE_SOURCE_BYTES
    files = {f"m{i}.py": worst_source(DEFAULT_MAX_FILE_SOURCE_BYTES) for i in range(count)}
    many = measure(tmp_path, zip_bytes(files))
    assert many["files"] == count, many
    assert many["rss_mib"] < 256 and many["cpu_s"] < 5, many


# -- every hostile case, measured -----------------------------------------------------------------
@pytest.mark.skipif(not LINUX, reason="reads /proc/self/status")
@pytest.mark.parametrize(
    ("kind", "setting", "rss_mib"),
    [
        ("module-3mib", "max_source_file_bytes", 16),
        ("module-3mib-tgz", "max_source_file_bytes", 16),
        ("pax-1gb", "max_code_files", 16),
        ("tar-500k-members", "max_code_files", 16),
        ("zip-300k-entries", "max_code_files", 16),
        ("zeros-16mib", None, 32),  # accepted, streamed to disk
    ],
)
def test_hostile_bundles_cost_little(tmp_path, kind, setting, rss_mib) -> None:
    result = measure(tmp_path, hostile(kind))
    assert result["setting"] == setting, result
    assert (result["files"] == 2) if kind == "zeros-16mib" else result["error"], result
    assert result["rss_mib"] < rss_mib and result["cpu_s"] < 1, result
