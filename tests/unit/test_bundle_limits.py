"""Code bundles bounded by the work they cause, not only by their bytes (no Ray, no service).

Hostile bundles are small: a few kB of zip holding megabytes of ``x=[1,1,...]``, source nested
100,000 deep, a tar.gz whose pax header declares a gigabyte, tar.gz and zips listing hundreds of
thousands of entries, 16 MiB of zeros. Each is refused (or accepted) before the costly part,
with a ``BundleError`` naming the limit and, for a setting's limit, its ``setting``; nothing is
left in the target folder. The archives are made by ``limitkit.py``; the costliest are measured
in a fresh process at the default limits in ``tests/e2e/test_bundle_costs.py``.
"""

from __future__ import annotations

import io
import re
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from hostile import zip_bytes
from limitkit import (
    LIMITS,
    NET,
    MiB,
    end_of_tar,
    gz_stream,
    header,
    hostile,
    tar_bytes,
    worst_source,
    zip_of_empty_entries,
)

from service.files.code_bundles import (
    DEFAULT_MAX_FILE_SOURCE_BYTES,
    FSTRING_WORK,
    BundleError,
    _fstring_work,
    unpack,
)

# -- helpers -----------------------------------------------------------------------------------


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def pax(records: bytes, kind: bytes = tarfile.XHDTYPE) -> bytes:
    return header("././@PaxHeader", len(records), kind) + pad(records)


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _unpack(tmp_path: Path, data: bytes, **limits):
    archive = tmp_path / "bundle"
    archive.write_bytes(data)
    target = tmp_path / "unpacked"
    return unpack(archive, target, **{**LIMITS, **limits}), target


def refused(tmp_path: Path, data: bytes, message: str, setting: str | None, **limits) -> str:
    """Assert ``data`` is refused with ``message`` (a regex) and ``setting``, leaving nothing."""
    with pytest.raises(BundleError) as caught:
        _unpack(tmp_path, data, **limits)
    assert re.search(message, str(caught.value)), str(caught.value)
    assert caught.value.setting == setting, (caught.value.setting, str(caught.value))
    assert not (tmp_path / "unpacked").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temporary file left
    return str(caught.value)


# -- source budgets ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["module-3mib", "module-3mib-tgz"])
def test_a_module_over_the_file_limit_is_refused_from_the_index(tmp_path, kind) -> None:
    data = hostile(kind)
    assert len(data) < 4096  # 3 MiB of source in 3 kB
    refused(
        tmp_path,
        data,
        rf"^net\.py: {3 * MiB} bytes of Python source, more than the limit of "
        rf"{DEFAULT_MAX_FILE_SOURCE_BYTES} for one file$",
        "max_source_file_bytes",
    )


def test_the_file_limit_is_inclusive_and_counts_requirements(tmp_path) -> None:
    info, target = _unpack(tmp_path, zip_bytes({"net.py": worst_source(3000)}),
                           max_file_source_bytes=3000)  # fmt: skip
    assert info.modules == ["net"] and (target / "net.py").stat().st_size == 3000
    (tmp_path / "b").mkdir()
    refused(
        tmp_path / "b",
        zip_bytes({"net.py": worst_source(3001)}),
        "net.py: 3001 bytes of Python source, more than the limit of 3000 for one file",
        "max_source_file_bytes",
        max_file_source_bytes=3000,
    )
    (tmp_path / "c").mkdir()
    refused(
        tmp_path / "c",
        zip_bytes({"net.py": NET, "requirements.txt": b"ab\n" * (MiB // 3)}),
        r"requirements\.txt: 1048575 bytes of requirements, more than the limit of",
        "max_source_file_bytes",
    )


def test_python_files_together_are_bounded_by_the_total_limit(tmp_path) -> None:
    # Many files each just under the file limit, filling the total: accepted; one more byte
    # of Python is refused. Other files (data, README) do not count.
    files = {f"m{i}.py": worst_source(999) for i in range(4)} | {"m4.py": worst_source(4)}
    files["data.json"] = b"[" + b"1," * 20_000 + b"1]"
    info, _ = _unpack(tmp_path, zip_bytes(files), max_file_source_bytes=1000,
                      max_source_bytes=4000)  # fmt: skip
    assert info.files == 6
    (tmp_path / "b").mkdir()
    files["m4.py"] = worst_source(5)
    refused(
        tmp_path / "b",
        tar_bytes(files),
        r"^4001 bytes of Python source, more than the limit of 4000$",
        "max_source_bytes",
        max_file_source_bytes=1000,
        max_source_bytes=4000,
    )


# -- source that cannot be parsed --------------------------------------------------------------
DEEP = r"too deeply nested or too large to parse \((MemoryError|RecursionError)\)"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"x=" + b"-" * 100_000 + b"1", DEEP),  # 3.11: the parser's stack guard, a MemoryError
        (b"x=a" + b".a" * 100_000, DEEP),  # 3.11: a RecursionError building the tree
        (b"x=" + b"(" * 100_000 + b")" * 100_000, "line 1: too many nested parentheses"),
        (b"x=" + b"[" * 100_000 + b"]" * 100_000, "line 1: too many nested parentheses"),
    ],
    ids=["minus", "attributes", "parentheses", "brackets"],
)
def test_deep_nesting_is_a_bundle_error_and_the_process_is_fine(tmp_path, source, message):
    refused(tmp_path, zip_bytes({"net.py": source}), f"^net\\.py: ({message}|line 1: )", None)
    info, _ = _unpack(tmp_path, zip_bytes({"net.py": NET}))  # the next bundle is fine
    assert info.modules == ["net"]


def test_f_strings_costly_to_parse_are_refused_and_real_ones_pass(tmp_path) -> None:
    # Python 3.11 parses an f-string in time ~ fields x length: one 200 KiB f-string of {a}
    # took ~3 s (and five of them in a bundle ~15 s).
    big = b'x = f"' + b"{a}" * (DEFAULT_MAX_FILE_SOURCE_BYTES // 3 - 3) + b'"\n'
    message = refused(tmp_path, zip_bytes({"net.py": big}), r"^net\.py: f-strings too long", None)
    assert str(FSTRING_WORK) in message
    real = b'name = "x"\nprint(f"{name!r}: {1 + 2:>{4}}", rf"\\{name}", f"""{name}\n{{}}""")\n'
    info, _ = _unpack(tmp_path, zip_bytes({"net.py": real * 500}))
    assert info.modules == ["net"]


@pytest.mark.parametrize(
    ("source", "work"),
    [
        (b'f"{a}"', 6),
        (b'F"{a}{b}"', 2 * 9),
        (b'rf"{a}" Rb"{b}" u"{c}"', 7),  # only the f-strings
        (b'# f"{a}{a}{a}"\nx = 1', 0),  # a comment
        (b"\"f'{a}'\" 'f\"{b}\"'", 0),  # f-strings inside other strings
        (b'"""\nf"{a}"\n"""', 0),
        (b'elif"{a}"', 0),  # a name ending in f, then a plain string
        (b'f"""{a}\n{b}"""', 2 * 14),
        (b"f'{a}\\'{b}'", 2 * 11),  # an escaped quote does not end it
        (b'f"{a}" + "unterminated', 6),
        (b'f"""{a}' + b"{a}" * 1000, 0),  # unterminated: the scan stops (the parse fails)
    ],
)
def test_fstring_work_is_found_as_the_tokenizer_finds_f_strings(source, work) -> None:
    assert _fstring_work(source) == work


def test_the_fstring_scan_is_linear_on_unterminated_strings() -> None:
    # A scan that retried each unterminated '''-start would be quadratic here.
    source = b"'''" + b"\\'''" * 100_000 + b'x = f"{a}"'
    start = time.process_time()
    assert _fstring_work(source) == 0
    assert time.process_time() - start < 0.5


# -- tar: bounded while it is read ---------------------------------------------------------------
def test_a_pax_header_declaring_a_gigabyte_is_refused_before_it_is_read(tmp_path) -> None:
    refused(
        tmp_path,
        hostile("pax-1gb"),
        r"^1000000000 bytes of extended tar headers \(pax or GNU long names\), more than the "
        r"limit of 4161536 \(1024 for each of at most 4064 entries, for 2000 files\)$",
        "max_code_files",
    )


def test_a_tar_of_500k_members_stops_at_the_member_budget(tmp_path) -> None:
    refused(
        tmp_path,
        hostile("tar-500k-members"),
        r"^more than 4064 entries in the tar archive \(files and folders, for at most 2000 "
        r"files\)$",
        "max_code_files",
    )


def test_extended_headers_are_bounded_in_number_and_bytes(tmp_path) -> None:
    chain = pax(pax_record("comment", "x")) * 100 + header("net.py", len(NET)) + pad(NET)
    refused(
        tmp_path,
        gz_stream([chain, end_of_tar()]),
        r"^more than 84 extended tar headers",
        "max_code_files",
        max_files=10,
    )
    (tmp_path / "b").mkdir()
    long_name = header("x", 100_000, tarfile.GNUTYPE_LONGNAME) + pad(b"a" * 100_000)
    refused(
        tmp_path / "b",
        gz_stream([long_name, header("net.py"), end_of_tar()]),
        r"^100000 bytes of extended tar headers .* more than the limit of 86016",
        "max_code_files",
        max_files=10,
    )


def test_tar_data_is_bounded_while_it_is_read(tmp_path) -> None:
    # Declared sizes of kept files are checked before their data is read ...
    refused(
        tmp_path,
        gz_stream([header("net.py", 17 * MiB), b"\0" * (17 * MiB)]),
        rf"^at least {17 * MiB} bytes unpacked, more than the limit of {16 * MiB}$",
        "max_code_bytes",
    )
    # ... and so is everything read: skipped files (macOS's ._ files) are read through too.
    (tmp_path / "b").mkdir()
    junk = header("__MACOSX/._net.py", 256 * 1024) + b"\0" * (256 * 1024)
    refused(
        tmp_path / "b",
        gz_stream([junk, header("net.py", len(NET)), pad(NET), end_of_tar()]),
        r"^more than 136168 bytes of tar data, the limit \(1000 for the files and 135168 for "
        r"their headers\)$",
        "max_code_bytes",
        max_bytes=1000,
        max_files=1,
    )


def test_pax_headers_are_parsed_in_linear_time_and_strictly(tmp_path) -> None:
    # A header shaped like CVE-2024-6232 (long digit runs): tarfile in Python 3.11.7 took ~4 s
    # per 64 KiB header to parse it; here it is read in one pass.
    digits = pax(pax_record("comment", "9" * 65536))
    data = gz_stream([digits * 8, header("net.py", len(NET)), pad(NET), end_of_tar()])
    start = time.process_time()
    info, target = _unpack(tmp_path, data)
    assert info.modules == ["net"] and (target / "net.py").read_bytes() == NET
    assert time.process_time() - start < 1
    (tmp_path / "b").mkdir()
    refused(
        tmp_path / "b",
        gz_stream([pax(b"99 path=a\n"), header("net.py"), end_of_tar()]),
        r"^cannot read the archive \(a malformed pax header\)$",
        None,
    )


def test_tar_formats_and_long_names(tmp_path) -> None:
    long = "pkg/" + "a" * 150 + ".py"
    files = {"pkg/__init__.py": b"", long: b"x = 1\n", "net.py": NET}
    for mode, options in [
        ("w:gz", {"format": tarfile.PAX_FORMAT, "pax_headers": {"comment": "0" * 40}}),
        ("w:gz", {"format": tarfile.GNU_FORMAT}),
        ("w", {}),
        ("w:bz2", {}),
        ("w:xz", {}),
    ]:
        target = tmp_path / mode.replace(":", "-") / str(options.get("format"))
        target.parent.mkdir(parents=True, exist_ok=True)
        archive = target.with_suffix(".tar")
        archive.write_bytes(tar_bytes(files, mode, **options))
        info = unpack(archive, target, **LIMITS)
        assert info.modules == ["net", "pkg", long[:-3].replace("/", ".")], (mode, options)
        assert (target / long).read_bytes() == b"x = 1\n"


@pytest.mark.parametrize("kind", ["gnu-sparse", "pax-sparse"])
def test_sparse_files_are_refused(tmp_path, kind) -> None:
    if kind == "gnu-sparse":
        stream = header("net.py", 0, tarfile.GNUTYPE_SPARSE)
    else:
        records = pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0")
        stream = pax(records) + header("net.py")
    refused(tmp_path, gz_stream([stream, end_of_tar()]), "^net.py: sparse files", None)


def test_damaged_tar_gz_is_a_bundle_error(tmp_path) -> None:
    data = tar_bytes({"net.py": NET * 1000})
    refused(tmp_path, data[: len(data) // 2], r"^cannot read the archive \(", None)
    (tmp_path / "b").mkdir()
    refused(tmp_path / "b", gz_stream([b"not a tar" * 100]), "^not a .zip or .tar.gz", None)


# -- zip: the central directory bounded before zipfile parses it ----------------------------------
def test_a_zip_of_300k_entries_is_refused_from_its_end_record(tmp_path) -> None:
    refused(
        tmp_path,
        hostile("zip-300k-entries"),
        r"^the zip archive lists 65535 entries, more than the limit of 4064 \(files and "
        r"folders, for at most 2000 files\)$",
        "max_code_files",
    )


def test_a_zip_end_record_that_undercounts_is_caught(tmp_path) -> None:
    # 1,500 entries in a directory small enough for 84 entries' budget, the end record says 10.
    refused(
        tmp_path,
        zip_of_empty_entries(1500, 10),
        r"^the zip archive lists (1500 entries, more than the limit of 84|more than 84 entries)",
        "max_code_files",
        max_files=10,
    )


def test_a_zip_member_that_fails_its_crc_is_a_bundle_error(tmp_path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("net.py", NET)
        archive.writestr("data.bin", b"x" * 1000)
    data = bytearray(buffer.getvalue())
    data[data.find(b"x" * 1000)] = ord("y")
    refused(tmp_path, bytes(data), r"^data\.bin: cannot read it from the archive \(Bad CRC", None)


# -- data files: streamed ------------------------------------------------------------------------
def test_sixteen_mib_of_zeros_unpacks_and_one_byte_more_is_refused(tmp_path) -> None:
    info, target = _unpack(tmp_path, hostile("zeros-16mib"))
    assert info.files == 2 and (target / "data.bin").stat().st_size == 16 * MiB - 4096
    (tmp_path / "b").mkdir()
    refused(
        tmp_path / "b",
        zip_bytes({"net.py": NET, "data.bin": b"\0" * (16 * MiB - len(NET) + 1)}),
        rf"^{16 * MiB + 1} bytes unpacked, more than the limit of {16 * MiB}$",
        "max_code_bytes",
    )
