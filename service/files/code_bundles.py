"""Code bundles: a ``.zip`` or ``.tar.gz`` of Python files with a user's model builder.

The service validates and unpacks a bundle WITHOUT importing or running any of it (it only
parses each ``.py`` file to report syntax errors), then hands the unpacked directory to Ray as
the job's ``runtime_env["working_dir"]``: Ray ships it to every node and puts it on the
workers' ``sys.path``. An optional top-level ``requirements.txt`` becomes the runtime env's
``pip`` list.

Every problem is a ``BundleError`` whose message names the member at fault; one over a limit
also names the setting (``BundleError.setting``).

The work is bounded before it is done, not only the bytes on the wire (a few KiB of zip can
hold megabytes of source, and parsing costs up to ~1 KiB of memory per byte of source):

- the archive: its entries, its bytes and its headers, as ``service.files.bundle_archives`` reads
  it (a zip's index before ``zipfile`` parses it, a tar stream as it is decompressed);
- source: a per-file and a total budget on what is parsed (``.py`` files and
  ``requirements.txt``), checked from the index before anything is read, and a budget on the
  f-strings whose parsing Python 3.11 does in quadratic time.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from service.errors import FieldError
from service.files.bundle_archives import (
    ArchiveLimits,
    BundleError,  # raised here, and imported from here by the routes
    Member,
    open_bundle_archive,
)
from service.files.housekeeping import remove_code_bundle as remove_bundle
from service.files.uploads import (
    UploadKind,
    check_uploader,
    delete_upload,
    new_id,
    publish_then_record,
    safe_name,
    stage,
)
from service.operations.disk import disk_full
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.storage.tables import CodeBundle
from service.teams.caller import Caller

logger = logging.getLogger("service.files.code_bundles")
REQUIREMENTS = "requirements.txt"
RESERVED_MODULES = frozenset({"syncbn", "workers", "service", "torch", "numpy", "ray"})
"""Top-level names a bundle may not use: they would shadow what the job itself imports."""

DEFAULT_MAX_SOURCE_BYTES = 1 << 20
"""All ``.py`` files of a bundle together. Parsing hostile source (``a,`` on each line) costs
up to ~3.5 s of CPU per MiB; real code costs 10-30 times less."""
DEFAULT_MAX_FILE_SOURCE_BYTES = 200 << 10
"""One ``.py`` file (or ``requirements.txt``). Parsing holds up to ~1 KiB of memory per byte of
hostile source, all at once (~200 MiB here); real code takes 15-30 times less."""
FSTRING_WORK = 1 << 28
"""Most (replacement fields x bytes) of the bundle's f-strings, all together. Python 3.11 parses
an f-string in time proportional to that product (each field scans the literal from its start):
one 256 KiB f-string of ``{a}`` takes ~5 s. The largest real modules found score ~3e5."""


@dataclass(frozen=True)
class BundleInfo:
    """What a valid bundle holds."""

    files: int
    modules: list[str]
    requirements: list[str]


def _common_root(paths: list[PurePosixPath]) -> PurePosixPath | None:
    """The one folder everything is in (``project-main/``, as GitHub zips have), unless it is
    itself a package (then its name is the package's)."""
    tops = {p.parts[0] for p in paths}
    if len(tops) != 1 or any(len(p.parts) == 1 for p in paths):
        return None
    root = PurePosixPath(tops.pop())
    return None if root / "__init__.py" in paths else root


def module_name(path: PurePosixPath) -> str | None:
    """The dotted module a ``.py`` path imports as (None: not importable by name)."""
    if path.suffix != ".py":
        return None
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts)


def _check_python(path: PurePosixPath, source: bytes) -> None:
    try:
        ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise BundleError(f"{path}: line {exc.lineno}: {exc.msg}") from exc
    except ValueError as exc:  # null bytes
        raise BundleError(f"{path}: not a Python source file ({exc})") from exc
    except (MemoryError, RecursionError) as exc:
        # The parser's own guards against deep nesting (``-`` * 100000, ``a.a.a...``) raise
        # these; the partial tree is freed as the exception unwinds, so nothing is kept (and
        # ``from None`` keeps no frame holding the source).
        kind = type(exc).__name__
        raise BundleError(f"{path}: too deeply nested or too large to parse ({kind})") from None


# An f-string's extent, found as Python's tokenizer finds it (comments and other strings are
# skipped; where this differs from the tokenizer it can only see a longer f-string). Possessive
# quantifiers keep every match linear, and an unterminated string ends the scan (the parse
# fails there too), so the scan is linear in the source.
_STRING_START = re.compile(rb"""\#|(?<![\w\x80-\xff])([bBrRuUfF]{1,2})?('''|\"\"\"|'|")""")
_STRING_REST = {
    b"'''": re.compile(rb"(?:[^\\']++|\\.|'(?!''))*+'''", re.S),
    b'"""': re.compile(rb'(?:[^\\"]++|\\.|"(?!""))*+"""', re.S),
    b"'": re.compile(rb"(?:[^\\'\r\n]++|\\(?:\r\n|.))*+'", re.S),
    b'"': re.compile(rb'(?:[^\\"\r\n]++|\\(?:\r\n|.))*+"', re.S),
}


def _fstring_work(source: bytes) -> int:
    """Sum over the f-strings of ``source`` of (``{`` in it) x (its length): a bound on the
    work Python 3.11's parser does for them."""
    work, pos = 0, 0
    while (start := _STRING_START.search(source, pos)) is not None:
        quote = start.group(2)
        if quote is None:  # a comment
            newline = source.find(b"\n", start.end())
            if newline < 0:
                break
            pos = newline + 1
            continue
        rest = _STRING_REST[quote].match(source, start.end())
        if rest is None:
            break
        if b"f" in (start.group(1) or b"").lower():
            work += source.count(b"{", start.end(), rest.end()) * (rest.end() - start.start())
        pos = rest.end()
    return work


def _requirements(text: str) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    options = [line for line in lines if line.startswith("-")]
    if options:
        raise BundleError(
            f"{REQUIREMENTS}: pip options are not allowed ({options[0]!r}); list packages only"
        )
    return lines


def unpack(
    archive_path: Path,
    target: Path,
    *,
    max_bytes: int,
    max_files: int,
    max_source_bytes: int = DEFAULT_MAX_SOURCE_BYTES,
    max_file_source_bytes: int = DEFAULT_MAX_FILE_SOURCE_BYTES,
) -> BundleInfo:
    """Validate the archive at ``archive_path`` and unpack it into the new folder ``target``.

    Raises ``BundleError`` (and leaves no ``target``) for: not a zip or tar(.gz, .bz2, .xz),
    absolute paths, ``..``, links or special files, more than ``max_files`` files or
    ``max_bytes`` unpacked (``setting`` ``max_code_files`` / ``max_code_bytes``), a ``.py`` file
    (or ``requirements.txt``) over ``max_file_source_bytes`` or ``.py`` files over
    ``max_source_bytes`` together (``max_source_file_bytes`` / ``max_source_bytes``), no
    ``.py`` file, a syntax error or source too deeply nested to parse, a module shadowing
    ``RESERVED_MODULES``, pip options in ``requirements.txt``. Every limit is checked before
    the work it bounds: counts and sizes from the archive's index before any file is read,
    the tar stream's bytes and headers as it is read.
    """
    with open_bundle_archive(archive_path, ArchiveLimits(max_bytes, max_files)) as members:
        if len(members) > max_files:
            raise BundleError(
                f"{len(members)} files, more than the limit of {max_files}",
                setting="max_code_files",
            )
        total = sum(m.size for m in members)
        if total > max_bytes:
            raise BundleError(
                f"{total} bytes unpacked, more than the limit of {max_bytes}",
                setting="max_code_bytes",
            )
        root = _common_root([m.path for m in members])
        _check_source_sizes(members, root, max_source_bytes, max_file_source_bytes)
        try:
            return _extract(members, root, target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise


def _parsed(path: PurePosixPath) -> bool:
    """Whether the service reads and parses the file (at ``path`` relative to the root)."""
    return path.suffix == ".py" or path == PurePosixPath(REQUIREMENTS)


def _check_source_sizes(
    members: list[Member],
    root: PurePosixPath | None,
    max_source_bytes: int,
    max_file_source_bytes: int,
) -> None:
    total = 0
    for member in members:
        path = member.path.relative_to(root) if root else member.path
        if not _parsed(path):
            continue
        if member.size > max_file_source_bytes:
            what = "of Python source" if path.suffix == ".py" else "of requirements"
            raise BundleError(
                f"{member.path}: {member.size} bytes {what}, more than the limit of "
                f"{max_file_source_bytes} for one file",
                setting="max_source_file_bytes",
            )
        if path.suffix == ".py":
            total += member.size
    if total > max_source_bytes:
        raise BundleError(
            f"{total} bytes of Python source, more than the limit of {max_source_bytes}",
            setting="max_source_bytes",
        )


def _unpack_file(member: Member, out: Path, keep: bool) -> bytes:
    """Copy one file out of the archive to ``out`` (new), its size checked against the index
    (``Member.chunks``); return its bytes when ``keep`` (then it is at most
    ``max_file_source_bytes``, checked from the index), else copy it in chunks (b"")."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = open(out, "xb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        if disk_full(exc):  # the disk's, not the bundle's: a 507
            raise
        raise BundleError(f"{member.path}: cannot unpack ({exc.strerror})") from exc
    with handle:
        kept = []
        for chunk in member.chunks():
            if keep:
                kept.append(chunk)
            else:
                _write(handle, chunk, member)
        data = b"".join(kept)
        _write(handle, data, member)
    os.chmod(out, 0o644)
    return data


def _write(handle: IO[bytes], data: bytes, member: Member) -> None:
    try:
        handle.write(data)
    except OSError as exc:
        if disk_full(exc):
            raise
        raise BundleError(f"{member.path}: cannot unpack ({exc.strerror})") from exc


def _extract(members: list[Member], root: PurePosixPath | None, target: Path) -> BundleInfo:
    target.mkdir(parents=True)
    modules, requirements = [], []
    fstring_work = 0
    for member in members:
        path = member.path.relative_to(root) if root else member.path
        data = _unpack_file(member, target.joinpath(*path.parts), _parsed(path))
        if path.suffix == ".py":
            fstring_work += _fstring_work(data)
            if fstring_work > FSTRING_WORK:
                raise BundleError(
                    f"{member.path}: f-strings too long to check (the bundle's f-strings "
                    f"cost {fstring_work} replacement fields x bytes, more than the limit of "
                    f"{FSTRING_WORK}); split the longest ones"
                )
            _check_python(member.path, data)
        name = module_name(path)
        if name is not None:
            top = name.split(".")[0]
            if top in RESERVED_MODULES:
                raise BundleError(
                    f"{member.path}: the module name {top!r} would shadow what the job "
                    f"imports; rename it (reserved: {', '.join(sorted(RESERVED_MODULES))})"
                )
            modules.append(name)
        if path == PurePosixPath(REQUIREMENTS):
            requirements = _requirements(data.decode("utf-8", errors="replace"))
    if not modules:
        raise BundleError("no importable .py files in the bundle")
    return BundleInfo(len(members), sorted(modules), requirements)


def runtime_env(directory: Path, requirements: list[str]) -> dict[str, object]:
    """The Ray ``runtime_env`` that ships an unpacked bundle to every node."""
    env: dict[str, object] = {"working_dir": str(directory)}
    if requirements:
        env["pip"] = list(requirements)
    return env


def add_code_bundle(
    db: Database, settings: Settings, source: BinaryIO, filename: str | None, caller: Caller
) -> CodeBundle:
    """Receive, validate and unpack an uploaded bundle of ``caller`` into ``code/<id>``; its
    new row (``FieldError`` on ``file`` naming the member at fault, and a limit's setting)."""
    check_uploader(db, settings, caller)
    bundle_id = new_id("code")
    with stage(source, settings.code_dir, settings.max_code_bytes, "max_code_bytes") as upload:
        unpacked = upload.scratch / "unpacked"
        try:
            info = unpack(
                upload.path,
                unpacked,
                max_bytes=settings.max_code_bytes,
                max_files=settings.max_code_files,
                max_source_bytes=settings.max_source_bytes,
                max_file_source_bytes=settings.max_source_file_bytes,
            )
        except BundleError as exc:
            raise FieldError("file", str(exc), exc.setting) from exc
        row = CodeBundle(
            id=bundle_id,
            name=safe_name(filename, "bundle"),
            size_bytes=upload.size,
            sha256=upload.sha256,
            files=info.files,
            modules=info.modules,
            requirements=info.requirements,
            owner=caller.name,
        )
        publish_then_record(unpacked, settings.code_dir / bundle_id, db, row, settings)
    logger.info("code uploaded", extra={"code_id": bundle_id, "modules": info.modules})
    return row


def delete_code_bundle(db: Database, settings: Settings, bundle_id: str, caller: Caller) -> None:
    """Delete a bundle's row and files (``NotFound``, ``Conflict`` while a job uses it)."""
    remove = partial(remove_bundle, settings)
    kind = UploadKind("code bundle", "code", store.get_code_bundle, remove)
    delete_upload(db, kind, bundle_id, caller)
