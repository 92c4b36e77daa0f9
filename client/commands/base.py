"""A command of the ``syncbn`` CLI: its help, its arguments and one function that sends its
requests and prints the outcome (``--json``: the raw JSON of the response instead)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from client.http import Client

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


def printed_json(args: argparse.Namespace, out: Any) -> bool:
    """With ``--json``, print ``out`` as JSON (and nothing else is printed); whether it did."""
    if args.json:
        print(json.dumps(out, indent=2))
    return args.json


ID_HELP = {
    "job_id": "the job's id, like j-3f9c0e1a2b4d (syncbn list)",
    "study_id": "the study's id, like s-40d6e2ed718d (syncbn studies)",
}
"""The help of the positional ids every command shares."""


def positional(name: str, **options: Any) -> Callable[[argparse.ArgumentParser], None]:
    """``add_arguments`` for a command with one positional argument, e.g. ``job_id``."""
    options.setdefault("help", ID_HELP.get(name))

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(name, **options)

    return add_arguments


def request_and_show(
    method: str, path: str, show: Callable[[Console, dict[str, Any]], None]
) -> Run:
    """A command that sends ``method path`` (``path`` formatted with the arguments, e.g.
    ``/v1/jobs/{job_id}``) and shows the answer with ``show(console, answer)``."""

    def run(args: argparse.Namespace, client: Client, console: Console) -> int:
        out = client.request(method, path.format(**vars(args)))
        if not printed_json(args, out):
            show(console, out)
        return EXIT_OK

    return run
