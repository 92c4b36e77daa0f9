"""``syncbn``: the command-line client of the service (httpx + rich).

    syncbn submit --dataset digits --workers 2 --batch-size 8 --epochs 3 [--watch]
    syncbn submit --file job.json
    syncbn list [--state running]      syncbn show ID      syncbn watch ID
    syncbn cancel ID                   syncbn logs ID      syncbn upload data.npz
    syncbn datasets                    syncbn download ID [-o FILE] [--epoch N]
    syncbn predict ID samples.npy [--epoch N]     syncbn predict ID a.png b.jpg ...
    syncbn study --dataset digits --workers 4 --batch-size 2 --seeds 0 1 2 [--watch]
    syncbn studies     syncbn study-show ID     syncbn study-watch ID     syncbn study-cancel ID
    syncbn delete job|study|dataset|code ID

``--url`` (``$SYNCBN_URL``, default ``http://127.0.0.1:8000``) and ``--token``
(``$SYNCBN_API_TOKEN``; for a service on this machine, else the token ``make run`` keeps in
``$SYNCBN_HOME/api-token``, ``.syncbn/api-token`` by default) pick the service. ``--json``
(before or after the command) prints raw JSON. Exit status: 0 ok, 1 the job failed or was
cancelled (``watch``), 2 rejected by the service (4xx) or a bad local file, 3 the service is
unreachable or failed (5xx); a busy service (429) is asked again a few times first. A study's
``--watch`` and ``study-watch`` exit 1 unless every job of the study succeeded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import httpx
import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from contract.datasets import IMAGE_EXTENSIONS
from contract.layout import Layout, is_loopback, read_token_file
from contract.spec import JobSpec
from contract.states import FINAL_STATES, JobState
from workers.cli import ProgressView, worker_table

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


STUDY_SETS = ("norm", "seed")
"""JobSpec fields a study sets itself (no ``study`` flags for them)."""
STUDY_POLL_S = 1.5
DELETE_PATHS = {
    "job": "/v1/jobs",
    "study": "/v1/studies",
    "dataset": "/v1/datasets",
    "code": "/v1/code",
}


def spec_flags(leave_out: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``argparse`` arguments for every ``JobSpec`` field (but ``leave_out``), derived from the
    model: a field added to ``JobSpec`` is a ``submit`` and ``study`` flag without editing
    this file."""
    flags: dict[str, dict[str, Any]] = {}
    for name, field in JobSpec.model_fields.items():
        if name in leave_out:
            continue
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


def local_token(url: str) -> str | None:
    """The token ``make run`` made, when ``url`` is a service on this machine (a token file is
    never sent elsewhere): ``$SYNCBN_HOME/api-token`` (default ``.syncbn``)."""
    if not is_loopback(httpx.URL(url).host):
        return None
    return read_token_file(Layout.of().api_token)


class Client:
    """A thin httpx client for the REST API; a 429 (the service is busy) is retried after
    its ``Retry-After``, a few times."""

    RETRIES = 5

    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(self.RETRIES + 1):
            response = self.http.request(method, path, **kwargs)
            if response.status_code != 429 or attempt == self.RETRIES:
                break
            for upload in (kwargs.get("files") or {}).values():
                upload[1].seek(0)  # an upload is sent again from its start
            time.sleep(float(response.headers.get("Retry-After", "1")))
        if response.status_code >= 400:
            raise ApiError(response.status_code, describe_error(response))
        return response.json() if response.content else None

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


def spec_summary(spec: dict[str, Any]) -> str:
    """``"4x2 local"``: workers x batch per worker, and the norm."""
    return f"{spec['workers']}x{spec['batch_size_per_worker']} {spec['norm']}"


def spread_text(mean: float | None, std: float | None) -> str:
    """A metric's mean ± std over seeds in percent, or ``-``."""
    if mean is None:
        return "-"
    return f"{100 * mean:.2f} ± {100 * (std or 0):.2f} %"


def running_text(job: dict[str, Any]) -> str:
    """A running job's progress: ``"seed 1: epoch 1/2, 40%"``."""
    progress = job["progress"]
    return (
        f"seed {job['spec']['seed']}: epoch {progress['epoch']}/{progress['epochs']}, "
        f"{100 * progress['fraction']:.0f}%"
    )


def states_text(states: list[str]) -> str:
    """``"2 succeeded, 1 running"``: how many jobs are in each state."""
    counts = {state: states.count(state) for state in dict.fromkeys(states)}
    return ", ".join(f"{n} {state_text(state)}" for state, n in counts.items())


def arms_table(study: dict[str, Any], running: dict[str, dict[str, Any]] | None = None) -> Table:
    """One row per arm: its spec, jobs, metric over the seeds, step time and sync share; with
    ``running`` (job id -> job), also the progress of its running jobs."""
    arms = study["arms"]
    metric = "mIoU" if arms and arms[0]["metric"] == "test_miou" else "accuracy"
    table = Table(title=f"study {study['id']}")
    for column in ("arm", "spec", "jobs"):
        table.add_column(column, no_wrap=True)
    for column in (f"test {metric}", "step time", "sync share"):
        table.add_column(column, no_wrap=True, justify="right")
    if running is not None:
        table.add_column("running")
    for arm in arms:
        jobs = arm["jobs"]
        done = sum(j["state"] in FINAL_STATES for j in jobs)
        share = arm["sync_time_share"]
        step = arm["step_time_s_mean"]
        row = [
            arm["name"],
            spec_summary(arm["spec"]),
            f"{done}/{len(jobs)} ({states_text([j['state'] for j in jobs])})",
            spread_text(arm["metric_mean"], arm["metric_std"]),
            "-" if step is None else f"{1000 * step:.1f} ms",
            "-" if share is None else f"{100 * share:.1f} %",
        ]
        if running is not None:
            row.append(
                ", ".join(running_text(running[j["id"]]) for j in jobs if j["id"] in running)
            )
        table.add_row(*row)
    return table


def show_study(console: Console, study: dict[str, Any]) -> None:
    """The arms table, skipped arms, failure reasons and the verdict."""
    base = study["base"]
    console.print(
        f"study [bold]{study['id']}[/bold]  {state_text(study['state'])}  "
        f"{escape(str(base.get('dataset', '')))}, seeds {' '.join(map(str, study['seeds']))}"
    )
    console.print(arms_table(study))
    for arm, reason in study["skipped"].items():
        console.print(f"  skipped {arm}: {reason}", markup=False)
    for reason in study["reasons"]:
        console.print(f"  {reason}", markup=False, style="red")
    if study["verdict"]:
        console.print(f"verdict: [bold]{escape(study['verdict'])}[/bold]")


def studies_table(studies: list[dict[str, Any]]) -> Table:
    table = Table(title="studies")
    for column in ("id", "state", "dataset", "workers x batch", "seeds", "arms", "created"):
        table.add_column(column, no_wrap=True)
    table.add_column("verdict")
    for study in studies:
        spec = study["arms"][0]["spec"] if study["arms"] else study["base"]
        table.add_row(
            study["id"],
            state_text(study["state"]),
            spec.get("dataset", "-"),
            f"{spec.get('workers', '-')} x {spec.get('batch_size_per_worker', '-')}",
            " ".join(map(str, study["seeds"])),
            ", ".join(a["name"] for a in study["arms"]),
            study["created_at"][:19].replace("T", " "),
            escape(study["verdict"] or "-"),
        )
    return table


def pause() -> None:
    """The wait between two polls of a study."""
    time.sleep(STUDY_POLL_S)


def watch_study(client: Client, console: Console, study_id: str) -> int:
    """Follow a study: per arm its jobs done, the running jobs' progress and the metric so far;
    then the table and the verdict. Exit status 0 only when every job succeeded."""
    path = f"/v1/studies/{study_id}"
    study = client.request("GET", path)
    running: dict[str, dict[str, Any]] = {}

    class Screen:
        def __rich__(self) -> Group:
            parts: list[Any] = [f"study {study_id}: {state_text(study['state'])}"]
            parts.append(arms_table(study, running))
            if study["verdict"]:
                parts.append(f"so far: {escape(study['verdict'])}")
            return Group(*parts)

    with Live(Screen(), console=console, refresh_per_second=4, transient=True) as live:
        while study["state"] == "running":
            pause()
            study = client.request("GET", path)
            ids = [j["id"] for a in study["arms"] for j in a["jobs"] if j["state"] == "running"]
            running = {i: client.request("GET", f"/v1/jobs/{i}") for i in ids}
            live.refresh()
    show_study(console, study)
    return EXIT_OK if study["state"] == "succeeded" else EXIT_JOB_FAILED


def size_text(n: int) -> str:
    """A byte count as ``"45.1 kB"`` (decimal units)."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def output_path(output: Path | None, disposition: str | None, fallback: str) -> Path:
    """Where a download goes: ``output`` (a file, or a folder for the server's file name),
    else the server's file name (``Content-Disposition``) in the current directory."""
    header = Message()
    header["content-disposition"] = disposition or ""
    name = Path(header.get_filename() or fallback).name
    if output is None:
        return Path(name)
    return output / name if output.is_dir() else output


def download(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """Stream the job's model file to disk and check it against its ETag (the SHA-256); its
    entry of ``/models`` with the ``path`` it was saved to."""
    params = {"epoch": args.epoch} if args.epoch else {}
    timeout = httpx.Timeout(30.0, read=300.0)
    url = f"/v1/jobs/{args.job_id}/model"
    with client.http.stream("GET", url, params=params, timeout=timeout) as response:
        if response.status_code >= 400:
            response.read()
            raise ApiError(response.status_code, describe_error(response))
        epoch = int(response.headers["x-syncbn-epoch"])
        path = output_path(
            args.output,
            response.headers.get("content-disposition"),
            f"{args.job_id}-epoch{epoch}.safetensors",
        )
        partial, digest, size = path.with_name(path.name + ".part"), hashlib.sha256(), 0
        try:
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes(1 << 20):
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            if response.headers.get("etag", "").strip('"') not in ("", digest.hexdigest()):
                raise OSError(f"{path}: the download does not match its ETag (incomplete?)")
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
    listing = client.request("GET", f"/v1/jobs/{args.job_id}/models")
    entry = next((m for m in listing["models"] if m["epoch"] == epoch), {})
    saved = {"epoch": epoch, "size_bytes": size, "sha256": digest.hexdigest(), "path": str(path)}
    return {**entry, **saved}


def read_samples(path: Path) -> Any:
    """Raw samples from a ``.npy`` array ``(N, *input_shape)`` or a ``.json`` list of samples
    (or a predict request body ``{"inputs": [...]}``)."""
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).tolist()
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return data["inputs"] if isinstance(data, dict) and "inputs" in data else data
    raise ValueError(f"{path}: expected a .npy array or a .json list of samples")


def predict(client: Client, args: argparse.Namespace) -> Any:
    """``POST /predict`` with a ``.npy``/``.json`` file's samples, or ``/predict/images`` with
    image files (for a model trained on an image folder)."""
    epoch = {"epoch": args.epoch} if args.epoch else {}
    path = f"/v1/jobs/{args.job_id}/predict"
    if all(f.suffix.lower() in IMAGE_EXTENSIONS for f in args.files):
        files = [("files", (f.name, f.read_bytes())) for f in args.files]
        return client.request("POST", f"{path}/images", files=files, data=epoch, timeout=300)
    if len(args.files) != 1:
        raise ValueError("give one .npy or .json file, or image files")
    body = {"inputs": read_samples(args.files[0]), **epoch}
    return client.request("POST", path, json=body, timeout=300)


def predictions_table(out: dict[str, Any]) -> Table:
    """One row per sample: its class and that class's probability, or for segmentation the
    mask's shape and its pixels per class."""
    classes = out.get("classes") or []

    def name(k: int) -> str:
        known = k < len(classes) and classes[k] != str(k)
        return escape(f"{k} {classes[k]}" if known else str(k))

    table = Table()
    table.add_column("sample", justify="right")
    if out.get("masks") is not None:
        table.add_column("mask")
        table.add_column("pixels per class")
        for i, mask in enumerate(np.asarray(out["masks"])):
            counts = np.bincount(mask.ravel(), minlength=np.shape(out["probabilities"])[1])
            pixels = ", ".join(f"{name(k)}: {n}" for k, n in enumerate(counts) if n)
            table.add_row(str(i), " x ".join(map(str, mask.shape)), pixels)
        return table
    table.add_column("class")
    table.add_column("probability", justify="right")
    for i, (k, p) in enumerate(zip(out["predictions"], out["probabilities"], strict=True)):
        table.add_row(str(i), name(k), f"{p[k]:.4f}")
    return table


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(Path(args.file).read_text()) if args.file else {}
    for field in JobSpec.model_fields:
        value = getattr(args, field, None)
        if value is not None:
            spec[field] = value
    return spec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="syncbn", description="client of syncbn-service")
    parser.add_argument(
        "--url",
        default=os.environ.get("SYNCBN_URL", "http://127.0.0.1:8000"),
        help="the service (default: $SYNCBN_URL, else http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("SYNCBN_API_TOKEN"),
        help="API token (default: $SYNCBN_API_TOKEN, else for a service on this machine the "
        "one in $SYNCBN_HOME/api-token)",
    )
    parser.add_argument("--json", action="store_true", help="print raw JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="submit a job (flags override --file)")
    submit.add_argument("--file", help="JobSpec JSON file")
    for flag, options in spec_flags().items():
        submit.add_argument(flag, **options)
    submit.add_argument("--watch", action="store_true", help="then watch it")

    study = sub.add_parser(
        "study", help="a study: local vs sync BatchNorm (and the 1-worker reference) x seeds"
    )
    study.add_argument("--file", help="base JobSpec JSON file (without norm and seed)")
    for flag, options in spec_flags(STUDY_SETS).items():
        study.add_argument(flag, **options)
    study.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2")
    study.add_argument("--arms", nargs="+", choices=["local", "sync", "reference"])
    study.add_argument("--watch", action="store_true", help="then watch it")
    sub.add_parser("studies", help="list studies").add_argument("--limit", type=int, default=50)
    for name, text in (
        ("study-show", "one study: its arms and the verdict"),
        ("study-watch", "follow a study live"),
        ("study-cancel", "cancel every unfinished job of a study"),
    ):
        sub.add_parser(name, help=text).add_argument("study_id")

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
    remove = sub.add_parser(
        "delete", help="delete a job or study that is over, a dataset or a code bundle, with files"
    )
    remove.add_argument("kind", choices=sorted(DELETE_PATHS))
    remove.add_argument("id")
    code = sub.add_parser(
        "upload-code", help="upload a .zip/.tar.gz of Python files with a model builder"
    )
    code.add_argument("path", type=Path)
    sub.add_parser("code", help="list uploaded code bundles")
    get = sub.add_parser("download", help="download a job's trained model (.safetensors)")
    get.add_argument("job_id")
    get.add_argument(
        "-o", "--output", type=Path, help="file or folder (default: ./JOB-epochN.safetensors)"
    )
    predict = sub.add_parser(
        "predict", help="predict raw samples (.npy or .json list) or image files with a job's model"
    )
    predict.add_argument("job_id")
    predict.add_argument(
        "files", type=Path, nargs="+", help="one .npy or .json file, or image files (any number)"
    )
    for command in (get, predict):
        command.add_argument("--epoch", type=int, help="a kept checkpoint (default: the newest)")
    for command in sub.choices.values():  # also after the command; SUPPRESS: absent there,
        # a --json before the command still counts
        command.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, client: Client, console: Console) -> int:
    out = None
    if args.command == "submit":
        out = client.request("POST", "/v1/jobs", json=spec_from_args(args))
        if args.watch and not args.json:
            console.print(f"submitted [bold]{out['id']}[/bold]")
            return watch(client, console, out["id"])
    elif args.command == "study":
        body = {"base": spec_from_args(args), "seeds": args.seeds, "arms": args.arms}
        body = {k: v for k, v in body.items() if v is not None}
        out = client.request("POST", "/v1/studies", json=body)
        if args.watch and not args.json:
            console.print(f"study [bold]{out['id']}[/bold]")
            return watch_study(client, console, out["id"])
    elif args.command == "studies":
        out = client.request("GET", "/v1/studies", params={"limit": args.limit})
    elif args.command in ("study-show", "study-cancel"):
        method, action = ("GET", "") if args.command == "study-show" else ("POST", "/cancel")
        out = client.request(method, f"/v1/studies/{args.study_id}{action}")
    elif args.command == "study-watch":
        return watch_study(client, console, args.study_id)
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
    elif args.command == "delete":
        client.request("DELETE", f"{DELETE_PATHS[args.kind]}/{args.id}")
        out = {"deleted": args.id, "kind": args.kind}
    elif args.command == "download":
        out = download(client, args)
    elif args.command == "predict":
        out = predict(client, args)

    if args.json:
        print(json.dumps(out, indent=2))
    elif args.command == "list":
        console.print(jobs_table(out["jobs"]))
        console.print(f"{out['total']} job(s)")
    elif args.command == "study":
        console.print(
            f"study [bold]{out['id']}[/bold]: {len(out['arms'])} arm(s) x "
            f"{len(out['seeds'])} seed(s) queued; follow it with syncbn study-watch {out['id']}"
        )
        for arm, reason in out["skipped"].items():
            console.print(f"  skipped {arm}: {reason}", markup=False)
    elif args.command == "studies":
        console.print(studies_table(out["studies"]))
    elif args.command in ("study-show", "study-cancel"):
        show_study(console, out)
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
    elif args.command == "delete":
        console.print(f"deleted {args.kind} [bold]{escape(args.id)}[/bold]")
    elif args.command == "download":  # soft_wrap: a long path or the hash stays one line
        console.print(f"saved [bold]{escape(out['path'])}[/bold]", soft_wrap=True)
        console.print(
            f"  epoch {out['epoch']}, {size_text(out['size_bytes'])}, sha256 {out['sha256']}",
            soft_wrap=True,
        )
        if metric := metric_text(out.get("metrics")):
            console.print(f"  test {metric}")
        if out.get("bn_statistics"):
            console.print(f"  BatchNorm statistics: {out['bn_statistics']}", markup=False)
    elif args.command == "predict":
        console.print(
            f"job [bold]{out['job_id']}[/bold], model of epoch {out['epoch']}: {out['task']}"
        )
        console.print(predictions_table(out))
    else:
        show_job(console, out)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=args.json)
    client = Client(args.url, args.token or local_token(args.url))
    try:
        return run(args, client, console)
    except ApiError as exc:
        console.print(str(exc), markup=False, style="red")
        return EXIT_REJECTED if exc.status < 500 else EXIT_UNAVAILABLE
    except httpx.HTTPError as exc:
        console.print(f"cannot reach the service at {args.url}: {exc}", markup=False, style="red")
        return EXIT_UNAVAILABLE
    except (OSError, ValueError) as exc:  # a local file: missing, unreadable, not JSON
        console.print(str(exc), markup=False, style="red")
        return EXIT_REJECTED


if __name__ == "__main__":
    sys.exit(main())
