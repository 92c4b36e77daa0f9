"""The package's version, for the service (``/healthz``) and its clients: one place, read from
the installed package's metadata (``pyproject.toml``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PACKAGE = "syncbn-service"


def package_version() -> str:
    """``syncbn-service``'s installed version ("0+unknown" for a source tree not installed)."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "0+unknown"


def major(text: str) -> str:
    """The major part of a version (``"0.1.0"`` -> ``"0"``, ``"0+unknown"`` -> ``"0"``)."""
    return text.split("+", 1)[0].split(".", 1)[0]
