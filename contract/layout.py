"""Where everything lives under ``$SYNCBN_HOME`` (default ``.syncbn``), for the service, the
workers and the CLI alike.

    $SYNCBN_HOME/
      syncbn.db       the SQLite database (unless DATABASE_URL says otherwise)
      api-token       the generated API token (mode 0600; unless SYNCBN_API_TOKEN is set)
      service-url     where the service of this home last listened (the CLI's default URL)
      runs/<job>/     Ray Train storage: checkpoints (with model.safetensors), stats.jsonl
      datasets/       uploaded datasets, <id>.npz
      code/<id>/      unpacked code bundles (a job's runtime_env working_dir)
      predictions/    inputs and outputs of predictions run on Ray (removed when answered)
      ray/            the embedded Ray head's record (head.json) and log
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "SYNCBN_HOME"
DEFAULT_HOME = ".syncbn"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Host names that always mean this machine."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only: where a home's files,
    the token among them, may be used."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_service_url(layout: Layout | None = None) -> str | None:
    """The URL the service of this home (default: ``$SYNCBN_HOME``) recorded when it started,
    if it is one on this machine (a loopback address): a client's default."""
    text = read_token_file((layout or Layout.of()).service_url)
    if text is None:
        return None
    host = text.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return text if is_loopback(host) else None


def read_token_file(path: Path) -> str | None:
    """The token kept in ``path`` (None: no such file, or empty)."""
    try:
        return path.read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


@dataclass(frozen=True)
class Layout:
    """The paths of one ``home`` (resolved)."""

    home: Path

    @classmethod
    def of(cls, home: str | os.PathLike | None = None) -> Layout:
        """The layout of ``home``, else of ``$SYNCBN_HOME``, else of ``.syncbn``."""
        return cls(Path(home or os.environ.get(HOME_ENV) or DEFAULT_HOME).resolve())

    @property
    def database(self) -> Path:
        return self.home / "syncbn.db"

    @property
    def api_token(self) -> Path:
        return self.home / "api-token"

    @property
    def service_url(self) -> Path:
        return self.home / "service-url"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def datasets(self) -> Path:
        return self.home / "datasets"

    @property
    def code(self) -> Path:
        return self.home / "code"

    @property
    def predictions(self) -> Path:
        return self.home / "predictions"

    @property
    def ray(self) -> Path:
        return self.home / "ray"
