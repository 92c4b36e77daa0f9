"""A command of the ``syncbn`` CLI: its help, its arguments and one function that calls the
SDK and prints the outcome (``--json``: the JSON of the response instead)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from client.sdk import Client

EXIT_OK, EXIT_JOB_FAILED, EXIT_REJECTED, EXIT_UNAVAILABLE = 0, 1, 2, 3

Run = Callable[[argparse.Namespace, Client, Console], int]
"""``run(args, client, console)``: do the command, print its outcome; the exit status."""


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """For a command without arguments (but ``--json``)."""


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Run


def json_flag(parser: argparse.ArgumentParser) -> None:
    """``--json`` after a command too; SUPPRESS: absent there, so one before it counts."""
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print raw JSON"
    )


def usage(parser: argparse.ArgumentParser, prefix: str) -> str:
    """``parser``'s usage without ``prefix``, ``-h`` and ``--json``, e.g.
    ``"add [--name NAME] USER"``."""
    text = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    return text.removeprefix(prefix).replace("[-h] ", "").replace(" [--json]", "")


def add_commands(
    parser: argparse.ArgumentParser, commands: dict[str, Command], dest: str, nested: bool = False
) -> None:
    """One subcommand of ``parser`` per ``commands`` (each with ``--json``); the name chosen
    goes to ``args.<dest>``. ``nested``: the subcommands' usages are the choice's help."""
    sub = parser.add_subparsers(dest=dest, required=True)
    for name, command in commands.items():
        options = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(options)
        json_flag(options)
    if nested:
        sub.help = "; ".join(usage(p, parser.prog + " ") for p in sub.choices.values())


def group(help: str, commands: dict[str, Command]) -> Command:
    """A command of subcommands, like ``syncbn users add NAME``: ``commands`` maps each
    subcommand's name to its ``Command``."""
    dest = "subcommand"

    def run(args: argparse.Namespace, client: Client, console: Console) -> int:
        return commands[getattr(args, dest)].run(args, client, console)

    return Command(help, lambda parser: add_commands(parser, commands, dest, nested=True), run)


def plain(out: Any) -> Any:
    """An SDK answer as the JSON the service sent: a model's fields that came in it (none
    added with a default), as JSON types; anything else as it is."""
    if isinstance(out, BaseModel):
        return out.model_dump(mode="json", exclude_unset=True)
    return out


def printed_json(args: argparse.Namespace, out: Any) -> bool:
    """With ``--json``, print ``out`` (a dict or an SDK answer) as JSON (and nothing else is
    printed); whether it did."""
    if args.json:
        print(json.dumps(plain(out), indent=2))
    return args.json


ID_HELP = {
    "job_id": "the job's id, like j-3f9c0e1a2b4d (syncbn list)",
    "study_id": "the study's id, like s-40d6e2ed718d (syncbn studies)",
}
"""The help of the positional ids every command shares."""


def owner_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--mine`` or ``--owner NAME``: a list of only those ``what`` (jobs, studies)."""
    mine = parser.add_mutually_exclusive_group()
    mine.add_argument("--mine", action="store_true", help=f"only my {what} (syncbn whoami)")
    mine.add_argument("--owner", help=f"only the {what} of this user")


def positional(name: str, **options: Any) -> Callable[[argparse.ArgumentParser], None]:
    """``add_arguments`` for a command with one positional argument, e.g. ``job_id``."""
    options.setdefault("help", ID_HELP.get(name))

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(name, **options)

    return add_arguments


def call_and_show(
    call: Callable[[Client, argparse.Namespace], BaseModel],
    show: Callable[[Console, dict[str, Any]], None],
) -> Run:
    """A command that calls the SDK, ``call(client, args)`` (e.g. ``client.job(args.job_id)``),
    and shows the answer with ``show(console, answer as JSON)``."""

    def run(args: argparse.Namespace, client: Client, console: Console) -> int:
        out = call(client, args)
        if not printed_json(args, out):
            show(console, plain(out))
        return EXIT_OK

    return run
