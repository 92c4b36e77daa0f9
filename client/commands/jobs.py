"""Jobs: ``submit``, ``list``, ``show``, ``watch``, ``cancel``, ``logs``, and ``delete`` (of a
job, a study, a dataset or a code bundle)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape

from client.commands.base import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    ID_HELP,
    Command,
    call_and_show,
    owner_arguments,
    plain,
    positional,
    printed_json,
)
from client.events import EndEvent, JobEvent, StateEvent
from client.render import STATE_STYLE, ProgressView, jobs_table, show_job, state_text, worker_table
from client.sdk import Client
from client.spec_args import add_spec_arguments, spec_from_args
from contract.protocol import ExceptionEvent, ReportEvent
from contract.states import JobState

DELETE = {
    "job": Client.delete_job,
    "study": Client.delete_study,
    "dataset": Client.delete_dataset,
    "code": Client.delete_code,
}
"""``syncbn delete KIND ID``: the SDK's method for each kind."""


def watch_job(client: Client, console: Console, job_id: str) -> int:
    """Follow a job live: progress bar and per-worker table; exit status from its end state."""
    job = client.job(job_id)
    view = ProgressView(console, job.spec, job.progress.steps_per_epoch)
    latest: list[dict[str, Any]] = []
    state = job.state

    class Screen:
        def __rich__(self) -> Group:
            parts: list[Any] = [f"job {job_id}: {state_text(state)}", view.progress]
            if latest:
                parts.append(worker_table(latest, job.spec.norm))
            return Group(*parts)

    def show(event: JobEvent) -> None:
        nonlocal state, latest
        if isinstance(event, StateEvent | EndEvent):
            state = event.state
        elif isinstance(event, ReportEvent | ExceptionEvent):
            data = event.model_dump(mode="json")
            if isinstance(event, ReportEvent):
                latest = data["workers"] or latest
            view.handle(data)

    with Live(Screen(), console=console, refresh_per_second=4):
        job = client.wait(job_id, on_event=show)
    if not console.is_terminal:  # Live's last frame ends without a newline there
        console.line()
    show_job(console, plain(job))
    return EXIT_OK if job.state == JobState.SUCCEEDED else EXIT_JOB_FAILED


def submit_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, "JobSpec JSON file")
    parser.add_argument("--watch", action="store_true", help="then watch it")


def submit(args: argparse.Namespace, client: Client, console: Console) -> int:
    job = client.submit(spec_from_args(args))
    if args.watch and not args.json:
        console.print(f"submitted [bold]{job.id}[/bold]")
        return watch_job(client, console, job.id)
    if not printed_json(args, job):
        show_job(console, plain(job))
    return EXIT_OK


def list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", choices=sorted(STATE_STYLE), help="only jobs in this state")
    parser.add_argument("--limit", type=int, default=50, help="at most this many, newest first")
    owner_arguments(parser, "jobs")


def list_jobs(args: argparse.Namespace, client: Client, console: Console) -> int:
    listing = client.jobs(
        state=args.state or None, limit=args.limit, owner=args.owner, mine=args.mine
    )
    if not printed_json(args, listing):
        console.print(jobs_table(plain(listing)["jobs"]))
        console.print(f"{listing.total} job(s)")
    return EXIT_OK


def watch(args: argparse.Namespace, client: Client, console: Console) -> int:
    return watch_job(client, console, args.job_id)


def logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", help=ID_HELP["job_id"])
    parser.add_argument("--tail", type=int, default=200, help="the last this many lines")


def logs(args: argparse.Namespace, client: Client, console: Console) -> int:
    out = client.logs(args.job_id, tail=args.tail)
    if not printed_json(args, out):
        print(out.logs)
        if out.reason:  # e.g. removed by the retention
            Console(stderr=True).print(f"[dim]{escape(out.reason)}[/dim]")
    return EXIT_OK


def delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(DELETE), help="what to delete")
    parser.add_argument("id", help="its id (a job or study must be over)")


def delete(args: argparse.Namespace, client: Client, console: Console) -> int:
    DELETE[args.kind](client, args.id)
    if not printed_json(args, {"deleted": args.id, "kind": args.kind}):
        console.print(f"deleted {args.kind} [bold]{escape(args.id)}[/bold]")
    return EXIT_OK


COMMANDS = {
    "submit": Command("submit a job (flags override --file)", submit_arguments, submit),
    "list": Command("list jobs", list_arguments, list_jobs),
    "show": Command(
        "one job",
        positional("job_id"),
        call_and_show(lambda client, args: client.job(args.job_id), show_job),
    ),
    "watch": Command("follow a job live", positional("job_id"), watch),
    "cancel": Command(
        "cancel a job",
        positional("job_id"),
        call_and_show(lambda client, args: client.cancel(args.job_id), show_job),
    ),
    "logs": Command("a job's Ray logs", logs_arguments, logs),
    "pin": Command(
        "keep a job's model files and log past the retention (SYNCBN_RETENTION_DAYS)",
        positional("job_id"),
        call_and_show(lambda client, args: client.pin(args.job_id), show_job),
    ),
    "unpin": Command(
        "let the retention remove a job's files when due",
        positional("job_id"),
        call_and_show(lambda client, args: client.unpin(args.job_id), show_job),
    ),
    "delete": Command(
        "delete a job or study that is over, a dataset or a code bundle, with files",
        delete_arguments,
        delete,
    ),
}
