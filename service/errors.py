"""What the service's domain refuses, without HTTP: ``service.api.errors`` answers each kind
(422 naming the field, 403, 404, 409, 413, 429, 507). The domain (jobs, studies, files) raises
these; only ``service.api`` speaks HTTP."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses; the message says why."""


class FieldError(ServiceError):
    """A request field that cannot be used (422 naming ``field``, a dotted path such as
    ``arms.3.overrides.lr``); ``setting``: the limit's ``Settings`` field, when it is one."""

    def __init__(self, field: str, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.field, self.setting = field, setting


class NotFound(ServiceError):
    """No such thing (404)."""

    def __init__(self, what: str, ident: object) -> None:
        super().__init__(f"{what} {ident} not found")


class Forbidden(ServiceError):
    """The caller's role does not allow it (403): the message names the owner and the role
    needed."""


class Conflict(ServiceError):
    """Not in this state (409): the message says what would allow it."""


class TooLarge(ServiceError):
    """An upload over its byte limit (413); ``setting`` names the limit."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class QueueFull(ServiceError):
    """No room for more work now (429)."""


class QuotaExceeded(QueueFull):
    """Past one of the user's quotas (429): the message names the quota and the use."""


class InsufficientStorage(ServiceError):
    """No room on the disk of ``$SYNCBN_HOME`` for a new upload, job or study (507): the
    budget (``setting``) is used up or the file system is full; the message names the setting
    and the bytes used."""

    def __init__(self, message: str, setting: str = "disk_budget_bytes") -> None:
        super().__init__(message)
        self.setting = setting


class ClusterUnavailable(ServiceError):
    """The Ray cluster could not do what a request needs now (503): the message says what and
    why."""
