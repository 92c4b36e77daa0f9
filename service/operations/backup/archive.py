"""The backup archive's format and limits, its errors and the progress a command prints
(``service.operations.backup``)."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import TextIO

from contract.protocol import OUTCOME_FILE, STATS_FILE
from service.jobs.logs import LOG_FILE

FORMAT = "syncbn-backup"
FORMAT_VERSION = 1
"""The archive format this release writes and the newest it restores."""
MANIFEST = "manifest.json"
DATABASE = "syncbn.db"
FOLDERS = ("datasets", "code", "runs")
"""The home's folders a backup holds files of (``contract.layout``)."""
RUN_FILES = (LOG_FILE, OUTCOME_FILE, STATS_FILE)
"""The files of a job's run folder a backup holds, besides its checkpoints' model files."""
MAX_MANIFEST_BYTES = 64 << 20
"""The largest manifest a restore reads, and so a backup writes."""
MAX_SKIPPED_PER_ENTRY = 20
"""Skipped paths named per dataset, code bundle or job, at most: then how many more."""
MAX_SHOWN_SKIPPED = 50
"""Skipped paths printed at most (the manifest names them)."""
MAX_TREE_DEPTH = 32
"""Folders deep a code bundle is backed up, at most."""
MAX_STATS_BYTES = 256 << 20
"""The largest ``stats.jsonl`` backed up: what the service reads of one at most
(``contract.protocol.read_events``)."""
MAX_MTIME = 8**11 - 1
"""The latest modification time a tar member gets (a ustar header's; a job may set any)."""
CHUNK = 1 << 20
PROGRESS_EVERY_S = 1.0
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DOCS = "docs/operations.md"

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
LINK = "a symbolic link: not followed"


class OperationError(RuntimeError):
    """Why a backup or a restore is refused or failed; the command prints it, exits 2."""


class _Skip(Exception):
    """A path of the home that is not backed up (a link, not a plain file or folder)."""


@dataclass(frozen=True)
class Ids:
    """The rows whose files a backup holds."""

    jobs: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    code_bundles: list[str] = field(default_factory=list)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


class _Progress:
    """``what: n/N files, x of y MB`` on ``out``, at most once a second, and at the end."""

    def __init__(self, out: TextIO, what: str, files: int, size: int) -> None:
        self.out, self.what, self.total_files, self.total_size = out, what, files, size
        self.files = self.size = 0
        self.shown = time.monotonic()

    def say(self, text: str) -> None:
        print(f"{self.what}: {text}", file=self.out, flush=True)

    def add(self, size: int) -> None:
        self.files += 1
        self.size += size
        if time.monotonic() - self.shown >= PROGRESS_EVERY_S:
            self.show()

    def show(self) -> None:
        self.shown = time.monotonic()
        files = f"{self.files}/{self.total_files}" if self.total_files else str(self.files)
        size = f"{_mb(self.size)} of {_mb(self.total_size)}" if self.total_size else _mb(self.size)
        self.say(f"{files} files, {size}")
