"""What the client prints (rich): jobs, studies, predictions, users, quotas and the audit log
as tables and text, and a job's live progress (``ProgressView``, ``worker_table``; ``python -m
workers run`` shows them too). Plain data in, no requests."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contract.datasets import METRIC_LABELS
from contract.states import FINAL_STATES, JobState

if TYPE_CHECKING:
    from contract.spec import JobSpec

STATE_STYLE = {
    JobState.QUEUED: "yellow",
    JobState.PENDING: "cyan",
    JobState.RUNNING: "blue",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.CANCELLED: "magenta",
}


def state_text(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def created_text(item: dict[str, Any]) -> str:
    """``"2026-01-01 12:00:00"``: when a job or study was created."""
    return item["created_at"][:19].replace("T", " ")


def metric_text(result: dict[str, Any] | None) -> str | None:
    """The test metric of a result: mIoU and pixel accuracy for segmentation, else accuracy."""
    if not result or result.get("test_accuracy") is None:
        return None
    if result.get("test_miou") is not None:
        return f"mIoU {result['test_miou']:.4f}, pixel acc {result['test_accuracy']:.4f}"
    return f"acc {result['test_accuracy']:.4f}"


def size_text(n: float) -> str:
    """A byte count as ``"45.1 kB"`` (decimal units)."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(title="jobs")
    columns = ("id", "owner", "state", "dataset", "model", "workers x batch", "norm", "progress")
    for column in (*columns, "test", "created"):
        table.add_column(column, no_wrap=True)
    for job in jobs:
        spec = job["spec"]
        table.add_row(
            job["id"],
            escape(job.get("owner", "-")),
            state_text(job["state"]),
            spec["dataset"],
            spec["model"],
            f"{spec['workers']} x {spec['batch_size_per_worker']}",
            spec["norm"],
            f"{100 * job['progress']['fraction']:.0f}%",
            metric_text(job.get("result")) or "-",
            created_text(job),
        )
    return table


def show_job(console: Console, job: dict[str, Any]) -> None:
    spec, progress = job["spec"], job["progress"]
    owner = f"  by {escape(job['owner'])}" if job.get("owner") else ""
    pinned = "  [bold]pinned[/bold]" if job.get("pinned") else ""
    console.print(f"job [bold]{job['id']}[/bold]  {state_text(job['state'])}{owner}{pinned}")
    if job.get("files_removed_at"):
        console.print(f"  files removed {job['files_removed_at'][:19]} (retention)")
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


def spec_summary(spec: dict[str, Any]) -> str:
    """``"4x2 sync/2"``: workers x batch per worker, the norm, and its sync group size or
    GroupNorm group count when set."""
    text = f"{spec['workers']}x{spec['batch_size_per_worker']} {spec['norm']}"
    if spec.get("sync_group_size") and spec["sync_group_size"] < spec["workers"]:
        text += f"/{spec['sync_group_size']}"
    if spec.get("group_norm_groups"):
        text += f":{spec['group_norm_groups']}"
    return text


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
    metric = METRIC_LABELS[arms[0]["metric"]] if arms else "accuracy"
    table = Table(title=f"study {study['id']}")
    for column in ("arm", "spec", "jobs"):
        table.add_column(column, no_wrap=True)
    for column in (f"test {metric}", "step time", "sync share", "BN bytes/step"):
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
            bytes_text(arm.get("allreduce_bytes_per_step")),
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
    if study.get("recommendation"):
        console.print(advice_text(study["recommendation"]))


def advice_text(advice: dict[str, str]) -> str:
    """A study's recommendation as rich markup: ``recommended: ARM. REASON``."""
    return f"recommended: [bold]{escape(advice['arm'])}[/bold]. {escape(advice['reason'])}"


def studies_table(studies: list[dict[str, Any]]) -> Table:
    table = Table(title="studies")
    columns = ("id", "owner", "state", "dataset", "workers x batch", "seeds", "arms", "created")
    for column in columns:
        table.add_column(column, no_wrap=True)
    table.add_column("verdict")
    for study in studies:
        spec = study["arms"][0]["spec"] if study["arms"] else study["base"]
        table.add_row(
            study["id"],
            escape(study.get("owner", "-")),
            state_text(study["state"]),
            spec.get("dataset", "-"),
            f"{spec.get('workers', '-')} x {spec.get('batch_size_per_worker', '-')}",
            " ".join(map(str, study["seeds"])),
            ", ".join(a["name"] for a in study["arms"]),
            created_text(study),
            escape(study["verdict"] or "-"),
        )
    return table


def mask_text(mask: Any) -> tuple[str, Counter[int]]:
    """A segmentation mask (nested lists) as its shape, ``"24 x 24"``, and its pixels per class."""
    shape, pixels = [], [mask]
    while pixels and isinstance(pixels[0], list):
        shape.append(len(pixels[0]))
        pixels = [x for row in pixels for x in row]
    return " x ".join(map(str, shape)), Counter(pixels)


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
        for i, mask in enumerate(out["masks"]):
            shape, counts = mask_text(mask)
            pixels = ", ".join(f"{name(k)}: {n}" for k, n in sorted(counts.items()))
            table.add_row(str(i), shape, pixels)
        return table
    table.add_column("class")
    table.add_column("probability", justify="right")
    for i, (k, p) in enumerate(zip(out["predictions"], out["probabilities"], strict=True)):
        table.add_row(str(i), name(k), f"{p[k]:.4f}")
    return table


class ProgressView:
    """A rich progress display fed with stats events (``workers.reporting.follow_events`` or a
    job's Server-Sent Events)."""

    def __init__(self, console: Any, spec: JobSpec, steps_per_epoch: int) -> None:
        self.spec = spec
        self.steps_per_epoch = steps_per_epoch
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.epochs = self.progress.add_task("epochs", total=spec.epochs, info="starting")
        self.steps = self.progress.add_task("epoch 1 steps", total=steps_per_epoch, info="")

    def __enter__(self) -> ProgressView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def handle(self, event: dict[str, Any]) -> None:
        if event.get("type") == "exception":
            errors = "; ".join(f"rank {r}: {m}" for r, m in event.get("errors", {}).items())
            self.progress.console.print(f"[red]worker failure[/red] {errors[:300]}")
            return
        if event.get("type") != "report" or not event.get("workers"):
            return
        workers = event["workers"]
        epoch, step = int(event.get("epoch") or 0), int(event.get("step") or 0)
        loss = sum(w.get("loss") or 0.0 for w in workers) / len(workers)
        in_epoch = step - (epoch - 1) * self.steps_per_epoch
        self.progress.update(
            self.steps, description=f"epoch {epoch} steps", completed=max(0, in_epoch)
        )
        if event.get("kind") == "epoch":
            acc = workers[0].get("test_accuracy")
            self.progress.update(
                self.epochs,
                completed=epoch,
                info=f"loss {loss:.4f}  test acc {acc:.4f}" if acc is not None else "",
            )
        else:
            self.progress.update(self.epochs, info=f"loss {loss:.4f}")


def bytes_text(count: float | None) -> str:
    """``"1.2 kB"`` (``size_text``), or ``-`` when not known."""
    return "-" if count is None else size_text(count)


def worker_table(workers: list[dict[str, Any]], norm: str | None = None) -> Table:
    """The final per-worker statistics as a rich table (``norm="group"``: no BN statistics)."""
    table = Table(title="per-worker statistics (last epoch)")
    columns = ("rank", "samples", "loss", "train acc", "samples/s", "step ms", "sync ms")
    for column in (*columns, "BN bytes/step", "BN mean shift"):
        table.add_column(column, justify="right")
    for w in workers:
        shifts = [v.get("mean_shift") for v in (w.get("bn") or {}).values()]
        shifts = [s for s in shifts if s is not None]
        shift = f"{sum(shifts) / len(shifts):.3f}" if shifts else "-"
        if norm == "group":
            shift = "none (GroupNorm)"
        table.add_row(
            str(w.get("rank")),
            str(w.get("samples")),
            f"{w.get('loss', float('nan')):.4f}",
            f"{w.get('train_accuracy', float('nan')):.4f}",
            f"{w.get('samples_per_s', 0.0):.0f}",
            f"{1000 * w.get('step_time_s', 0.0):.2f}",
            f"{1000 * w.get('sync_time_s', 0.0):.2f}",
            bytes_text(w.get("allreduce_bytes_per_step")),
            shift,
        )
    return table
