"""What each role may do to whose objects. Everyone signed in reads everything (it is a team);
an ``admin`` writes everything; a ``member`` creates jobs, studies and uploads, and cancels
or deletes only their own, running jobs on their own data and code or on shared ones (the
built-in datasets, and what an admin uploaded); a ``viewer`` writes nothing. Each refusal is
a ``Forbidden`` (403) that names the owner and the role needed."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.errors import Forbidden
from service.storage.tables import User
from service.teams.caller import Caller


def check_create(caller: Caller, what: str) -> None:
    """``Forbidden`` unless the caller may create ``what`` (a job, a study, an upload)."""
    if caller.role == "viewer":
        raise Forbidden(
            f"a viewer may not {what}: a member or an admin may (you are {caller.described})"
        )


def check_write(caller: Caller, kind: str, ident: str, owner: str) -> None:
    """``Forbidden`` unless the caller may change (cancel, delete) the ``kind`` ``ident`` of
    ``owner``: its owner (not a viewer) or an admin."""
    if caller.is_admin or (caller.role == "member" and owner == caller.name):
        return
    raise Forbidden(
        f"{kind} {ident} belongs to {owner}: only its owner or an admin may change it "
        f"(you are {caller.described})"
    )


def check_use(session: Session, caller: Caller, kind: str, ident: str, owner: str) -> None:
    """``Forbidden`` unless the caller may run a job on the ``kind`` ``ident`` of ``owner``:
    their own, or an admin's (shared with the team); an admin may use anything."""
    if caller.is_admin or owner == caller.name:
        return
    uploader = session.get(User, owner)
    if uploader is not None and uploader.role == "admin":
        return
    raise Forbidden(
        f"{kind} {ident} belongs to {owner}: a member runs jobs on their own uploads or on "
        f"an admin's (shared) ones: ask an admin to upload it (you are {caller.described})"
    )
