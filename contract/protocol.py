"""The worker-report protocol: what a training job tells the service, in one typed contract.

Every Ray Train report becomes one ``ReportEvent`` (one ``WorkerReport`` per rank), every
worker failure one ``ExceptionEvent``. The Train callback appends each event as a JSON line
to ``<run dir>/stats.jsonl`` (``STATS_FILE``) and posts it to the service's ingest endpoint;
the service validates both with these models, stores them, and documents them in OpenAPI.

Imports nothing heavy (no torch, no ray): the service uses it too.
"""

from __future__ import annotations

import json
import math
import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

STATS_FILE = "stats.jsonl"
"""The JSON-lines file of a run's events, in its run directory."""
INGEST_URL_ENV = "SYNCBN_INGEST_URL"
INGEST_TOKEN_ENV = "SYNCBN_INGEST_TOKEN"
"""Where (and with which per-job token) the Train callback posts events; set by the service."""

ReportKind = Literal["step", "epoch"]
MAX_COUNT = 2**53
"""Counts (steps, samples, values) are at most this: exact in JSON numbers and in SQL."""
MAX_EPOCH = 10_000
MAX_RANKS = 4096


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in ``value`` (JSON has none; the page could not read it)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


class _Open(BaseModel):
    """A protocol model that keeps extra fields (newer workers may add some), all finite."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="after")
    def _extras_finite(self) -> _Open:
        if self.model_extra and not _finite(self.model_extra):
            raise ValueError("NaN or infinite values are not allowed (send null)")
        return self


class LayerSummary(_Open):
    """One BatchNorm layer on one rank, at the last report step: this rank's batch statistics
    against the global (synchronized) ones, averaged over channels."""

    local_count: int = Field(ge=0, le=MAX_COUNT, description="values per channel in this batch")
    global_count: int = Field(
        ge=0, le=MAX_COUNT, description="values per channel in the synchronized batch"
    )
    mean_shift: float | None = Field(
        None, description="mean over channels of |mu_local - mu_global| / sigma_global"
    )
    var_ratio: float | None = Field(None, description="mean over channels of var_local/var_global")
    local_mean: float | None = None
    global_mean: float | None = None
    local_var: float | None = None
    global_var: float | None = None


class RunningDigest(BaseModel):
    """One BatchNorm layer's running statistics: equal hashes on two ranks mean identical."""

    model_config = ConfigDict(allow_inf_nan=False)

    sha256: str = Field(description="first 16 hex digits of sha256(running_mean, running_var)")
    mean_abs: float
    var_mean: float


class EpochEval(_Open):
    """What every rank adds to an epoch report (identical on all ranks: all-reduced)."""

    test_accuracy: float | None = Field(
        None, description="over the whole test set (pixel accuracy for segmentation)"
    )
    test_loss: float | None = None
    test_miou: float | None = Field(
        None, description="segmentation: mean intersection over union of the classes present"
    )
    test_samples: int | None = Field(None, ge=0, le=MAX_COUNT)
    bn_running: dict[str, RunningDigest] = Field(
        default_factory=dict, description="per BN layer, a digest of its running statistics"
    )


class WorkerReport(EpochEval):
    """One rank's statistics in one report (epoch reports also carry ``EpochEval``)."""

    kind: ReportKind = "epoch"
    rank: int = Field(ge=0, lt=MAX_RANKS)
    world_size: int = Field(1, ge=1, le=MAX_RANKS)
    node_id: str | None = Field(None, max_length=256, description="the Ray node of this rank")
    epoch: int = Field(ge=0, le=MAX_EPOCH, description="1-based epoch of the report")
    step: int = Field(ge=0, le=MAX_COUNT, description="optimizer steps done by this rank")
    batch_size: int = Field(0, ge=0, le=MAX_COUNT, description="samples per step on this rank")
    samples: int = Field(0, ge=0, le=MAX_COUNT, description="training samples seen by this rank")
    loss: float | None = Field(None, description="mean training loss since the last report")
    train_accuracy: float | None = None
    samples_per_s: float | None = Field(None, description="training throughput of this rank")
    step_time_s: float | None = Field(None, description="mean wall time of one training step")
    sync_time_s: float | None = Field(
        None, description="mean time per step inside syncbn's collectives"
    )
    allreduce_bytes_per_step: int | None = Field(
        None,
        ge=0,
        le=MAX_COUNT,
        description="bytes this rank all-reduces for BatchNorm per optimizer step (0: none, "
        "as with norm=local or norm=group)",
    )
    lr: float | None = None
    time: float | None = Field(None, description="UNIX time of the report on this rank")
    bn: dict[str, LayerSummary] = Field(
        default_factory=dict, description="per BN layer: local vs global batch statistics"
    )


WORKER_COLUMNS = ("loss", "samples_per_s", "step_time_s", "sync_time_s", "allreduce_bytes_per_step")
"""The per-worker numbers the service keeps in columns (the rest stays in JSON)."""


class ReportEvent(_Open):
    """One Ray Train report: every rank's ``WorkerReport``."""

    type: Literal["report"] = "report"
    kind: ReportKind
    epoch: int = Field(ge=0, le=MAX_EPOCH)
    step: int = Field(ge=0, le=MAX_COUNT)
    time: float | None = None
    checkpoint: str | None = Field(None, max_length=4096)
    workers: list[WorkerReport] = Field(default_factory=list, max_length=MAX_RANKS)

    @property
    def key(self) -> tuple[str, int, int]:
        """What makes a report unique within a job."""
        return (self.kind, self.epoch, self.step)


def text_tail(text: str, max_bytes: int) -> str:
    """The end of ``text`` in at most ``max_bytes`` UTF-8 bytes ("..." where it was cut): a
    traceback's last lines say what failed."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return "..." + data[-(max_bytes - 3) :].decode(errors="ignore")


MAX_EXCEPTION_BYTES = 64 << 10
"""The most bytes of error messages one ``ExceptionEvent`` carries, all ranks together."""
MAX_EXCEPTIONS_PER_JOB = 100
"""The most ``ExceptionEvent``s the service stores of one job."""


class ExceptionEvent(_Open):
    """Worker failures: the error message of each failed rank (64 KiB at most in all, 100
    events at most per job)."""

    type: Literal["exception"] = "exception"
    time: float | None = None
    errors: dict[str, str] = Field(default_factory=dict, max_length=MAX_RANKS)

    @model_validator(mode="after")
    def _bounded(self) -> ExceptionEvent:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in self.errors.items())
        size += len(json.dumps(self.model_extra or {}))
        if size > MAX_EXCEPTION_BYTES:
            raise ValueError(
                f"{size} bytes of worker errors; at most {MAX_EXCEPTION_BYTES} per event"
            )
        return self


Event = Annotated[ReportEvent | ExceptionEvent, Field(discriminator="type")]


MAX_LINE_BYTES = 8 << 20
"""The longest line of a stats file that is read (the ingest endpoint's default limit)."""


def read_events(
    path: str | os.PathLike, max_bytes: int = 256 << 20, max_line_bytes: int = MAX_LINE_BYTES
) -> list[dict[str, Any]]:
    """The events of a stats file as dicts: a torn last line (a crash mid-write), a line that
    is not a JSON object or one over ``max_line_bytes`` are skipped, and reading stops after
    ``max_bytes`` (the file is the job's: its size is not trusted); a missing file has none."""
    events, read = [], 0
    try:
        handle = open_regular(path, "r", encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return []
    with handle:
        while read < max_bytes and (line := handle.readline(max_line_bytes + 1)):
            read += len(line)
            if len(line) > max_line_bytes:  # skip the rest of an overlong line
                while (rest := handle.readline(max_line_bytes)) and not rest.endswith("\n"):
                    read += len(rest)
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def open_regular(path: str | os.PathLike, mode: str = "rb", **kwargs: Any) -> Any:
    """``open(path, mode)`` for reading a file a job wrote: a symbolic link there is refused
    (``OSError``), so a job cannot point the service at another file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    return os.fdopen(fd, mode, **kwargs)


OUTCOME_FILE = "outcome.json"
"""The file in a run's directory where the driver writes its ``JobOutcome`` when it ends."""
MAX_OUTCOME_BYTES = 64 << 10


class JobOutcome(BaseModel):
    """How a job's driver ended (``python -m workers run`` writes it to ``OUTCOME_FILE``):
    its exit status, the error, and the run's wall time. The job's user code shares the
    driver, so the service reads it as untrusted input: bounded, typed, and only the job's
    own result depends on it."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    status: int = Field(ge=0, le=255)
    error: str | None = Field(None, max_length=MAX_OUTCOME_BYTES)
    wall_time_s: float | None = Field(None, ge=0, le=10**9)


def read_outcome(run_dir: str | os.PathLike) -> JobOutcome | None:
    """The outcome in ``run_dir`` (None: the driver wrote none); ValueError saying why one
    is refused (too large, a link, not a ``JobOutcome``)."""
    path = os.path.join(run_dir, OUTCOME_FILE)
    try:
        with open_regular(path) as handle:
            raw = handle.read(MAX_OUTCOME_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ValueError(f"{OUTCOME_FILE} cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_OUTCOME_BYTES:
        raise ValueError(f"{OUTCOME_FILE} is over {MAX_OUTCOME_BYTES} bytes")
    try:
        return JobOutcome.model_validate_json(raw)
    except ValueError as exc:
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise ValueError(f"{OUTCOME_FILE} is not an outcome: {where}: {first['msg']}") from None


def write_outcome(run_dir: str | os.PathLike, outcome: JobOutcome) -> None:
    """Write ``outcome`` into ``run_dir`` whole (a temporary file renamed over it)."""
    os.makedirs(run_dir, exist_ok=True)
    final = os.path.join(run_dir, OUTCOME_FILE)
    partial = f"{final}.{os.getpid()}.tmp"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(outcome.model_dump_json())
    os.replace(partial, final)
