"""Reading a home for a backup without following a link: what to copy, and what is skipped
and why (a job's files are untrusted)."""

from __future__ import annotations

import errno
import fnmatch
import itertools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from contract.recipe import MODEL_FILE
from service.files.trained_models import CHECKPOINTS, MAX_CHECKPOINTS, MAX_RUN_ENTRIES
from service.operations.backup.archive import (
    _DIR,
    FOLDERS,
    LINK,
    MAX_SKIPPED_PER_ENTRY,
    MAX_TREE_DEPTH,
    RUN_FILES,
    SAFE_ID,
    Ids,
    _Skip,
)


# -- reading the home without following links ---------------------------------------------
def _open_at(dir_fd: int, name: str, flags: int) -> int:
    """``name`` in the folder ``dir_fd``, not followed if it is a link (``_Skip``);
    ``FileNotFoundError`` when it is not there; another ``OSError`` when it cannot be read."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            raise
        try:
            link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        raise _Skip(LINK if link else "not a folder") from None


def _open_path(home_fd: int, path: PurePosixPath, flags: int) -> int:
    """``path`` (relative) under the home, each component opened without following a link."""
    fd = home_fd
    try:
        for part in path.parts[:-1]:
            parent, fd = fd, _open_at(fd, part, _DIR)
            if parent != home_fd:
                os.close(parent)
        return _open_at(fd, path.parts[-1], flags)
    finally:
        if fd != home_fd:
            os.close(fd)


def _unreadable(exc: OSError) -> str:
    """The skip reason of a path that cannot be read (``EACCES``: its owner's mode)."""
    return f"cannot be read: {exc.strerror or exc}"


def shown(text: object) -> str:
    """``text`` fit for a line of output: a control character, or a byte of a file name that is
    not UTF-8, escaped (a job chooses its file names)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def _owner(path: PurePosixPath | str) -> str:
    """The dataset, code bundle or job folder a path of the home belongs to."""
    return "/".join(str(path).split("/")[:2])


@dataclass
class _Plan:
    """The files to copy (relative path, size when planned) and what is skipped, why: at most
    ``MAX_SKIPPED_PER_ENTRY`` paths of each dataset, code bundle or job are named, then how
    many more (``summary``)."""

    files: list[tuple[PurePosixPath, int]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def skip(self, path: PurePosixPath | str, reason: str) -> None:
        owner = _owner(path)
        self.counts[owner] = count = self.counts.get(owner, 0) + 1
        if count <= MAX_SKIPPED_PER_ENTRY:
            self.skipped.append({"path": str(path), "reason": reason})

    def summary(self, listed: bool = True) -> list[dict[str, str]]:
        """The skipped paths (``listed``: each, up to the bound; else none), then for each
        dataset, code bundle or job with more, how many."""
        bound = MAX_SKIPPED_PER_ENTRY if listed else 0
        more = [
            {"path": owner, "reason": f"{count - bound} more skipped, not listed"}
            for owner, count in self.counts.items()
            if count > bound
        ]
        return (self.skipped if listed else []) + more

    def entry(self, dir_fd: int, name: str, path: PurePosixPath) -> os.stat_result | None:
        """``name``'s status, or None (skipped, or not there) unless a plain file or folder."""
        try:
            info = _lstat(dir_fd, name)
        except OSError as exc:
            self.skip(path, _unreadable(exc))
            return None
        if info is None:
            return None
        if stat.S_ISLNK(info.st_mode):
            self.skip(path, LINK)
            return None
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            self.skip(path, "not a plain file or folder")
            return None
        return info

    def file(self, dir_fd: int, name: str, path: PurePosixPath) -> None:
        info = self.entry(dir_fd, name, path)
        if info is not None and stat.S_ISREG(info.st_mode):
            self.files.append((path, info.st_size))
        elif info is not None:
            self.skip(path, "a folder where a file was expected")

    def tree(self, root_fd: int, root: PurePosixPath, max_entries: int) -> None:
        """Every plain file under the folder ``root_fd`` (at ``root``), links skipped: at most
        ``MAX_TREE_DEPTH`` folders deep and ``max_entries`` entries looked at (then the rest is
        skipped, noted). Iterative: as many folders open as it is deep."""
        stack: list[tuple[int, PurePosixPath, Iterator[str]]] = []
        left = max_entries

        def enter(fd: int, path: PurePosixPath) -> bool:
            nonlocal left
            try:
                with os.scandir(fd) as entries:
                    names = sorted(e.name for e in itertools.islice(entries, left + 1))
            except OSError as exc:
                self.skip(path, _unreadable(exc))
                return False
            if len(names) > left:
                self.skip(root, f"over {max_entries} entries: the rest is not backed up")
                names, left = names[:left], 0
            else:
                left -= len(names)
            stack.append((fd, path, iter(names)))
            return True

        enter(root_fd, root)
        try:
            while stack:
                fd, path, names = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    if fd != root_fd:
                        os.close(fd)
                    continue
                info = self.entry(fd, name, path / name)
                if info is None:
                    continue
                if stat.S_ISREG(info.st_mode):
                    self.files.append((path / name, info.st_size))
                elif len(stack) > MAX_TREE_DEPTH:
                    self.skip(path / name, f"over {MAX_TREE_DEPTH} folders deep: not backed up")
                else:
                    with _Folder(self, fd, name, path / name) as sub:
                        if sub.fd is not None and enter(sub.fd, path / name):
                            sub.fd = None  # the stack closes it
        finally:
            for fd, _, _ in stack:
                if fd != root_fd:
                    os.close(fd)

    def folder(self, dir_fd: int | None, name: str, path: PurePosixPath) -> _Folder:
        return _Folder(self, dir_fd, name, path)


class _Folder:
    """``with plan.folder(fd, name, path) as sub``: ``sub.fd``, the folder opened; None when
    it is ``missing`` (or its parent, ``dir_fd`` None, is), or skipped (a link, or it cannot
    be read: noted)."""

    def __init__(self, plan: _Plan, dir_fd: int | None, name: str, path: PurePosixPath) -> None:
        self.fd: int | None = None
        self.missing = dir_fd is None
        if dir_fd is None:
            return
        try:
            self.fd = _open_at(dir_fd, name, _DIR)
        except FileNotFoundError:
            self.missing = True
        except _Skip as exc:
            plan.skip(path, str(exc))
        except OSError as exc:
            plan.skip(path, _unreadable(exc))

    def __enter__(self) -> _Folder:
        return self

    def __exit__(self, *_: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _plan(home_fd: int, ids: Ids, max_code_entries: int) -> _Plan:
    """What the backup of ``ids``' files copies from the home, and what it skips (a code
    bundle: at most ``max_code_entries`` entries looked at). A queued job has no run folder
    yet; a dataset or code bundle without its file is noted."""
    plan = _Plan()
    datasets, code, runs = (PurePosixPath(name) for name in FOLDERS)

    def safe(names: list[str], folder: PurePosixPath) -> list[str]:
        """The ids that are plain file names (the service makes no other)."""
        for name in names:
            if not SAFE_ID.fullmatch(name):
                plan.skip(f"{folder}/{name!r}", "not a plain file name: refused")
        return [name for name in names if SAFE_ID.fullmatch(name)]

    with plan.folder(home_fd, "datasets", datasets) as top:
        for dataset in safe(ids.datasets, datasets):
            name = f"{dataset}.npz"
            if top.fd is not None and _exists(top.fd, name):
                plan.file(top.fd, name, datasets / name)
            elif top.fd is not None or top.missing:
                plan.skip(datasets / name, "missing: its row has no file")
    with plan.folder(home_fd, "code", code) as top:
        for bundle in safe(ids.code_bundles, code):
            with plan.folder(top.fd, bundle, code / bundle) as sub:
                if sub.fd is not None:
                    plan.tree(sub.fd, code / bundle, max_code_entries)
                elif sub.missing and (top.fd is not None or top.missing):
                    plan.skip(code / bundle, "missing: its row has no folder")
    with plan.folder(home_fd, "runs", runs) as top:
        for job in safe(ids.jobs, runs):
            with plan.folder(top.fd, job, runs / job) as sub:
                if sub.fd is not None:
                    _plan_run(plan, sub.fd, runs / job)
    return plan


def _exists(dir_fd: int, name: str) -> bool:
    try:
        return _lstat(dir_fd, name) is not None
    except OSError:
        return True  # there, unreadable: the plan says why


def _plan_run(plan: _Plan, job_fd: int, path: PurePosixPath) -> None:
    """A job's log, outcome and reports, and the model file of each checkpoint the service
    reads (``_checkpoints``)."""
    for name in RUN_FILES:
        plan.file(job_fd, name, path / name)
    for name in _checkpoints(plan, job_fd, path):
        with plan.folder(job_fd, name, path / name) as sub:
            if sub.fd is not None:
                plan.file(sub.fd, MODEL_FILE, path / name / MODEL_FILE)


def _checkpoints(plan: _Plan, job_fd: int, path: PurePosixPath) -> list[str]:
    """The checkpoint folders of a run folder the service reads, so backs up: among its first
    ``MAX_RUN_ENTRIES`` entries, at most the ``MAX_CHECKPOINTS`` newest by name (links
    skipped); the rest is noted (``service.files.trained_models``)."""
    folders = []
    try:
        with os.scandir(job_fd) as entries:
            for count, entry in enumerate(entries):
                if count == MAX_RUN_ENTRIES:
                    plan.skip(path, f"over {MAX_RUN_ENTRIES} entries: the rest is not looked at")
                    break
                if not fnmatch.fnmatchcase(entry.name, CHECKPOINTS):
                    continue
                if entry.is_symlink():
                    plan.skip(path / entry.name, LINK)
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
    except OSError as exc:
        plan.skip(path, _unreadable(exc))
    folders.sort()
    if len(folders) > MAX_CHECKPOINTS:
        plan.skip(
            path,
            f"{len(folders)} checkpoint folders: only the newest {MAX_CHECKPOINTS} by name are "
            "backed up (the service reads no more)",
        )
    return folders[-MAX_CHECKPOINTS:]


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
