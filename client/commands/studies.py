"""Studies: ``study`` (submit one), ``studies``, ``study-show``, ``study-watch``,
``study-cancel``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape

from client.commands.base import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    Command,
    call_and_show,
    owner_arguments,
    plain,
    positional,
    printed_json,
)
from client.render import advice_text, arms_table, show_study, state_text, studies_table
from client.sdk import Client
from client.spec_args import add_spec_arguments, spec_from_args
from contract.api import StudyOut
from contract.spec import ARM_PRESETS, SET_BY_STUDY

STUDY_POLL_S = 1.5
ARMS_HELP = (
    f"presets ({', '.join(ARM_PRESETS)}), sync:K (syncbn within groups of K workers), group:G "
    "(GroupNorm with G groups per layer) or NAME='{JSON JobSpec overrides}'; default: local "
    "sync reference"
)


def watch_study(client: Client, console: Console, study_id: str) -> int:
    """Follow a study: per arm its jobs done, the running jobs' progress and the metric so far;
    then the table and the verdict. Exit status 0 only when every job succeeded."""
    study = plain(client.study(study_id))
    running: dict[str, dict[str, Any]] = {}

    class Screen:
        def __rich__(self) -> Group:
            parts: list[Any] = [f"study {study_id}: {state_text(study['state'])}"]
            parts.append(arms_table(study, running))
            if study["verdict"]:
                parts.append(f"verdict: {escape(study['verdict'])}")
            if study["recommendation"]:
                parts.append(advice_text(study["recommendation"]))
            return Group(*parts)

    def update(polled: StudyOut) -> None:
        nonlocal study, running
        study = plain(polled)
        ids = [j.id for a in polled.arms for j in a.jobs if j.state == "running"]
        running = {i: plain(client.job(i)) for i in ids}
        live.refresh()

    with Live(Screen(), console=console, refresh_per_second=4, transient=True) as live:
        study = plain(client.wait_study(study_id, poll_s=STUDY_POLL_S, on_update=update))
    show_study(console, study)
    return EXIT_OK if study["state"] == "succeeded" else EXIT_JOB_FAILED


def parse_arm(text: str) -> str | dict[str, Any]:
    """One ``--arms`` word as the API's arm: a preset's name, or ``{"name", "overrides"}``."""
    if text in ARM_PRESETS:
        return text
    kind, colon, size = text.partition(":")
    if colon and kind in ("sync", "group") and size.isdigit() and int(size) > 0:
        overrides: dict[str, Any] = {"sync_group_size": int(size)}
        if kind == "group":  # as the group preset, with this many groups
            overrides = {"norm": "group", "group_norm_groups": int(size), "precise_bn_batches": 0}
        return {"name": text, "overrides": overrides}
    name, equals, fields = text.partition("=")
    if equals and name:
        try:
            overrides = json.loads(fields)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(
                f"{text!r}: the overrides are not JSON ({exc})"
            ) from None
        if isinstance(overrides, dict) and overrides:
            return {"name": name, "overrides": overrides}
    raise argparse.ArgumentTypeError(f"{text!r} is not an arm: give {ARMS_HELP}")


def study_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, "base JobSpec JSON file (without norm and seed)", SET_BY_STUDY)
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2")
    parser.add_argument("--arms", nargs="+", type=parse_arm, metavar="ARM", help=ARMS_HELP)
    parser.add_argument("--watch", action="store_true", help="then watch it")


def study(args: argparse.Namespace, client: Client, console: Console) -> int:
    out = client.create_study(spec_from_args(args), seeds=args.seeds, arms=args.arms)
    if args.watch and not args.json:
        console.print(f"study [bold]{out.id}[/bold]")
        return watch_study(client, console, out.id)
    if not printed_json(args, out):
        console.print(
            f"study [bold]{out.id}[/bold]: {len(out.arms)} arm(s) x "
            f"{len(out.seeds)} seed(s) queued; follow it with syncbn study-watch {out.id}"
        )
        for arm, reason in out.skipped.items():
            console.print(f"  skipped {arm}: {reason}", markup=False)
    return EXIT_OK


def studies_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=50, help="at most this many, newest first")
    owner_arguments(parser, "studies")


def studies(args: argparse.Namespace, client: Client, console: Console) -> int:
    out = client.studies(limit=args.limit, owner=args.owner, mine=args.mine)
    if not printed_json(args, out):
        console.print(studies_table(plain(out)["studies"]))
    return EXIT_OK


def study_watch(args: argparse.Namespace, client: Client, console: Console) -> int:
    return watch_study(client, console, args.study_id)


COMMANDS = {
    "study": Command(
        "a study: which normalization for this batch size (arms x seeds), with a recommendation",
        study_arguments,
        study,
    ),
    "studies": Command("list studies", studies_arguments, studies),
    "study-show": Command(
        "one study: its arms and the verdict",
        positional("study_id"),
        call_and_show(lambda client, args: client.study(args.study_id), show_study),
    ),
    "study-watch": Command("follow a study live", positional("study_id"), study_watch),
    "study-cancel": Command(
        "cancel every unfinished job of a study",
        positional("study_id"),
        call_and_show(lambda client, args: client.cancel_study(args.study_id), show_study),
    ),
}
