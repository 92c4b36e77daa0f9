"""What the costliest dataset uploads cost a fresh Python process: peak RSS over the baseline
(``VmHWM`` after the call minus ``VmRSS`` before it) and CPU seconds of the readers
(``hostile.cost_in_subprocess``), each a second or more to run.

- 60 kB of compressed zeros: refused cheaply against a small memory limit, checked in chunks
  within the budget of a request under the defaults;
- a zip listing 300,000 entries: refused from its end record, before zipfile parses them;
- flat 4096x4096 PNGs: refused from their headers, before decoding.

The limits themselves are tested in process in ``tests/unit/test_dataset_limits.py``; the zips
and images are made by ``limitkit.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import hostile
import numpy as np
import pytest
from limitkit import LINUX, image_zip, many_entries_zip, png

from workers.data.imagefolder import image_folder_members
from workers.data.images import MAX_DECODED_PIXELS


# -- helpers -----------------------------------------------------------------------------------
def measure(call: str, **variables: object) -> dict:
    """Run ``call`` (an expression over ``data``, ``imagefolder``, ``np`` and ``variables``)
    in a fresh Python; its DatasetError (or value), CPU seconds and peak RSS delta in MiB."""
    setup = "import numpy as np\nfrom workers.data import imagefolder, npz as data\n"
    setup += "".join(f"{name} = {value!r}\n" for name, value in variables.items())
    return hostile.cost_in_subprocess(setup, call)


@pytest.mark.skipif(not LINUX, reason="measures RSS from /proc")
def test_60_kb_of_compressed_zeros_is_refused_cheaply_and_checked_within_budget(tmp_path):
    """64 MiB of uint8 zeros compress to some 65 kB. Against a 64 MiB memory limit it is
    refused from the headers: its float32 copy alone needs 256 MiB (load_npz used to take
    900 MiB and 3 s of CPU to accept it). Within the upload limit (64 MiB) and the default
    memory limit (512 MiB), inspect_npz holds it as stored and checks it in chunks: well under
    the 256 MiB / 5 s budget of a request."""
    path = tmp_path / "zeros.npz"
    n = 63 * 1024
    np.savez_compressed(path, x=np.zeros((n, 1024), np.uint8), y=np.arange(n) % 2)
    assert path.stat().st_size < 100_000

    refused = measure("data.inspect_npz(path, memory_limit=64 << 20)", path=str(path))
    assert refused["setting"] == "max_dataset_memory", refused
    assert "need" in refused["error"] and "more than the limit of 67108864" in refused["error"]
    assert refused["rss_mib"] < 16 and refused["cpu_s"] < 1, refused

    accepted = measure("data.inspect_npz(path, limit=64 << 20)", path=str(path))
    n_test = math.ceil(0.2 * n)
    assert accepted["error"] is None, accepted
    assert f"n_train={n - n_test}, n_test={n_test}" in accepted["value"], accepted
    assert accepted["rss_mib"] < 128 and accepted["cpu_s"] < 5, accepted


@pytest.fixture(scope="module")
def entries_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("entries") / "entries.zip"
    path.write_bytes(many_entries_zip(300_000))
    return path


@pytest.mark.skipif(not LINUX, reason="measures RSS from /proc")
def test_300k_entries_are_refused_before_zipfile_parses_them(entries_zip):
    """zipfile would make 300,000 ZipInfo objects (150 MiB, 2 s: what is_image_folder and
    np.load used to do); the end record's count refuses it first."""
    found = measure("imagefolder.is_image_folder(path)", path=str(entries_zip))
    assert found["value"] == "True", found  # too large to inspect: read as an image folder
    assert found["rss_mib"] < 16 and found["cpu_s"] < 0.5, found

    folder = measure("imagefolder.read_image_folder(path)", path=str(entries_zip))
    assert folder["setting"] == "max_upload_images", folder
    limit = image_folder_members(50_000)
    assert f"300000 entries, more than the limit of {limit}" in folder["error"]
    assert "at most 50000 images" in folder["error"]
    assert folder["rss_mib"] < 16 and folder["cpu_s"] < 0.5, folder

    npz = measure("data.inspect_npz(path, limit=64 << 20)", path=str(entries_zip))
    assert "not an .npz archive (300000 entries" in npz["error"], npz
    assert npz["rss_mib"] < 16 and npz["cpu_s"] < 0.5, npz


@pytest.mark.skipif(not LINUX, reason="measures RSS from /proc")
def test_flat_4096_pngs_are_refused_from_their_headers(tmp_path):
    """40 flat 4096x4096 PNGs zip to some 20 kB and took 13 s of CPU to decode at size 1x1;
    their headers add up to 671 M pixels, over the decoded-pixel budget."""
    flat = png("L", (4096, 4096), 9)
    path = tmp_path / "flat.zip"
    path.write_bytes(image_zip({f"{'ab'[i % 2]}/{i}.png": flat for i in range(40)}))
    assert path.stat().st_size < 100_000
    result = measure("imagefolder.read_image_folder(path, size=(1, 1))", path=str(path))
    assert result["setting"] == "max_decoded_pixels", result
    assert f"{40 * 4096 * 4096} pixels in all" in result["error"]
    assert f"more than the limit of {MAX_DECODED_PIXELS}" in result["error"]
    assert result["rss_mib"] < 32 and result["cpu_s"] < 1, result
