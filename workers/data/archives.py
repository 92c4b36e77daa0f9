"""Untrusted zip archives, opened with their cost bounded before Python parses them.

``zipfile.ZipFile`` reads the whole central directory into memory, one ``ZipInfo`` object
(about half a kilobyte) per entry, and it trusts no count: it parses as many entries as the
directory's bytes hold. A 16 MiB archive of empty entries is therefore some 350,000 objects
(hundreds of MiB) before any check of ours could run. ``open_zip`` reads the end-of-central-
directory record first (a fixed-size record at the end of the file) and refuses an archive
whose entry count or directory size is over the budget; then it counts the directory's
records itself (a few bytes of each, not an object), since that count may lie, and refuses
more than the budget. Only then does ``zipfile`` parse a directory known to be small.
"""

from __future__ import annotations

import os
import struct
import zipfile
from typing import IO

RECORD_SIGNATURE = b"PK\x01\x02"
RECORD_BYTES = 46
"""A central directory record's fixed part; its name, extra and comment lengths are at 28."""
DIRECTORY_BYTES_PER_MEMBER = 1024
"""Central directory bytes allowed per permitted member (an entry is 46 bytes plus its name
and extra fields: a kilobyte fits any sensible path)."""

Source = str | os.PathLike | IO[bytes]


class ArchiveTooLarge(ValueError):
    """The archive lists more entries (or a larger directory) than allowed."""


def open_zip(source: Source, max_members: int) -> zipfile.ZipFile:
    """``zipfile.ZipFile(source)`` once its end record says it has at most ``max_members``
    entries in a directory of at most ``max_members * DIRECTORY_BYTES_PER_MEMBER`` bytes.

    Raises ``ArchiveTooLarge`` (the message gives the numbers) or ``zipfile.BadZipFile``.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as handle:
            _check_directory(handle, max_members)
    else:
        _check_directory(source, max_members)
        source.seek(0)
    return zipfile.ZipFile(source)


def _check_directory(handle: IO[bytes], max_members: int) -> None:
    # zipfile's own reader of the end record (zip64 included); private, but unchanged since
    # Python 2.6 and exactly what ZipFile itself reads first.
    end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]
    if end is None:
        raise zipfile.BadZipFile("not a zip archive (no end of central directory record)")
    entries = int(end[zipfile._ECD_ENTRIES_TOTAL])  # type: ignore[attr-defined]
    directory = int(end[zipfile._ECD_SIZE])  # type: ignore[attr-defined]
    if entries > max_members:
        raise ArchiveTooLarge(f"{entries} entries, more than the limit of {max_members}")
    if directory > max_members * DIRECTORY_BYTES_PER_MEMBER:
        raise ArchiveTooLarge(
            f"a central directory of {directory} bytes, more than {DIRECTORY_BYTES_PER_MEMBER} "
            f"bytes for each of at most {max_members} entries"
        )
    start = end[zipfile._ECD_LOCATION] - directory  # type: ignore[attr-defined]
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
    handle.seek(max(0, start))
    records, count, position = handle.read(directory), 0, 0
    while position + RECORD_BYTES <= len(records):
        if records[position : position + 4] != RECORD_SIGNATURE:
            break
        count += 1
        if count > max_members:
            raise ArchiveTooLarge(
                f"more than {max_members} entries (its end record says {entries})"
            )
        name, extra, comment = struct.unpack_from("<3H", records, position + 28)
        position += RECORD_BYTES + name + extra + comment


__all__ = ["DIRECTORY_BYTES_PER_MEMBER", "ArchiveTooLarge", "open_zip"]
