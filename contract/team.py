"""The REST API's bodies for a team (issue 28): users, roles, their tokens, quotas and use,
and the audit log (the rest: ``contract.api``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["admin", "member", "viewer"]
"""What a user may do: everyone signed in reads everything (it is a team); a ``member`` writes
what is theirs (and runs jobs on their own or shared files), a ``viewer`` writes nothing, an
``admin`` writes everything and manages users."""
USER_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


MAX_COUNT = 2**31 - 1
"""The largest count a quota takes (a 32-bit column on PostgreSQL)."""
MAX_BYTES = 2**63 - 1
"""The largest byte quota (a 64-bit column)."""


class Quotas(BaseModel):
    """A user's limits; null: the service's default setting (``SYNCBN_QUOTA_*``)."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    max_running_workers: int | None = Field(
        None, ge=0, le=MAX_COUNT, strict=True, description="workers running at once"
    )
    max_queued_jobs: int | None = Field(
        None, ge=0, le=MAX_COUNT, strict=True, description="jobs waiting in the queue"
    )
    max_upload_bytes: int | None = Field(
        None, ge=0, le=MAX_BYTES, strict=True, description="bytes of datasets and code bundles kept"
    )
    max_model_bytes: int | None = Field(
        None, ge=0, le=MAX_BYTES, strict=True, description="bytes of trained model files"
    )


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=USER_NAME_PATTERN, description="lower case, like alice")
    role: Role = "member"
    quotas: Quotas = Field(default_factory=Quotas)


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    quotas: Quotas | None = Field(None, description="replaces the user's overrides")


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class UserOut(BaseModel):
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None = None
    quotas: Quotas = Field(description="the user's overrides (null: the default)")
    tokens: list[TokenOut] = []


class UserList(BaseModel):
    users: list[UserOut]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        pattern=TOKEN_NAME_PATTERN,
        description="unique per user; null or left out: token-<n>, the first n not taken",
    )


class TokenCreated(BaseModel):
    user: str
    name: str
    token: str = Field(description="shown once: only its SHA-256 is kept")


class CreatedUser(BaseModel):
    user: UserOut
    token: TokenCreated


class Usage(BaseModel):
    running_workers: int
    queued_jobs: int
    upload_bytes: int
    model_bytes: int


class MeOut(BaseModel):
    name: str
    role: Role
    quotas: Quotas = Field(description="in force: the user's overrides, else the defaults")
    usage: Usage


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str | None = Field(description="the user (null: no one signed in)")
    action: str = Field(description="the route's operation id (jobs-submit, users-create), sign-in")
    object_kind: str | None = Field(None, description="job, study, dataset, code, user; client")
    object_id: str | None = Field(
        None, description="its id (a token: user/name); of a count: the client's address"
    )
    status: int = Field(description="the answer's HTTP status (refusals included)")
    detail: str | None = Field(None, description="a refusal's message; a create's Location")
    count: int = Field(
        1, description="rows of no one signed in (failed sign-ins): how many that minute"
    )


class AuditList(BaseModel):
    entries: list[AuditOut] = Field(description="newest first")
    total: int
    limit: int
    offset: int
