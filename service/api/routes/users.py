"""``/v1/users``: an admin adds users and their tokens, changes roles and quotas, revokes;
``/v1/me``: who am I, my quotas in force and what I use."""

from __future__ import annotations

from fastapi import Request, Response, status

from contract.api import ErrorOut
from contract.team import (
    CreatedUser,
    MeOut,
    TokenCreated,
    TokenIn,
    TokenOut,
    UserIn,
    UserList,
    UserOut,
    UserPatch,
)
from service.api.auth import Authenticator, CallerDep
from service.api.deps import ServicesDep, api_router
from service.storage.tables import User
from service.teams import users
from service.teams.audit import AUDIT_DETAIL
from service.teams.caller import require_admin
from service.teams.quotas import quotas_in_force, usage

router = api_router("/v1", "users")
NOT_FOUND = {404: {"model": ErrorOut, "description": "no such user (or token)"}}
CONFLICT = {409: {"model": ErrorOut, "description": "revoked, a name taken, or admin itself"}}


def _forget_callers(request: Request) -> None:
    """Signed-in tokens are cached: after a revoke or a role change, none is trusted until
    read again."""
    authenticator: Authenticator = request.app.state.authenticator
    authenticator.forget()


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=CreatedUser,
    responses={**CONFLICT, 422: {"description": "a bad name, role or quota (the field named)"}},
)
def create_user(
    body: UserIn, caller: CallerDep, services: ServicesDep, response: Response
) -> CreatedUser:
    """Add a user with their first token (``default``), shown here once: only its SHA-256 is
    kept. A name once used, by a revoked user too, is never given again."""
    require_admin(caller)
    with services.db.session() as session:
        user, token = users.create_user(session, body)
        out = CreatedUser(user=users.user_out(session, user), token=token)
    response.headers["Location"] = f"/v1/users/{body.name}"
    return out


@router.get("/users", response_model=UserList)
def list_users(caller: CallerDep, services: ServicesDep) -> UserList:
    """Every user, revoked ones too, with their tokens' names and use (never the tokens)."""
    require_admin(caller, "list users")
    with services.db.session() as session:
        return UserList(users=users.list_users(session))


@router.get("/users/{name}", response_model=UserOut, responses=NOT_FOUND)
def get_user(name: str, caller: CallerDep, services: ServicesDep) -> UserOut:
    """One user."""
    require_admin(caller, "see users")
    with services.db.session() as session:
        return users.user_out(session, users.get_user(session, name))


@router.patch("/users/{name}", response_model=UserOut, responses={**NOT_FOUND, **CONFLICT})
def update_user(
    name: str, patch: UserPatch, caller: CallerDep, services: ServicesDep, request: Request
) -> UserOut:
    """Change a user's role, or replace their quota overrides (null: the default setting)."""
    require_admin(caller)
    with services.db.session() as session:
        user, changes = users.update_user(session, name, patch)
        out = users.user_out(session, user)
    request.scope[AUDIT_DETAIL] = changes or "nothing changed"
    _forget_callers(request)
    return out


@router.delete("/users/{name}", response_model=UserOut, responses={**NOT_FOUND, **CONFLICT})
def revoke_user(name: str, caller: CallerDep, services: ServicesDep, request: Request) -> UserOut:
    """Revoke a user and all their tokens (refused at their next request). Users are never
    deleted: their jobs, studies and uploads keep them as owner."""
    require_admin(caller)
    with services.db.session() as session:
        out = users.user_out(session, users.revoke_user(session, name))
    _forget_callers(request)
    return out


@router.post(
    "/users/{name}/tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    responses={**NOT_FOUND, **CONFLICT},
)
def add_token(
    name: str,
    caller: CallerDep,
    services: ServicesDep,
    response: Response,
    body: TokenIn | None = None,
) -> TokenCreated:
    """Add a named token to a user, shown here once (to rotate: add one, switch to it, revoke
    the old one); without a name, it is named ``token-<n>``, the first n not taken."""
    require_admin(caller)
    with services.db.session() as session:
        token_name = body.name if body and body.name else users.next_token_name(session, name)
        created = users.add_token(session, name, token_name)
    response.headers["Location"] = f"/v1/users/{name}/tokens/{token_name}"
    return created


@router.delete("/users/{name}/tokens/{token}", response_model=TokenOut, responses=NOT_FOUND)
def revoke_token(
    name: str, token: str, caller: CallerDep, services: ServicesDep, request: Request
) -> TokenOut:
    """Revoke one of a user's tokens by its name (refused at its next request)."""
    require_admin(caller)
    with services.db.session() as session:
        out = TokenOut.model_validate(users.revoke_token(session, name, token))
    _forget_callers(request)
    return out


@router.get("/me", response_model=MeOut)
def me(caller: CallerDep, services: ServicesDep) -> MeOut:
    """Who the token (or the proxy) signs in: name, role, quotas in force and use now."""
    with services.db.session() as session:
        user = session.get(User, caller.name)
        return MeOut(
            name=caller.name,
            role=caller.role,
            quotas=quotas_in_force(services.settings, user),
            usage=usage(session, services.settings, caller.name),
        )
