"""Reading an untrusted ``.zip`` or ``.tar`` (plain, gzip, bzip2, xz) archive within budgets.

``open_bundle_archive`` lists an archive's regular files (``Member``) and opens them, refusing
absolute paths, ``..``, links and special files, and skipping ``SKIPPED`` folders and ``._name``
files; every problem is a ``BundleError``. The work is bounded before it is done:

- zip: the central directory's entry count and size, from its end record, before ``zipfile``
  parses it (``workers.data.archives.open_zip``); every size from the index before any file is read;
- tar: the decompressed stream is read once, by a small reader of our own (``_read_tar``), with
  a budget on its bytes, on its headers and on the bytes of its extended (pax, GNU long name)
  headers; ``tarfile``'s own reader trusts a header's size, reads every member before any count
  can be checked, copies a global pax header into every member and parses pax records with
  regular expressions that are quadratic on hostile input in Python 3.11 (CVE-2024-6232).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from workers.data.archives import ArchiveTooLarge, open_zip

SKIPPED = ("__MACOSX", "__pycache__", ".DS_Store")
"""Names of files and folders that are not part of a bundle (nor are ``._name`` files)."""
MEMBERS_PER_FILE = 2
EXTRA_MEMBERS = 64
"""An archive may hold ``MEMBERS_PER_FILE * max_files + EXTRA_MEMBERS`` entries: folders and
skipped files (``__MACOSX/``, ``._name``) are entries too."""
HEADER_BYTES_PER_MEMBER = 1024
"""Bytes of tar extended headers (pax records, GNU long names) allowed per permitted entry."""
CHUNK = 1 << 20
"""Bytes read at a time."""

_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile)
_MEMBER_ERRORS = (*_READ_ERRORS, NotImplementedError, RuntimeError)
_Opener = Callable[[], "IO[bytes] | _Region"]


class BundleError(ValueError):
    """A bundle that cannot be used; the message says why.

    ``setting``: the ``Settings`` field whose limit it is over (``max_code_bytes``,
    ``max_code_files``, ``max_source_bytes``, ``max_source_file_bytes``), None otherwise.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True)
class ArchiveLimits:
    """At most ``max_files`` files of ``max_bytes`` in all."""

    max_bytes: int
    max_files: int

    @property
    def max_members(self) -> int:
        """The entries an archive may list (files, folders and skipped files)."""
        return MEMBERS_PER_FILE * self.max_files + EXTRA_MEMBERS


@dataclass(frozen=True)
class Member:
    """One regular file of an archive, by its path inside the bundle."""

    path: PurePosixPath
    size: int
    opener: _Opener = field(repr=False, compare=False)

    def chunks(self) -> Iterator[bytes]:
        """Its data, ``CHUNK`` bytes at a time, checked against its size in the archive's
        index (never reading more than one byte past it)."""
        read = 0
        try:
            with self.opener() as source:
                while chunk := source.read(min(CHUNK, self.size + 1 - read)):
                    read += len(chunk)
                    if read > self.size:
                        break
                    yield chunk
        except _MEMBER_ERRORS as exc:
            raise BundleError(f"{self.path}: cannot read it from the archive ({exc})") from exc
        if read != self.size:
            raise BundleError(f"{self.path}: size differs from the archive's index")


def _skipped(path: PurePosixPath) -> bool:
    return any(part in SKIPPED or part.startswith("._") for part in path.parts)


def _checked_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"{name}: absolute paths are not allowed in a bundle")
    if ".." in path.parts:
        raise BundleError(f"{name}: '..' is not allowed in a bundle's paths")
    return path


def _file(name: str, path: PurePosixPath, size: int, opener: _Opener) -> Member:
    if not path.parts:
        raise BundleError(f"{name!r}: a file without a name")
    return Member(path, size, opener)


@contextmanager
def open_bundle_archive(path: Path, limits: ArchiveLimits) -> Iterator[list[Member]]:
    """The regular files of the zip or tar archive at ``path``, but the skipped ones, listed
    within ``limits`` (else ``BundleError``); readable until the ``with`` block ends (a tar's
    kept files are copied to a temporary file next to ``path`` meanwhile)."""
    with ExitStack() as stack:
        if zipfile.is_zipfile(path):
            files = _zip_files(stack.enter_context(_open_zip(path, limits)), limits)
        else:
            data = stack.enter_context(tempfile.TemporaryFile(dir=path.parent))
            files = _tar_files(path, data, limits)
        yield [member for member in files if not _skipped(member.path)]


def _open_zip(path: Path, limits: ArchiveLimits) -> zipfile.ZipFile:
    try:
        return open_zip(path, limits.max_members)
    except ArchiveTooLarge as exc:
        raise BundleError(
            f"the zip archive lists {exc} (files and folders, for at most "
            f"{limits.max_files} files)",
            setting="max_code_files",
        ) from None
    except (*_READ_ERRORS, ValueError) as exc:
        raise BundleError(f"cannot read the archive ({exc})") from exc


def _zip_files(archive: zipfile.ZipFile, limits: ArchiveLimits) -> list[Member]:
    entries = len(archive.infolist())
    if entries > limits.max_members:  # open_zip counts them too: a second guard
        raise BundleError(
            f"the zip archive lists {entries} entries, more than the limit of "
            f"{limits.max_members} (files and folders, for at most "
            f"{limits.max_files} files)",
            setting="max_code_files",
        )
    members = []
    for info in archive.infolist():
        path = _checked_path(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise BundleError(f"{info.filename}: links are not allowed in a bundle")
        if not info.is_dir():
            members.append(_file(info.filename, path, info.file_size, partial(archive.open, info)))
    return members


@dataclass(frozen=True)
class _TarEntry:
    """A tar member as ``_read_tar`` lists it; a file's data is at ``offset`` in the data file
    (-1: not kept)."""

    name: str
    type: bytes
    size: int
    offset: int


_EXTENDED = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


class _Budget:
    """A decompressed stream that refuses to give more than ``limit`` bytes (it never asks the
    decompressor for more than one byte past the limit)."""

    def __init__(self, raw: IO[bytes], limit: int, max_bytes: int) -> None:
        self.raw, self.limit, self.max_bytes, self.used = raw, limit, max_bytes, 0

    def read(self, size: int) -> bytes:
        data = self.raw.read(min(size, self.limit - self.used + 1))
        self.used += len(data)
        if self.used > self.limit:
            raise BundleError(
                f"more than {self.limit} bytes of tar data, the limit ({self.max_bytes} for the "
                f"files and {self.limit - self.max_bytes} for their headers)",
                setting="max_code_bytes",
            )
        return data

    def exactly(self, size: int) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise BundleError("cannot read the archive (unexpected end of data)")
        return data

    def skip(self, size: int) -> None:
        while size > 0:
            size -= len(self.exactly(min(size, CHUNK)))


def _decompressed(handle: IO[bytes]) -> IO[bytes]:
    magic = handle.read(6)
    handle.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=handle, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(handle)
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(handle)
    return handle


def _block(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _pax_records(body: bytes) -> dict[str, bytes]:
    """The records of a pax header (``"%d %s=%s\\n"``, the length counting the whole record)
    that this reader uses: ``path``, ``size`` and any ``GNU.sparse.*``."""
    kept: dict[str, bytes] = {}
    pos = 0
    while pos < len(body) and body[pos]:  # NUL: padding
        space = body.find(b" ", pos, pos + 21)
        digits = body[pos:space] if space > pos else b""
        end = pos + int(digits) if digits.isdigit() else -1
        if end <= space + 1 or end > len(body) or body[end - 1] != 0x0A:
            raise BundleError("cannot read the archive (a malformed pax header)")
        keyword, equals, value = body[space + 1 : end - 1].partition(b"=")
        if not equals or not keyword:
            raise BundleError("cannot read the archive (a malformed pax header)")
        if keyword in (b"path", b"size") or keyword.startswith(b"GNU.sparse."):
            kept[keyword.decode("ascii", "replace")] = value
        pos = end
    return kept


def _read_tar(stream: _Budget, data: IO[bytes], limits: ArchiveLimits) -> list[_TarEntry]:
    """List a tar stream's members, copying the data of the files that are not skipped into
    ``data``. Reads each byte once and never more than the budgets allow: ``stream``'s bytes,
    ``max_members`` members, as many extended headers of ``HEADER_BYTES_PER_MEMBER *
    max_members`` bytes in all (a header's declared size is checked before it is read),
    ``max_bytes`` of kept files' data (declared sizes, checked before the data is read)."""
    entries: list[_TarEntry] = []
    pending: dict[str, bytes] = {}  # from the extended headers before the next member
    extended_headers = extended_bytes = kept_bytes = 0
    max_extended = HEADER_BYTES_PER_MEMBER * limits.max_members
    while True:
        block = stream.read(tarfile.BLOCKSIZE)
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.EOFHeaderError:  # a zero block: the end of the archive
            break
        except tarfile.HeaderError as exc:
            if not entries and not extended_headers:
                raise BundleError("not a .zip or .tar.gz archive") from None
            if isinstance(exc, tarfile.EmptyHeaderError):  # no end marker: as tarfile does
                break
            raise BundleError(
                f"cannot read the archive ({exc} after {len(entries)} members)"
            ) from None
        if info.type in _EXTENDED:
            extended_headers += 1
            extended_bytes += info.size
            if extended_headers > limits.max_members:
                raise BundleError(
                    f"more than {limits.max_members} extended tar headers (pax or GNU long "
                    f"names; the limit for at most {limits.max_files} files)",
                    setting="max_code_files",
                )
            if extended_bytes > max_extended:
                raise BundleError(
                    f"{extended_bytes} bytes of extended tar headers (pax or GNU long names), "
                    f"more than the limit of {max_extended} ({HEADER_BYTES_PER_MEMBER} for each "
                    f"of at most {limits.max_members} entries, for {limits.max_files} files)",
                    setting="max_code_files",
                )
            body = stream.exactly(info.size)  # at most max_extended bytes
            stream.skip(_block(info.size) - info.size)
            if info.type == tarfile.GNUTYPE_LONGNAME:
                pending["path"] = body.split(b"\0", 1)[0]
            elif info.type == tarfile.XGLTYPE:
                _pax_records(body)  # checked, then ignored (git archive's commit id)
            elif info.type != tarfile.GNUTYPE_LONGLINK:
                pending.update(_pax_records(body))
            continue
        if len(entries) >= limits.max_members:
            raise BundleError(
                f"more than {limits.max_members} entries in the tar archive (files and "
                f"folders, for at most {limits.max_files} files)",
                setting="max_code_files",
            )
        name = info.name
        if "path" in pending:
            name = pending["path"].decode("utf-8", "surrogateescape")
            name = name.rstrip("/") or name
        size = info.size
        if "size" in pending:
            if not pending["size"].isdigit():
                raise BundleError(f"cannot read the archive ({name}: a malformed pax size)")
            size = int(pending["size"])
        if info.type == tarfile.GNUTYPE_SPARSE or any(k.startswith("GNU.") for k in pending):
            raise BundleError(f"{name}: sparse files are not allowed in a bundle")
        pending = {}
        has_data = info.isreg() or info.type not in tarfile.SUPPORTED_TYPES
        offset = -1
        if info.type in _FILE_TYPES and not _skipped(PurePosixPath(name)):
            kept_bytes += size
            if kept_bytes > limits.max_bytes:
                raise BundleError(
                    f"at least {kept_bytes} bytes unpacked, more than the limit of "
                    f"{limits.max_bytes}",
                    setting="max_code_bytes",
                )
            offset = data.tell()
            left = size
            while left > 0:
                left -= data.write(stream.exactly(min(left, CHUNK)))
            stream.skip(_block(size) - size)
        elif has_data:
            stream.skip(_block(size))
        entries.append(_TarEntry(name, info.type, size, offset))
    return entries


class _Region:
    """``size`` bytes at ``offset`` of ``file``, read as a file."""

    def __init__(self, file: IO[bytes], offset: int, size: int) -> None:
        assert offset >= 0, "the data of a skipped file is not kept"
        self.file, self.pos, self.left = file, offset, size

    def __enter__(self) -> _Region:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def read(self, size: int) -> bytes:
        self.file.seek(self.pos)
        data = self.file.read(min(size, self.left))
        self.pos += len(data)
        self.left -= len(data)
        return data


def _tar_files(archive: Path, data: IO[bytes], limits: ArchiveLimits) -> list[Member]:
    """The files of a tar archive (plain, gzip, bzip2 or xz), read once, the kept files' data
    copied to ``data``, both bounded by the limits."""
    # Every permitted entry may take a header block, an extended header and padding.
    budget = limits.max_bytes + limits.max_members * (
        2 * tarfile.BLOCKSIZE + _block(HEADER_BYTES_PER_MEMBER)
    )
    try:
        with open(archive, "rb") as handle, _decompressed(handle) as raw:
            entries = _read_tar(_Budget(raw, budget, limits.max_bytes), data, limits)
    except _READ_ERRORS as exc:  # corrupt compressed data
        raise BundleError(f"cannot read the archive ({exc})") from exc
    members = []
    for entry in entries:
        path = _checked_path(entry.name)
        if entry.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            raise BundleError(f"{entry.name}: links are not allowed in a bundle")
        if entry.type in _FILE_TYPES:
            opener = partial(_Region, data, entry.offset, entry.size)
            members.append(_file(entry.name, path, entry.size, opener))
        elif entry.type != tarfile.DIRTYPE:
            raise BundleError(f"{entry.name}: only files and folders are allowed in a bundle")
    return members
