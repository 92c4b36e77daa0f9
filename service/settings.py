"""Service configuration, from environment variables (pydantic-settings).

| variable | default | meaning |
|---|---|---|
| ``SYNCBN_HOME`` | ``.syncbn`` | data directory: SQLite file, run storage, uploaded datasets |
| ``SYNCBN_HOST`` / ``PORT`` | ``127.0.0.1`` / ``8000`` | where uvicorn listens |
| ``RAY_ADDRESS`` | unset | Ray Jobs (dashboard) URL, e.g. ``http://head:8265``; unset: embedded |
| ``DATABASE_URL`` | ``sqlite:///$SYNCBN_HOME/syncbn.db`` | any SQLAlchemy URL (PostgreSQL too) |
| ``SYNCBN_API_TOKEN`` | unset | when set, every endpoint but ``/healthz`` needs the bearer token |
| ``SYNCBN_PUBLIC_URL`` | ``http://127.0.0.1:$PORT`` | how Ray nodes reach the ingest endpoint |
| ``SYNCBN_MAX_UPLOAD_BYTES`` | 64 MiB | largest dataset upload (image folders: unpacked, decoded) |
| ``SYNCBN_MAX_UPLOAD_IMAGES`` | ``50000`` | most images in one image-folder ``.zip`` upload |
| ``SYNCBN_MAX_IMAGE_PIXELS`` | ``16777216`` (4096x4096) | most pixels of one uploaded image |
| ``SYNCBN_MAX_CODE_BYTES`` / ``_FILES`` | 16 MiB / 2000 | code bundle limits (unpacked) |
| ``SYNCBN_MAX_PREDICT_SAMPLES`` / ``_BYTES`` | 1024 / 16 MiB | one prediction request at most |
| ``SYNCBN_PREDICT_TIMEOUT_S`` | ``120`` | a code bundle model's prediction on Ray at most |

Uploading code (``POST /v1/code``) runs it on the Ray cluster, by design: it is allowed only
when the API needs a token (``SYNCBN_API_TOKEN``) or the service listens on loopback only.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="SYNCBN_", extra="ignore")

    home: Path = Field(Path(".syncbn"), description="data directory")
    host: str = "127.0.0.1"
    port: int = Field(8000, validation_alias=AliasChoices("PORT", "SYNCBN_PORT"))
    ray_address: str | None = Field(
        None, validation_alias=AliasChoices("RAY_ADDRESS", "SYNCBN_RAY_ADDRESS")
    )
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "SYNCBN_DATABASE_URL")
    )
    api_token: str | None = Field(None, description="bearer token for the REST API")
    public_url: str | None = Field(None, description="service URL as seen from Ray nodes")
    worker_python: str = Field("python", description="python on the Ray nodes (entry point)")
    embedded_ray_cpus: int | None = Field(None, description="CPUs of the embedded Ray head")

    secret_key: str | None = Field(
        None, description="signs per-job ingest tokens (default: $SYNCBN_HOME/secret_key)"
    )

    max_body_bytes: int = Field(1 << 20, description="largest JSON request body")
    max_upload_bytes: int = Field(
        64 << 20, description="largest dataset upload (image folders: also unpacked and decoded)"
    )
    max_upload_images: int = Field(
        50_000, ge=1, description="most images in one image-folder .zip upload"
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="most pixels (width x height) of one uploaded image"
    )
    max_code_bytes: int = Field(16 << 20, gt=0, description="largest code bundle, unpacked")
    max_code_files: int = Field(2000, gt=0, description="most files in a code bundle")
    max_predict_samples: int = Field(1024, ge=1, description="samples in one predict request")
    max_predict_bytes: int = Field(16 << 20, gt=0, description="largest predict request body")
    predict_timeout_s: float = Field(
        120.0, gt=0, description="a code bundle model's prediction (a Ray Job) at most"
    )
    max_queued_jobs: int = Field(1000, ge=0, description="jobs waiting in the queue at most")
    max_running_jobs: int | None = Field(
        None, ge=0, description="jobs on Ray at once (unset: as many as fit; 0: hold the queue)"
    )
    poll_interval_s: float = Field(1.0, gt=0, description="scheduler/reconcile period")

    def secret(self) -> str:
        """``secret_key``, or the one kept in ``$SYNCBN_HOME/secret_key`` (created once)."""
        if self.secret_key:
            return self.secret_key
        path = self.home.resolve() / "secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
        self.secret_key = path.read_text().strip()
        return self.secret_key

    @property
    def runs_dir(self) -> Path:
        return self.home.resolve() / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.home.resolve() / "datasets"

    @property
    def predictions_dir(self) -> Path:
        """Inputs and outputs of predictions run on Ray (removed when answered)."""
        return self.home.resolve() / "predictions"

    @property
    def code_dir(self) -> Path:
        """Unpacked code bundles, one folder per id."""
        return self.home.resolve() / "code"

    @property
    def code_upload_refusal(self) -> str | None:
        """Why code may not be uploaded (None: it may): it runs on the cluster, so only with
        an API token or on a loopback-only listener."""
        if self.api_token or _is_loopback(self.host):
            return None
        return (
            f"uploading code runs it on the Ray cluster, and this service listens on "
            f"{self.host} without an API token: set SYNCBN_API_TOKEN (or listen on 127.0.0.1)"
        )

    @cached_property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home.resolve() / 'syncbn.db'}"

    @property
    def ingest_base_url(self) -> str:
        return (self.public_url or f"http://127.0.0.1:{self.port}").rstrip("/")
