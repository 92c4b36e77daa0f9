"""Users and their API tokens (the database side; ``service.api.routes.users`` serves them).

A user has a role, optional quota overrides and named tokens. A token is a random secret
(``service.jobs.ingest_tokens.new_token``), shown once when it is made; only its SHA-256 is
kept. Users are never deleted, only revoked (with all their tokens): their jobs, studies and
uploads keep them as owner, and a revoked user's name is never given to someone else. The
bootstrap ``admin`` (the user of the service's own token) cannot be revoked or demoted.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from contract.team import Quotas, Role, TokenCreated, TokenOut, UserIn, UserOut, UserPatch
from service.errors import Conflict, NotFound
from service.jobs.ingest_tokens import new_token, token_digest
from service.storage.tables import BOOTSTRAP_USER, ApiToken, User, utcnow
from service.teams.audit import PROXY_CREATE, Entry
from service.teams.caller import Caller

FIRST_TOKEN = "default"
"""The name of the token a new user gets."""


def get_user(session: Session, name: str) -> User:
    user = session.get(User, name)
    if user is None:
        raise NotFound("user", name)
    return user


def tokens_of(session: Session, name: str) -> list[ApiToken]:
    return list(
        session.scalars(select(ApiToken).where(ApiToken.user == name).order_by(ApiToken.id))
    )


def user_out(session: Session, user: User, tokens: list[ApiToken] | None = None) -> UserOut:
    """The user with their tokens (``tokens``: already read; else read here)."""
    return UserOut(
        name=user.name,
        role=user.role,  # type: ignore[arg-type]
        created_at=user.created_at,
        revoked_at=user.revoked_at,
        quotas=Quotas.model_validate(user),
        tokens=[
            TokenOut.model_validate(t)
            for t in (tokens_of(session, user.name) if tokens is None else tokens)
        ],
    )


def list_users(session: Session) -> list[UserOut]:
    """Every user, revoked ones too, by name (two queries, whatever their number)."""
    tokens: dict[str, list[ApiToken]] = {}
    for token in session.scalars(select(ApiToken).order_by(ApiToken.id)):
        tokens.setdefault(token.user, []).append(token)
    users = session.scalars(select(User).order_by(User.name))
    return [user_out(session, u, tokens.get(u.name, [])) for u in users]


def _set_quotas(user: User, quotas: Quotas) -> None:
    for name, value in quotas.model_dump().items():
        setattr(user, name, value)


def create_user(session: Session, body: UserIn) -> tuple[User, TokenCreated]:
    """A new user with their first token (``FIRST_TOKEN``); 409 for a name taken, by a
    revoked user too."""
    existing = session.get(User, body.name)
    if existing is not None:
        raise Conflict(_taken(existing))
    user = User(name=body.name, role=body.role)
    _set_quotas(user, body.quotas)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # made at the same moment by another request
        raise Conflict(f"user {body.name} exists") from None
    return user, add_token(session, body.name, FIRST_TOKEN)


def _taken(user: User) -> str:
    if user.revoked_at is None:
        return f"user {user.name} exists"
    return (
        f"user {user.name} was revoked on {user.revoked_at:%Y-%m-%d}: a name is never given "
        "again (their jobs and uploads keep it as their owner); pick another"
    )


def _active(session: Session, name: str) -> User:
    user = get_user(session, name)
    if user.revoked_at is not None:
        raise Conflict(f"user {name} is revoked")
    return user


def next_token_name(session: Session, name: str) -> str:
    """``token-<n>`` for the user ``name``'s next token: the first n from their token count
    plus one that none of theirs is named."""
    taken = {token.name for token in tokens_of(session, name)}
    n = len(taken) + 1
    while f"token-{n}" in taken:
        n += 1
    return f"token-{n}"


def add_token(session: Session, name: str, token_name: str) -> TokenCreated:
    """A new token ``token_name`` of the user ``name`` (the only time it is shown)."""
    _active(session, name)
    taken = session.scalar(
        select(ApiToken.id).where(ApiToken.user == name, ApiToken.name == token_name)
    )
    if taken is not None:
        raise Conflict(f"user {name} has a token named {token_name} already: pick another name")
    token = new_token()
    session.add(ApiToken(user=name, name=token_name, sha256=token_digest(token)))
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"user {name} has a token named {token_name} already") from None
    return TokenCreated(user=name, name=token_name, token=token)


def update_user(session: Session, name: str, patch: UserPatch) -> tuple[User, str | None]:
    """Change a user's role and/or replace their quota overrides; the user, and what changed
    (``role member -> viewer; max_queued_jobs default -> 5``; None: nothing) for the audit log.
    A revoked user's quotas still change (their queued jobs wait on them); their role does not."""
    user = get_user(session, name)
    if user.revoked_at is not None and patch.role is not None:
        raise Conflict(
            f"user {name} is revoked: their role cannot change (their quotas can, for the "
            "jobs of theirs still queued)"
        )
    changes = []
    if patch.role is not None and patch.role != user.role:
        if name == BOOTSTRAP_USER:
            raise Conflict(
                f"{BOOTSTRAP_USER} is the user of the service's own token: it stays an admin"
            )
        changes.append(f"role {user.role} -> {patch.role}")
        user.role = patch.role
    if patch.quotas is not None:
        for quota, value in patch.quotas.model_dump().items():
            if getattr(user, quota) != value:
                changes.append(f"{quota} {_limit(getattr(user, quota))} -> {_limit(value)}")
        _set_quotas(user, patch.quotas)
    return user, "; ".join(changes) or None


def _limit(value: int | None) -> str:
    return "default" if value is None else str(value)


def revoke_user(session: Session, name: str) -> User:
    """Revoke the user and every token of theirs (again: nothing changes)."""
    if name == BOOTSTRAP_USER:
        raise Conflict(
            f"{BOOTSTRAP_USER} is the user of the service's own token and cannot be revoked "
            "(change SYNCBN_API_TOKEN to replace that token)"
        )
    user = get_user(session, name)
    now = utcnow()
    if user.revoked_at is None:
        user.revoked_at = now
    session.execute(
        update(ApiToken)
        .where(ApiToken.user == name, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return user


def revoke_token(session: Session, name: str, token_name: str) -> ApiToken:
    """Revoke the user's token ``token_name`` (again: nothing changes)."""
    get_user(session, name)
    token = session.scalar(
        select(ApiToken).where(ApiToken.user == name, ApiToken.name == token_name)
    )
    if token is None:
        raise NotFound("token", f"{token_name} of user {name}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token


def caller_of_token(session: Session, digest: str) -> Caller | None:
    """The user of the token with SHA-256 ``digest``, when neither is revoked."""
    row = session.execute(
        select(User.name, User.role)
        .join(ApiToken, ApiToken.user == User.name)
        .where(
            ApiToken.sha256 == digest,
            ApiToken.revoked_at.is_(None),
            User.revoked_at.is_(None),
        )
    ).first()
    return Caller(row.name, row.role) if row is not None else None


def proxy_caller(session: Session, name: str, role: Role) -> Caller | None:
    """The user a trusted proxy names, made with ``role`` when first seen (and the audit log
    says so, with the new user as actor); None: revoked."""
    user = session.get(User, name)
    if user is None:
        user = User(name=name, role=role)
        session.add(user)
        session.flush()
        made = f"first signed in through the trusted proxy: made a {role}"
        session.add(Entry(name, PROXY_CREATE, "user", name, 201, made).row())
    return Caller(user.name, user.role) if user.revoked_at is None else None  # type: ignore[arg-type]


def touch_tokens(session: Session, used: dict[str, datetime]) -> None:
    """Record when each token (by digest) was last used."""
    for digest, at in used.items():
        session.execute(update(ApiToken).where(ApiToken.sha256 == digest).values(last_used_at=at))
