"""What the team commands print (``syncbn users``, ``tokens``, ``whoami``, ``audit``): users,
their quotas and use, tokens, the audit log (jobs and studies: ``client.render``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from client.render import created_text, size_text

QUOTA_USE = {
    "max_running_workers": ("running workers", "running_workers"),
    "max_queued_jobs": ("queued jobs", "queued_jobs"),
    "max_upload_bytes": ("uploads (datasets, code)", "upload_bytes"),
    "max_model_bytes": ("trained model files", "model_bytes"),
}
"""Each quota (``Quotas``): what it limits, and its field in ``Usage``."""


def quota_text(name: str, value: int | None, unset: str) -> str:
    """A quota's value (bytes as ``size_text``), or ``unset`` when null."""
    if value is None:
        return unset
    return size_text(value) if name.endswith("_bytes") else str(value)


def quotas_text(quotas: dict[str, int | None]) -> str:
    """A user's overrides: ``"max_queued_jobs 5, max_upload_bytes 1.0 MB"``, or ``defaults``."""
    overrides = [f"{k} {quota_text(k, v, '')}" for k, v in quotas.items() if v is not None]
    return ", ".join(overrides) or "defaults"


def show_me(console: Console, me: dict[str, Any]) -> None:
    """``syncbn whoami``: the name and role, then per quota the limit in force and the use."""
    console.print(f"[bold]{escape(me['name'])}[/bold] ({me['role']})")
    table = Table(title="quotas in force")
    table.add_column("quota", no_wrap=True)
    for column in ("limit", "in use"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, (label, used) in QUOTA_USE.items():
        limit = me["quotas"].get(name)
        table.add_row(
            f"{label} ({name})",
            quota_text(name, limit, "no limit"),
            quota_text(name, me["usage"][used], "-"),
        )
    console.print(table)


def tokens_text(tokens: list[dict[str, Any]]) -> str:
    """A user's tokens by name: ``"laptop, default (revoked)"``."""
    names = [t["name"] + (" (revoked)" if t.get("revoked_at") else "") for t in tokens]
    return escape(", ".join(names) or "-")


def users_table(users: list[dict[str, Any]]) -> Table:
    """One row per user: role, quota overrides, tokens (never the tokens themselves)."""
    table = Table(title="users")
    for column in ("name", "role", "created", "revoked"):
        table.add_column(column, no_wrap=True)
    table.add_column("quotas")
    table.add_column("tokens")
    for user in users:
        revoked = user.get("revoked_at")
        table.add_row(
            escape(user["name"]),
            user["role"],
            created_text(user),
            revoked[:19].replace("T", " ") if revoked else "-",
            escape(quotas_text(user["quotas"])),
            tokens_text(user.get("tokens", [])),
        )
    return table


def show_user(console: Console, user: dict[str, Any]) -> None:
    """One user as a line: name, role, quota overrides and tokens."""
    revoked = " [red]revoked[/red]" if user.get("revoked_at") else ""
    console.print(
        f"user [bold]{escape(user['name'])}[/bold] ({user['role']}){revoked}  quotas: "
        f"{escape(quotas_text(user['quotas']))}  tokens: {tokens_text(user.get('tokens', []))}"
    )


def audit_table(entries: list[dict[str, Any]]) -> Table:
    """The audit log, newest first: when, who, what, which object, the status and detail."""
    table = Table(title="audit log (newest first)")
    for column in ("at", "actor", "action", "object", "status"):
        table.add_column(column, no_wrap=True)
    table.add_column("detail")
    for entry in entries:
        kind, ident = entry.get("object_kind"), entry.get("object_id")
        target = " ".join(x for x in (kind, ident) if x) or "-"
        status = entry["status"]
        style = "green" if status < 400 else "red"
        detail = entry.get("detail") or ""
        if entry.get("count", 1) > 1:
            detail = f"x{entry['count']} {detail}".strip()
        table.add_row(
            entry["at"][:19].replace("T", " "),
            escape(entry.get("actor") or "-"),
            escape(entry["action"]),
            escape(target),
            f"[{style}]{status}[/]",
            escape(detail or "-"),
        )
    return table
