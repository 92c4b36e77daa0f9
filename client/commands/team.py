"""A team: ``users add|list|revoke|set``, ``tokens add|revoke`` (an admin's), ``whoami`` and
``audit`` (the audit log, an admin's)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, get_args

from rich.console import Console

from client.commands.base import (
    EXIT_OK,
    Command,
    call_and_show,
    group,
    no_arguments,
    plain,
    positional,
    printed_json,
)
from client.render_team import audit_table, show_me, show_user, users_table
from client.sdk import Client
from contract.team import Quotas, Role

ROLES = get_args(Role)
DEFAULT = "default"


def quota(text: str) -> int | None:
    """A quota flag's value: a count (bytes for the ``*-bytes`` ones), or ``default`` (the
    service's setting: None)."""
    if text == DEFAULT:
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number or 'default'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a quota is 0 or more")
    return value


def user_arguments(parser: argparse.ArgumentParser, role_default: str | None) -> None:
    """A user's name, ``--role`` and one flag per quota (absent from ``args`` unless given)."""
    parser.add_argument("name", metavar="NAME", help="the user's name, lower case, like alice")
    shown = f" (default: {role_default})" if role_default else ""
    parser.add_argument("--role", choices=ROLES, default=role_default, help=f"their role{shown}")
    for name, field in Quotas.model_fields.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=quota,
            default=argparse.SUPPRESS,
            metavar="N",
            help=f"{field.description} ('default': the service's setting)",
        )


def given_quotas(args: argparse.Namespace) -> dict[str, int | None]:
    """The quota flags given on the command line."""
    return {name: getattr(args, name) for name in Quotas.model_fields if hasattr(args, name)}


def show_token(console: Console, created: dict[str, Any]) -> None:
    """A new token (``TokenCreated``), on a line of its own (never wrapped): it is shown this
    once."""
    user, name = created["user"], created["name"]
    console.print(
        f"token for {user} (shown once): {created['token']}", markup=False, soft_wrap=True
    )
    console.print(
        f"  its name: {name} (syncbn tokens revoke {user} {name}); use it with --token or "
        "$SYNCBN_API_TOKEN",
        markup=False,
    )


def add_user(args: argparse.Namespace, client: Client, console: Console) -> int:
    out = client.add_user(args.name, role=args.role, quotas=given_quotas(args))
    if not printed_json(args, out):
        show_user(console, plain(out.user))
        show_token(console, plain(out.token))
    return EXIT_OK


def set_user(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Change the role and/or the quotas given; the user's other overrides stay."""
    quotas: dict[str, Any] | None = given_quotas(args)
    if args.role is None and not quotas:
        raise ValueError("nothing to change: give --role or a quota flag (syncbn users set -h)")
    if quotas:
        quotas = {**client.user(args.name).quotas.model_dump(), **quotas}
    out = client.update_user(args.name, role=args.role, quotas=quotas or None)
    if not printed_json(args, out):
        show_user(console, plain(out))
    return EXIT_OK


def show_revoked(console: Console, out: dict[str, Any]) -> None:
    """A revoked user (``UserOut``) or token (``TokenOut``)."""
    if "role" in out:
        what = f"user {out['name']} and all their tokens; what they made stays theirs"
    else:
        what = f"token {out['name']}; refused from its next request on"
    console.print(f"revoked {what}", markup=False)


def token_arguments(named: bool) -> Callable[[argparse.ArgumentParser], None]:
    """A token's user and name: positional (``named``), else ``--name`` (unset: the service
    names it ``token-<n>``)."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("user", metavar="USER", help="whose token")
        if named:
            parser.add_argument("name", metavar="NAME", help="the token's name (users list)")
        else:
            parser.add_argument(
                "--name", help="the token's name, unique per user (default: token-<n>)"
            )

    return add_arguments


AUDIT_FILTERS = ("limit", "offset", "actor", "action", "object_id", "status", "since")
"""``Client.audit``'s parameters, as the ``audit`` command's arguments."""


def audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=50, help="at most this many, newest first")
    parser.add_argument("--offset", type=int, default=0, help="skip this many newest first")
    parser.add_argument("--actor", help="only this user's")
    parser.add_argument("--action", help="only this action, like jobs-submit or users-create")
    parser.add_argument("--object", dest="object_id", help="only about this id (a job's ...)")
    parser.add_argument("--status", type=int, help="only answers with this HTTP status")
    parser.add_argument("--since", help="only from then on (ISO 8601; no zone: UTC)")


def show_audit(console: Console, out: dict[str, Any]) -> None:
    console.print(audit_table(out["entries"]))
    console.print(f"{len(out['entries'])} of {out['total']} entries")


USERS = {
    "add": Command(
        "add a user; prints their first token, once",
        lambda parser: user_arguments(parser, "member"),
        add_user,
    ),
    "list": Command(
        "every user, their role, quota overrides and tokens' names",
        no_arguments,
        call_and_show(
            lambda client, _: client.users(), lambda c, out: c.print(users_table(out["users"]))
        ),
    ),
    "set": Command(
        "change a user's role or quotas (the quotas not given stay)",
        lambda parser: user_arguments(parser, None),
        set_user,
    ),
    "revoke": Command(
        "revoke a user and all their tokens",
        positional("name", metavar="NAME", help="the user's name"),
        call_and_show(lambda client, args: client.revoke_user(args.name), show_revoked),
    ),
}
TOKENS = {
    "add": Command(
        "add a named token to a user; prints it, once (to rotate: add, switch, revoke the old)",
        token_arguments(named=False),
        call_and_show(lambda client, args: client.add_token(args.user, args.name), show_token),
    ),
    "revoke": Command(
        "revoke one of a user's tokens",
        token_arguments(named=True),
        call_and_show(lambda client, args: client.revoke_token(args.user, args.name), show_revoked),
    ),
}
COMMANDS = {
    "users": group("manage users (admin): add, list, set, revoke", USERS),
    "tokens": group("a user's API tokens (admin): add, revoke", TOKENS),
    "whoami": Command(
        "who the token signs in: role, quotas in force and use",
        no_arguments,
        call_and_show(lambda client, _: client.me(), show_me),
    ),
    "audit": Command(
        "the audit log, newest first (admin)",
        audit_arguments,
        call_and_show(
            lambda client, args: client.audit(**{k: getattr(args, k) for k in AUDIT_FILTERS}),
            show_audit,
        ),
    ),
}
