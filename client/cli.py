"""``syncbn``: the command-line client of the service (rich), on the SDK (``client.sdk``).

    syncbn submit --dataset digits --workers 2 --batch-size 8 --epochs 3 [--watch]
    syncbn submit --file job.json
    syncbn list [--state running]      syncbn show ID      syncbn watch ID
    syncbn cancel ID                   syncbn logs ID      syncbn upload data.npz
    syncbn datasets                    syncbn download ID [-o FILE] [--epoch N]
    syncbn predict ID samples.npy [--epoch N]     syncbn predict ID a.png b.jpg ...
    syncbn study --dataset digits --workers 4 --batch-size 2 --seeds 0 1 2 [--watch]
    syncbn studies     syncbn study-show ID     syncbn study-watch ID     syncbn study-cancel ID
    syncbn delete job|study|dataset|code ID
    syncbn whoami      syncbn list --mine      syncbn studies --mine      syncbn audit [--actor A]
    syncbn users add NAME [--role member] [--max-queued-jobs N ...]   (prints the token once)
    syncbn users list|set NAME ...|revoke NAME      syncbn tokens add USER [--name N]|revoke USER N

``--url`` (``$SYNCBN_URL``, else the URL the service of ``$SYNCBN_HOME`` recorded when it
started, else ``http://127.0.0.1:8000``) and ``--token``
(``$SYNCBN_API_TOKEN``; for a service on this machine, else the token ``make run`` keeps in
``$SYNCBN_HOME/api-token``, ``.syncbn/api-token`` by default) pick the service. ``--json``
(before or after the command) prints raw JSON. Exit status: 0 ok, 1 the job failed or was
cancelled (``watch``), 2 rejected by the service (4xx) or a bad local file, 3 the service is
unreachable or failed (5xx); a busy service (429) is asked again a few times first. A study's
``--watch`` and ``study-watch`` exit 1 unless every job of the study succeeded.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from client.commands import COMMANDS
from client.commands.base import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    add_commands,
)
from client.errors import ApiError, Unreachable
from client.sdk import DEFAULT_URL, Client
from client.spec_args import spec_flags, spec_from_args

__all__ = [
    "DEFAULT_URL",
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_UNAVAILABLE",
    "Client",
    "build_parser",
    "main",
    "parse_args",
    "spec_flags",
    "spec_from_args",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``syncbn`` command line: global options and one subcommand per ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="syncbn",
        description="client of syncbn-service",
        epilog="exit status: 0 ok; 1 the job failed or was cancelled (watch, a study's "
        "--watch); 2 rejected by the service (4xx) or a bad local file; 3 the service is "
        "unreachable or failed (5xx)",
    )
    parser.add_argument(
        "--url",
        help="the service (default: $SYNCBN_URL, else the URL the service of $SYNCBN_HOME "
        f"recorded when it started, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        help="API token (default: $SYNCBN_API_TOKEN, else for a service on this machine the "
        "one in $SYNCBN_HOME/api-token)",
    )
    parser.add_argument("--json", action="store_true", help="print raw JSON")
    add_commands(parser, COMMANDS, "command")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=args.json)
    client = Client(args.url, args.token)  # the SDK picks the defaults
    try:
        return COMMANDS[args.command].run(args, client, console)
    except ApiError as exc:
        console.print(str(exc), markup=False, style="red")
        return EXIT_REJECTED if exc.status < 500 else EXIT_UNAVAILABLE
    except Unreachable as exc:
        console.print(f"cannot reach the service at {exc.url}: {exc}", markup=False, style="red")
        return EXIT_UNAVAILABLE
    except (OSError, ValueError) as exc:  # a local file: missing, unreadable, not JSON
        console.print(str(exc), markup=False, style="red")
        return EXIT_REJECTED


if __name__ == "__main__":
    sys.exit(main())
