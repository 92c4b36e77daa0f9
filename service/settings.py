"""Service configuration, from environment variables (pydantic-settings).

Each field is ``SYNCBN_<FIELD>`` (``PORT``, ``RAY_ADDRESS`` and ``DATABASE_URL`` also plain);
its description says what it sets. Unset ``RAY_ADDRESS``: ``python -m service`` starts an
embedded Ray head. Every limit, its default and why: ``docs/security.md``. There is always an
API token (``service.api.credentials``); listening beyond loopback needs a real one in
``SYNCBN_API_TOKEN``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.layout import DEFAULT_HOME, Layout, is_loopback

MIN_EMBEDDED_CPUS = 4
"""Logical CPUs the embedded Ray head offers at least: Ray schedules by these, so 4 workers of
1 CPU each fit (sharing the cores) where the README's studies run 4 workers."""


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="SYNCBN_", extra="ignore")

    home: Path = Field(Path(DEFAULT_HOME), description="data directory")
    host: str = Field(
        "127.0.0.1", description="address uvicorn listens on (beyond loopback: a real token)"
    )
    port: int = Field(
        8000,
        validation_alias=AliasChoices("PORT", "SYNCBN_PORT"),
        description="port uvicorn listens on (PORT)",
    )
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("RAY_ADDRESS", "SYNCBN_RAY_ADDRESS"),
        description="Ray dashboard / Jobs URL (RAY_ADDRESS; unset: an embedded Ray head)",
    )
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "SYNCBN_DATABASE_URL"),
        description="SQLAlchemy URL (DATABASE_URL; unset: SQLite in $SYNCBN_HOME)",
    )
    api_token: str | None = Field(
        None, description="bearer token of the REST API (unset: $SYNCBN_HOME/api-token)"
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names answered besides loopback and the public URL's ('*': any)",
    )
    public_url: str | None = Field(None, description="service URL as seen from Ray nodes")
    worker_python: str = Field("python", description="python on the Ray nodes (entry point)")
    embedded_ray_cpus: int | None = Field(
        None,
        ge=1,
        description="logical CPUs the embedded Ray head offers (unset: this machine's, at least "
        f"{MIN_EMBEDDED_CPUS}, so the 4-worker small-batch studies run on a 2-core machine)",
    )
    log_level: str = Field("INFO", description="the service's log level (DEBUG, INFO, WARNING)")
    log_format: Literal["auto", "text", "json"] = Field(
        "auto",
        description="log lines on stderr: text (for a person), json (one object a line, for a "
        "collector); auto: text on a terminal, else json",
    )

    max_body_bytes: int = Field(1 << 20, gt=0, description="largest JSON request body")
    max_ingest_bytes: int = Field(
        8 << 20, gt=0, description="largest report a job posts to the ingest endpoint"
    )
    max_upload_bytes: int = Field(
        64 << 20, gt=0, description="largest dataset upload (also unpacked and decoded)"
    )
    max_dataset_memory: int = Field(
        512 << 20, gt=0, description="most memory one copy of a dataset takes in training"
    )
    max_upload_images: int = Field(
        50_000, ge=1, description="most images in one image-folder .zip upload"
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="most pixels (width x height) of one image"
    )
    max_decoded_pixels: int = Field(
        128 << 20, ge=1, description="most pixels decoded by one request, all images together"
    )
    max_code_bytes: int = Field(
        16 << 20, gt=0, description="largest code bundle (the upload, and unpacked)"
    )
    max_code_files: int = Field(2000, gt=0, description="most files in a code bundle")
    max_source_bytes: int = Field(
        1 << 20, gt=0, description="most bytes of Python source in a code bundle, all files"
    )
    max_source_file_bytes: int = Field(
        200 << 10, gt=0, description="most bytes of one Python file in a code bundle"
    )
    max_predict_samples: int = Field(1024, ge=1, description="samples in one predict request")
    max_predict_bytes: int = Field(16 << 20, gt=0, description="largest predict request body")
    max_predict_values: int = Field(
        1 << 21, ge=1, description="most numbers one prediction takes in and gives back"
    )
    max_concurrent_predicts: int = Field(
        2, ge=1, description="predict requests served at once (more: 429 with Retry-After)"
    )
    max_concurrent_uploads: int = Field(
        2, ge=1, description="dataset and code uploads served at once (more: 429)"
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="seconds a JSON request body may take to arrive (then 408)"
    )
    upload_body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="seconds an upload's or a prediction's body may take to arrive (then 408)",
    )
    max_job_log_bytes: int = Field(
        1 << 20, ge=1024, description="the end of a job's log kept when it ends, and served"
    )
    predict_timeout_s: float = Field(
        120.0, gt=0, description="a code bundle model's prediction (a Ray Job) at most"
    )
    max_queued_jobs: int = Field(1000, ge=0, description="jobs waiting in the queue at most")
    max_running_jobs: int | None = Field(
        None, ge=0, description="jobs on Ray at once (unset: as many as fit; 0: hold the queue)"
    )
    poll_interval_s: float = Field(1.0, gt=0, description="scheduler/reconcile period")
    # Each open stream holds a socket (a file descriptor) and a few KiB, and costs nothing
    # while idle (service.jobs.events). There is one API token today, so the per-token cap is
    # the one a client meets: 1000 is far beyond a dashboard or `syncbn watch` (one stream per
    # job watched) yet stops a runaway script before it exhausts `ulimit -n` (often 1024 soft:
    # the service warns when a cap does not fit it). The total bounds the process once there
    # are several tokens, so one of them cannot take every slot.
    max_event_streams: int = Field(
        2000, ge=1, description="event streams open at once, all tokens together (more: 429)"
    )
    max_event_streams_per_token: int = Field(
        1000, ge=1, description="event streams open at once with one API token (more: 429)"
    )
    # The disk (service.operations.disk) and retention (service.jobs.retention): an operator
    # who runs the service for months sets a budget and a retention; unset, nothing is refused
    # before the file system is full and nothing is removed but by hand, as before.
    disk_budget_bytes: int | None = Field(
        None,
        gt=0,
        description="bytes $SYNCBN_HOME may use: at 90 % a warning, at 100 % uploads and new "
        "jobs and studies are refused (507) (unset: the file system's free space)",
    )
    disk_check_interval_s: float = Field(
        60.0,
        gt=0,
        description="seconds a measure of the bytes under $SYNCBN_HOME is reused before the "
        "folder is walked again",
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        description="days a finished job's checkpoints, model files and log are kept after it "
        "ended; its rows, statistics and result stay (unset: kept forever; a pinned job: kept)",
    )
    retention_interval_s: float = Field(
        3600.0, gt=0, description="seconds between two sweeps of the retention (one at start)"
    )
    # A user's quotas: these defaults, or the user's own overrides (PATCH /v1/users/{name}).
    # Unset: no limit but the service's own (max_queued_jobs, the cluster's size).
    quota_max_running_workers: int | None = Field(
        None, ge=0, description="a user's workers running at once (more wait in the queue)"
    )
    quota_max_queued_jobs: int | None = Field(
        None, ge=0, description="a user's jobs waiting in the queue at most (more: 429)"
    )
    quota_max_upload_bytes: int | None = Field(
        None, ge=0, description="bytes of a user's datasets and code bundles (more: 422)"
    )
    quota_max_model_bytes: int | None = Field(
        None, ge=0, description="bytes of a user's trained models; past it no new job (429)"
    )
    trusted_proxy_header: str | None = Field(
        None,
        description="a header naming the signed-in user, set by a reverse proxy "
        "(e.g. X-Forwarded-User; unset: off)",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses or CIDRs the proxy header is accepted from (any other: ignored)",
    )
    proxy_user_role: Literal["member", "viewer"] = Field(
        "member", description="the role of a user first seen through the proxy header"
    )

    @field_validator("allowed_hosts", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip().lower() for name in value.split(",") if name.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"SYNCBN_TRUSTED_PROXIES: {entry!r} is not an IP address or a CIDR "
                    "(like 10.0.0.5 or 10.0.0.0/24)"
                ) from None
        return value

    @field_validator("trusted_proxy_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if not value:  # an empty variable: off
            return None
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", value):
            raise ValueError(
                f"SYNCBN_TRUSTED_PROXY_HEADER: {value!r} is not a header name (like "
                "X-Forwarded-User)"
            )
        if value.lower() in ("authorization", "host", "cookie"):
            raise ValueError(f"SYNCBN_TRUSTED_PROXY_HEADER may not be {value}")
        return value

    @model_validator(mode="after")
    def _proxy_needs_addresses(self) -> Settings:
        if self.trusted_proxy_header and not self.trusted_proxies:
            raise ValueError(
                "SYNCBN_TRUSTED_PROXY_HEADER is set but SYNCBN_TRUSTED_PROXIES is empty: name "
                "the proxy's addresses, or the header would never be trusted"
            )
        return self

    @property
    def embedded_cpus(self) -> int:
        """The logical CPUs of the embedded Ray head."""
        return self.embedded_ray_cpus or max(MIN_EMBEDDED_CPUS, os.cpu_count() or 1)

    @property
    def loopback_only(self) -> bool:
        """Whether the service listens on this machine only."""
        return is_loopback(self.host)

    @property
    def layout(self) -> Layout:
        """Where everything lives under ``home`` (``contract.layout``)."""
        return Layout(self.home.resolve())

    @property
    def runs_dir(self) -> Path:
        return self.layout.runs

    @property
    def datasets_dir(self) -> Path:
        return self.layout.datasets

    @property
    def predictions_dir(self) -> Path:
        """Inputs and outputs of predictions run on Ray (removed when answered)."""
        return self.layout.predictions

    @property
    def code_dir(self) -> Path:
        """Unpacked code bundles, one folder per id."""
        return self.layout.code

    @property
    def api_token_file(self) -> Path:
        """Where a generated API token is kept (mode 0600)."""
        return self.layout.api_token

    @cached_property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.layout.database}"

    @property
    def ingest_base_url(self) -> str:
        return (self.public_url or f"http://127.0.0.1:{self.port}").rstrip("/")

    @staticmethod
    def env_name(field: str) -> str:
        """The environment variable of a field (``max_code_bytes`` -> ``SYNCBN_MAX_CODE_BYTES``)."""
        return f"SYNCBN_{field.upper()}"
