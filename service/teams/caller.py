"""Who is asking: the signed-in user and their role, settled once per request."""

from __future__ import annotations

from dataclasses import dataclass

from contract.api import Role
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


BOOTSTRAP = Caller(BOOTSTRAP_USER, "admin")
"""The caller of the service's own token (``SYNCBN_API_TOKEN`` / ``$SYNCBN_HOME/api-token``)."""
