"""Who is asking: the signed-in user and their role, settled once per request."""

from __future__ import annotations

from dataclasses import dataclass

from contract.team import Role
from service.errors import Forbidden
from service.storage.tables import BOOTSTRAP_USER

CALLER = "syncbn.caller"
"""The ASGI scope key under which the middleware leaves the request's ``Caller``."""


@dataclass(frozen=True)
class Caller:
    """The user a request acts for."""

    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def described(self) -> str:
        """Like ``alice, a member``: what a refusal tells the caller about themselves."""
        article = "an" if self.role[0] in "aeiou" else "a"
        return f"{self.name}, {article} {self.role}"


BOOTSTRAP = Caller(BOOTSTRAP_USER, "admin")
"""The caller of the service's own token (``SYNCBN_API_TOKEN`` / ``$SYNCBN_HOME/api-token``)."""


def require_admin(caller: Caller, what: str = "manage users") -> None:
    """``Forbidden`` (403) unless the caller is an admin: "only an admin may manage users (you
    are alice, a member)"."""
    if not caller.is_admin:
        raise Forbidden(f"only an admin may {what} (you are {caller.described})")
