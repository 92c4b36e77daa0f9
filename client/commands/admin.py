"""An operator's commands (an admin's): ``admin usage``, what ``$SYNCBN_HOME`` holds by kind
and by owner, against the disk budget and the free space."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from client.commands.base import Command, call_and_show, group
from client.render import bytes_text

STATE_STYLE = {"ok": "green", "warning": "yellow", "full": "bold red"}


def usage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="walk the home now (default: the service's last measure, at most "
        "SYNCBN_DISK_CHECK_INTERVAL_S old)",
    )


def share_text(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def kinds_table(usage: dict[str, Any]) -> Table:
    table = Table(title="by kind")
    for column in ("kind", "bytes", "share"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind, size in usage["by_kind"].items():
        table.add_row(kind, bytes_text(size), share_text(size, usage["used_bytes"]))
    return table


def owners_table(owners: list[dict[str, Any]], unowned: int) -> Table:
    table = Table(title="by owner")
    columns = ("owner", "datasets", "code", "runs", "logs", "total", "upload quota", "model quota")
    for column in columns:
        table.add_column(column, justify="left" if column == "owner" else "right")
    for owner in owners:
        sizes = (owner[f"{k}_bytes"] for k in ("datasets", "code", "runs", "logs", "total"))
        quotas = (owner.get("max_upload_bytes"), owner.get("max_model_bytes"))
        table.add_row(
            owner["owner"],
            *(bytes_text(size) for size in sizes),
            *("no limit" if q is None else bytes_text(q) for q in quotas),
        )
    if unowned:
        table.add_row("(no owner)", "", "", "", "", bytes_text(unowned), "", "")
    return table


def show_usage(console: Console, usage: dict[str, Any]) -> None:
    budget = usage.get("budget_bytes")
    limit = bytes_text(budget) if budget is not None else "unset (the file system's free space)"
    console.print(f"$SYNCBN_HOME {usage['home']}", markup=False)
    console.print(
        f"  uses {bytes_text(usage['used_bytes'])} of {bytes_text(usage['limit_bytes'])}; "
        f"budget (SYNCBN_DISK_BUDGET_BYTES): {limit}; free on the file system: "
        f"{bytes_text(usage['free_bytes'])} of {bytes_text(usage['filesystem_bytes'])}",
        markup=False,
    )
    style = STATE_STYLE.get(usage["state"], "")
    console.print(f"  [{style}]{usage['state']}[/]", end="")
    console.print(f": {usage['detail'].removeprefix(usage['state'] + ': ')}", markup=False)
    if not usage.get("complete", True):
        console.print("  (the walk stopped at its bound of entries: at least these figures)")
    console.print(kinds_table(usage))
    console.print(owners_table(usage["by_owner"], usage.get("unowned_bytes", 0)))
    console.print(f"measured at {usage['measured_at']}", markup=False)


USAGE = {
    "usage": Command(
        "what $SYNCBN_HOME holds by kind and by owner, against the disk budget (admin)",
        usage_arguments,
        call_and_show(lambda client, args: client.admin_usage(refresh=args.refresh), show_usage),
    ),
}
COMMANDS = {"admin": group("an operator's view (admin): usage", USAGE)}
