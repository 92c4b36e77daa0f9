"""``syncbn``: the command-line client of the service (httpx + rich).

    syncbn submit --dataset digits --workers 2 --batch-size 8 --epochs 3 [--watch]
    syncbn submit --file job.json
    syncbn list [--state running]      syncbn show ID      syncbn watch ID
    syncbn cancel ID                   syncbn logs ID      syncbn upload data.npz
    syncbn datasets

``--url`` (``$SYNCBN_URL``, default ``http://127.0.0.1:8000``) and ``--token``
(``$SYNCBN_API_TOKEN``) pick the service. ``--json`` prints raw JSON. Exit status: 0 ok,
1 the job failed or was cancelled (``watch``), 2 rejected by the service (4xx), 3 the service
is unreachable or failed (5xx).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from service.states import JobState
from workers.cli import ProgressView, worker_table
from workers.spec import JobSpec

EXIT_OK, EXIT_JOB_FAILED, EXIT_REJECTED, EXIT_UNAVAILABLE = 0, 1, 2, 3
STATE_STYLE = {
    JobState.QUEUED: "yellow",
    JobState.PENDING: "cyan",
    JobState.RUNNING: "blue",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.CANCELLED: "magenta",
}
FLAG_NAMES = {"batch_size_per_worker": "--batch-size"}
"""Shorter flags for a few JobSpec fields (every other field ``f`` is ``--f`` with dashes)."""


def spec_flags() -> dict[str, dict[str, Any]]:
    """``argparse`` arguments for every ``JobSpec`` field, derived from the model: a field
    added to ``JobSpec`` is a ``submit`` flag without editing this file."""
    flags: dict[str, dict[str, Any]] = {}
    for name, field in JobSpec.model_fields.items():
        kinds = [a for a in get_args(field.annotation) if a is not type(None)]
        annotation = kinds[0] if get_origin(field.annotation) in (Union, UnionType) else None
        annotation = annotation or field.annotation
        options: dict[str, Any] = {"dest": name, "default": None}
        if annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif get_origin(annotation) is Literal:
            options["choices"] = list(get_args(annotation))
        else:
            options["type"] = annotation
        default = "" if field.is_required() else f" (default: {field.default})"
        options["help"] = f"{field.description or name}{default}".replace("%", "%%")
        flags[FLAG_NAMES.get(name, "--" + name.replace("_", "-"))] = options
    return flags


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def describe_error(response: httpx.Response) -> str:
    """The service's error as text: one ``field: message`` line per validation problem."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}: {response.text[:500]}"
    if isinstance(detail, list):
        lines = []
        for error in detail:
            loc = [str(p) for p in error.get("loc", []) if p != "body"]
            lines.append(f"  {'.'.join(loc) or '(body)'}: {error.get('msg')}")
        return f"HTTP {response.status_code}:\n" + "\n".join(lines)
    return f"HTTP {response.status_code}: {detail}"


class Client:
    """A thin httpx client for the REST API."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response.status_code, describe_error(response))
        return response.json()

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(event, data)`` from the job's Server-Sent Events stream until it ends."""
        timeout = httpx.Timeout(30.0, read=None)
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, describe_error(response))
            kind, data = "message", []
            for line in response.iter_lines():
                if line == "":
                    if data:
                        yield kind, json.loads("\n".join(data))
                    kind, data = "message", []
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())


def state_text(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(title="jobs")
    columns = ("id", "state", "dataset", "model", "workers x batch", "norm", "progress", "test")
    for column in columns:
        table.add_column(column, no_wrap=True)
    table.add_column("created", no_wrap=True)
    for job in jobs:
        spec = job["spec"]
        table.add_row(
            job["id"],
            state_text(job["state"]),
            spec["dataset"],
            spec["model"],
            f"{spec['workers']} x {spec['batch_size_per_worker']}",
            spec["norm"],
            f"{100 * job['progress']['fraction']:.0f}%",
            metric_text(job.get("result")) or "-",
            job["created_at"][:19].replace("T", " "),
        )
    return table


def metric_text(result: dict[str, Any] | None) -> str | None:
    """The test metric of a result: mIoU and pixel accuracy for segmentation, else accuracy."""
    if not result or result.get("test_accuracy") is None:
        return None
    if result.get("test_miou") is not None:
        return f"mIoU {result['test_miou']:.4f}, pixel acc {result['test_accuracy']:.4f}"
    return f"acc {result['test_accuracy']:.4f}"


def show_job(console: Console, job: dict[str, Any]) -> None:
    spec, progress = job["spec"], job["progress"]
    console.print(f"job [bold]{job['id']}[/bold]  {state_text(job['state'])}")
    if job.get("reason"):
        console.print(f"  reason: {job['reason']}", markup=False)
    code = f" from {spec['code']}" if spec.get("code") else ""
    console.print(
        f"  {spec['dataset']}, model {spec['model']}{code}: {spec['workers']} workers x "
        f"{spec['batch_size_per_worker']} per worker, norm={spec['norm']}, {spec['epochs']} epochs",
        markup=False,
    )
    console.print(
        f"  progress: epoch {progress['epoch']}/{progress['epochs']}, step {progress['step']} "
        f"({100 * progress['fraction']:.0f}%)"
    )
    for transition in job.get("transitions", []):
        reason = f" ({transition['reason']})" if transition.get("reason") else ""
        console.print(f"  {transition['at'][:23]}  {transition['state']}{reason}", markup=False)
    if metric := metric_text(job.get("result")):
        console.print(f"  test [bold]{metric}[/bold]")


def watch(client: Client, console: Console, job_id: str) -> int:
    """Follow a job live: progress bar and per-worker table; exit status from its end state."""
    job = client.request("GET", f"/v1/jobs/{job_id}")
    view = ProgressView(
        console, JobSpec.model_validate(job["spec"]), job["progress"]["steps_per_epoch"]
    )
    latest: list[dict[str, Any]] = []
    state = job["state"]

    class Screen:
        def __rich__(self) -> Group:
            parts: list[Any] = [f"job {job_id}: {state_text(state)}", view.progress]
            if latest:
                parts.append(worker_table(latest))
            return Group(*parts)

    with Live(Screen(), console=console, refresh_per_second=4):
        for kind, data in client.events(job_id):
            if kind == "state":
                state = data["state"]
            elif kind == "report":
                latest = data.get("workers") or latest
                view.handle({"type": "report", **data})
            elif kind == "exception":
                view.handle({"type": "exception", **data})
            elif kind == "end":
                state = data["state"]
    job = client.request("GET", f"/v1/jobs/{job_id}")
    show_job(console, job)
    return EXIT_OK if job["state"] == JobState.SUCCEEDED else EXIT_JOB_FAILED


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(Path(args.file).read_text()) if args.file else {}
    for field in JobSpec.model_fields:
        value = getattr(args, field, None)
        if value is not None:
            spec[field] = value
    return spec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="syncbn", description="client of syncbn-service")
    parser.add_argument("--url", default=os.environ.get("SYNCBN_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("SYNCBN_API_TOKEN"))
    parser.add_argument("--json", action="store_true", help="print raw JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="submit a job (flags override --file)")
    submit.add_argument("--file", help="JobSpec JSON file")
    for flag, options in spec_flags().items():
        submit.add_argument(flag, **options)
    submit.add_argument("--watch", action="store_true", help="then watch it")

    listing = sub.add_parser("list", help="list jobs")
    listing.add_argument("--state", choices=sorted(STATE_STYLE))
    listing.add_argument("--limit", type=int, default=50)
    for name, text in (
        ("show", "one job"),
        ("watch", "follow a job live"),
        ("cancel", "cancel a job"),
        ("logs", "a job's Ray logs"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("job_id")
        if name == "logs":
            command.add_argument("--tail", type=int, default=200)
    upload = sub.add_parser(
        "upload", help="upload a dataset: .npz (x, y[, x_test, y_test]) or an image-folder .zip"
    )
    upload.add_argument("path", type=Path)
    upload.add_argument("--image-size", help="image folders: resize every image, e.g. 32x32")
    sub.add_parser("datasets", help="list uploaded datasets")
    code = sub.add_parser(
        "upload-code", help="upload a .zip/.tar.gz of Python files with a model builder"
    )
    code.add_argument("path", type=Path)
    sub.add_parser("code", help="list uploaded code bundles")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, client: Client, console: Console) -> int:
    out = None
    if args.command == "submit":
        out = client.request("POST", "/v1/jobs", json=spec_from_args(args))
        if args.watch and not args.json:
            console.print(f"submitted [bold]{out['id']}[/bold]")
            return watch(client, console, out["id"])
    elif args.command == "list":
        params = {"limit": args.limit, **({"state": args.state} if args.state else {})}
        out = client.request("GET", "/v1/jobs", params=params)
    elif args.command == "show":
        out = client.request("GET", f"/v1/jobs/{args.job_id}")
    elif args.command == "watch":
        return watch(client, console, args.job_id)
    elif args.command == "cancel":
        out = client.request("POST", f"/v1/jobs/{args.job_id}/cancel")
    elif args.command == "logs":
        out = client.request("GET", f"/v1/jobs/{args.job_id}/logs", params={"tail": args.tail})
    elif args.command in ("upload", "upload-code"):
        path = "/v1/datasets" if args.command == "upload" else "/v1/code"
        form = {"image_size": args.image_size} if getattr(args, "image_size", None) else {}
        with args.path.open("rb") as handle:
            files = {"file": (args.path.name, handle, "application/octet-stream")}
            out = client.request("POST", path, files=files, data=form, timeout=300)
    elif args.command == "datasets":
        out = client.request("GET", "/v1/datasets")
    elif args.command == "code":
        out = client.request("GET", "/v1/code")

    if args.json:
        print(json.dumps(out, indent=2))
    elif args.command == "list":
        console.print(jobs_table(out["jobs"]))
        console.print(f"{out['total']} job(s)")
    elif args.command == "logs":
        print(out["logs"])
    elif args.command == "upload":
        classes = out.get("class_names") or []
        console.print(
            f"dataset [bold]{out['id']}[/bold] ({out.get('task', 'classification')}): "
            f"{out['n_train']} train / {out['n_test']} test samples, shape {out['input_shape']}"
            + (f", classes {', '.join(classes)}" if classes else "")
        )
    elif args.command == "upload-code":
        console.print(
            f"code [bold]{out['id']}[/bold]: modules {', '.join(out['modules'])}; submit with "
            f"--code {out['id']} --model <module>:<function>"
        )
    elif args.command == "code":
        for bundle in out["bundles"]:
            console.print(
                f"{bundle['id']}  {bundle['name']}  modules {', '.join(bundle['modules'])}",
                markup=False,
            )
    elif args.command == "datasets":
        for dataset in out["datasets"]:
            console.print(
                f"{dataset['id']}  {dataset['name']}  {dataset['n_train']} train  "
                f"shape {dataset['input_shape']}",
                markup=False,
            )
    else:
        show_job(console, out)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=args.json)
    client = Client(args.url, args.token)
    try:
        return run(args, client, console)
    except ApiError as exc:
        console.print(str(exc), markup=False, style="red")
        return EXIT_REJECTED if exc.status < 500 else EXIT_UNAVAILABLE
    except httpx.HTTPError as exc:
        console.print(f"cannot reach the service at {args.url}: {exc}", markup=False, style="red")
        return EXIT_UNAVAILABLE
    except (OSError, json.JSONDecodeError) as exc:
        console.print(str(exc), markup=False, style="red")
        return EXIT_REJECTED


if __name__ == "__main__":
    sys.exit(main())
