"""Tables: jobs, their state transitions, reports with per-worker statistics, evaluations,
an append-only event log (what ``/events`` streams), uploaded datasets and code bundles,
studies (groups of jobs: arms x seeds), users with their API tokens, and the audit log.

Jobs, studies, datasets and code bundles record their ``owner`` (a user's name; rows made
before users existed belong to ``admin``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


BOOTSTRAP_USER = "admin"
"""The user of the service's own token (``SYNCBN_API_TOKEN`` / ``api-token``), an admin, and
the owner of every row made before users existed."""


def owner_column() -> Mapped[str]:
    return mapped_column(String(64), default=BOOTSTRAP_USER, server_default=BOOTSTRAP_USER)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_created", "state", "created_at"),
        Index("ix_jobs_owner_state", "owner", "state"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    ray_status: Mapped[str | None] = mapped_column(String(16))
    """Last status Ray reported for the job's Ray Job (None: not submitted)."""
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    ingest_token_sha256: Mapped[str | None] = mapped_column(String(64))
    """SHA-256 of the token its Ray Job posts reports with (set when handed to Ray)."""
    steps_per_epoch: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_miou: Mapped[float | None] = mapped_column(Float)
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    """Submission time: the FIFO order of the queue (ties broken by id)."""
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    study_id: Mapped[str | None] = mapped_column(ForeignKey("studies.id"), index=True)
    arm: Mapped[str | None] = mapped_column(String(16))
    """The study arm (``local``, ``sync``, ``reference``) of a study's job."""
    owner: Mapped[str] = owner_column()
    """Who submitted it (a study's jobs: the study's owner)."""
    pinned: Mapped[bool] = mapped_column(default=False, server_default=false())
    """Its run folder is kept past the retention (``SYNCBN_RETENTION_DAYS``)."""
    files_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the retention removed its run folder (checkpoints, model files, log)."""

    transitions: Mapped[list[Transition]] = relationship(
        order_by="Transition.id", cascade="all, delete-orphan"
    )  # loaded on access: one job's page needs them, a list of jobs does not


class Transition(Base):
    __tablename__ = "transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Report(Base):
    """One ``ray.train.report`` round: all ranks' statistics at one (kind, epoch, step)."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("job_id", "kind", "epoch", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    time: Mapped[float] = mapped_column(Float)

    workers: Mapped[list[WorkerStats]] = relationship(
        order_by="WorkerStats.rank", cascade="all, delete-orphan", lazy="selectin"
    )


class WorkerStats(Base):
    """One rank's statistics in one report (the queryable columns plus the whole dict)."""

    __tablename__ = "worker_stats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    samples_per_s: Mapped[float | None] = mapped_column(Float)
    step_time_s: Mapped[float | None] = mapped_column(Float)
    sync_time_s: Mapped[float | None] = mapped_column(Float)
    allreduce_bytes_per_step: Mapped[float | None] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_miou: Mapped[float | None] = mapped_column(Float)


class Event(Base):
    """The append-only log that ``GET /v1/jobs/{id}/events`` streams (ids are SSE ids)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    n_train: Mapped[int] = mapped_column(Integer)
    n_test: Mapped[int] = mapped_column(Integer)
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    num_classes: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(
        String(16), default="classification", server_default="classification"
    )
    class_names: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    owner: Mapped[str] = owner_column()


class CodeBundle(Base):
    """An uploaded archive of Python files (unpacked under ``$SYNCBN_HOME/code/<id>``)."""

    __tablename__ = "code_bundles"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    files: Mapped[int] = mapped_column(Integer)
    modules: Mapped[list[str]] = mapped_column(JSON)
    requirements: Mapped[list[str]] = mapped_column(JSON)
    """The lines of the bundle's ``requirements.txt`` (empty: none)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    owner: Mapped[str] = owner_column()


class Study(Base):
    """A small-batch study: one job per arm and seed (``Job.study_id``, ``Job.arm``)."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    base: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The JobSpec fields every arm shares (no ``norm`` and no ``seed``)."""
    seeds: Mapped[list[int]] = mapped_column(JSON)
    arms: Mapped[list[str]] = mapped_column(JSON)
    skipped: Mapped[dict[str, str]] = mapped_column(JSON)
    """Arms asked for but not run, with the reason."""
    metric: Mapped[str] = mapped_column(String(16))
    """What the arms are compared on: ``test_accuracy``, or ``test_miou`` (segmentation)."""
    cancelled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    owner: Mapped[str] = owner_column()


class User(Base):
    """A person (or robot) who uses the service: a role, optional quota overrides (None: the
    service's default setting), revoked instead of deleted (their objects keep an owner)."""

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))
    """``admin``, ``member`` or ``viewer`` (``contract.api.Role``)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    max_running_workers: Mapped[int | None] = mapped_column(Integer)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)
    max_upload_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_model_bytes: Mapped[int | None] = mapped_column(BigInteger)


class ApiToken(Base):
    """One of a user's API tokens: only its SHA-256 is kept (the token is shown once)."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("user", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """One write (or refused write, or failed sign-ins counted per address and minute): who,
    what, which object, when, and the outcome (the HTTP status)."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str | None] = mapped_column(String(64), index=True)
    """The user's name (None: a failed sign-in)."""
    action: Mapped[str] = mapped_column(String(48), index=True)
    """What: the route's operation id, like ``jobs-submit`` or ``users-create``; ``sign-in``."""
    object_kind: Mapped[str | None] = mapped_column(String(16))
    object_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[int] = mapped_column(Integer)
    """The answer's HTTP status (a refusal is 401, 403, 409, 422, 429, ...)."""
    detail: Mapped[str | None] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer, default=1)
    """How many times (failed sign-ins from one address in one minute are one row)."""
