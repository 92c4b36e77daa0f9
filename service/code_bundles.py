"""Code bundles: a ``.zip`` or ``.tar.gz`` of Python files with a user's model builder.

The service validates and unpacks a bundle WITHOUT importing or running any of it (it only
parses each ``.py`` file to report syntax errors), then hands the unpacked directory to Ray as
the job's ``runtime_env["working_dir"]``: Ray ships it to every node and puts it on the
workers' ``sys.path``. An optional top-level ``requirements.txt`` becomes the runtime env's
``pip`` list.

Every problem is a ``BundleError`` whose message names the member at fault.
"""

from __future__ import annotations

import ast
import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

REQUIREMENTS = "requirements.txt"
RESERVED_MODULES = frozenset({"syncbn", "workers", "service", "torch", "numpy", "ray"})
"""Top-level names a bundle may not use: they would shadow what the job itself imports."""
SKIPPED = ("__MACOSX", "__pycache__", ".DS_Store")


class BundleError(ValueError):
    """A bundle that cannot be used; the message says why."""


@dataclass(frozen=True)
class Member:
    """One regular file of an archive, by its path inside the bundle."""

    path: PurePosixPath
    size: int


@dataclass(frozen=True)
class BundleInfo:
    """What a valid bundle holds."""

    files: int
    modules: list[str]
    requirements: list[str]


def _checked_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"{name}: absolute paths are not allowed in a bundle")
    if ".." in path.parts:
        raise BundleError(f"{name}: '..' is not allowed in a bundle's paths")
    return path


def _zip_members(archive: zipfile.ZipFile) -> Iterator[tuple[Member, Any]]:
    for info in archive.infolist():
        path = _checked_path(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise BundleError(f"{info.filename}: links are not allowed in a bundle")
        if not info.is_dir():
            yield Member(path, info.file_size), info


def _tar_members(archive: tarfile.TarFile) -> Iterator[tuple[Member, Any]]:
    for info in archive.getmembers():
        path = _checked_path(info.name)
        if info.issym() or info.islnk():
            raise BundleError(f"{info.name}: links are not allowed in a bundle")
        if info.isfile():
            yield Member(path, info.size), info
        elif not info.isdir():
            raise BundleError(f"{info.name}: only files and folders are allowed in a bundle")


def _skipped(path: PurePosixPath) -> bool:
    return any(part in SKIPPED or part.startswith("._") for part in path.parts)


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


def _requirements(text: str) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    options = [line for line in lines if line.startswith("-")]
    if options:
        raise BundleError(
            f"{REQUIREMENTS}: pip options are not allowed ({options[0]!r}); list packages only"
        )
    return lines


def unpack(archive_path: Path, target: Path, *, max_bytes: int, max_files: int) -> BundleInfo:
    """Validate the archive at ``archive_path`` and unpack it into the new folder ``target``.

    Raises ``BundleError`` (and leaves no ``target``) for: not a zip or tar.gz, absolute paths,
    ``..``, links or special files, more than ``max_files`` files or ``max_bytes`` unpacked,
    no ``.py`` file, a syntax error, a module shadowing ``RESERVED_MODULES``, pip options in
    ``requirements.txt``.
    """
    with _open_archive(archive_path) as archive:
        try:
            if isinstance(archive, zipfile.ZipFile):
                members = list(_zip_members(archive))
            else:
                members = list(_tar_members(archive))
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise BundleError(f"cannot read the archive ({exc})") from exc
        members = [(m, info) for m, info in members if not _skipped(m.path)]
        if len(members) > max_files:
            raise BundleError(f"{len(members)} files, more than the limit of {max_files}")
        total = sum(m.size for m, _ in members)
        if total > max_bytes:
            raise BundleError(f"{total} bytes unpacked, more than the limit of {max_bytes}")
        root = _common_root([m.path for m, _ in members])
        try:
            return _extract(archive, members, root, target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise


def _open_archive(path: Path) -> zipfile.ZipFile | tarfile.TarFile:
    if zipfile.is_zipfile(path):
        return zipfile.ZipFile(path)
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError("not a .zip or .tar.gz archive") from exc


def _open(archive: zipfile.ZipFile | tarfile.TarFile, info: Any) -> IO[bytes]:
    if isinstance(archive, zipfile.ZipFile):
        return archive.open(info)
    handle = archive.extractfile(info)
    assert handle is not None
    return handle


def _extract(
    archive: zipfile.ZipFile | tarfile.TarFile,
    members: list[tuple[Member, Any]],
    root: PurePosixPath | None,
    target: Path,
) -> BundleInfo:
    target.mkdir(parents=True)
    modules, requirements = [], []
    for member, info in members:
        path = member.path.relative_to(root) if root else member.path
        with _open(archive, info) as source:
            data = source.read(member.size + 1)
        if len(data) != member.size:
            raise BundleError(f"{member.path}: size differs from the archive's index")
        name = module_name(path)
        if path.suffix == ".py":
            _check_python(member.path, data)
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
        out = target.joinpath(*path.parts)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "xb") as handle:
                handle.write(data)
        except OSError as exc:
            raise BundleError(f"{member.path}: cannot unpack ({exc.strerror})") from exc
        os.chmod(out, 0o644)
    if not modules:
        raise BundleError("no importable .py files in the bundle")
    return BundleInfo(len(members), sorted(modules), requirements)


def runtime_env(directory: Path, requirements: list[str]) -> dict[str, object]:
    """The Ray ``runtime_env`` that ships an unpacked bundle to every node."""
    env: dict[str, object] = {"working_dir": str(directory)}
    if requirements:
        env["pip"] = list(requirements)
    return env
