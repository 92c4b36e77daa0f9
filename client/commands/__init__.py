"""The commands of the ``syncbn`` CLI, one module per group: ``jobs``, ``studies``, ``data``
(uploads), ``models`` (trained models), ``team`` (users, tokens, whoami, the audit log) and
``admin`` (an operator's: the disk's usage); ``COMMANDS`` maps each name to its ``Command``."""

from __future__ import annotations

from client.commands import admin, data, jobs, models, studies, team
from client.commands.base import Command

ORDER = (
    *("submit", "study", "studies", "study-show", "study-watch", "study-cancel"),
    *("list", "show", "watch", "cancel", "logs"),
    *("upload", "datasets", "delete", "upload-code", "code", "download", "predict"),
    *("whoami", "users", "tokens", "audit", "admin"),
)
"""The order ``syncbn --help`` lists the commands in (one not named here comes last)."""


def in_order(*groups: dict[str, Command]) -> dict[str, Command]:
    every = {name: command for group in groups for name, command in group.items()}
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(every.items(), key=lambda item: rank.get(item[0], len(ORDER))))


COMMANDS = in_order(
    jobs.COMMANDS, studies.COMMANDS, data.COMMANDS, models.COMMANDS, team.COMMANDS, admin.COMMANDS
)
