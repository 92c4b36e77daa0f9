"""Run one ``JobSpec`` as a Ray Train V2 ``TorchTrainer`` and collect its outcome.

Order of checks, each failing at once with a message saying why:

1. the dataset is loaded and validated in the driver (``DatasetError``) and the model checked
   against its input shape, before any worker exists; a user's builder (code bundle) is built
   and run on two samples (``UserCodeError``, with the tail of the user's traceback);
2. the request is checked against the cluster's alive nodes (``contract.capacity``): more
   workers/CPUs/GPUs than there are is an ``InfeasibleJobError`` (Ray Train would
   otherwise keep retrying to schedule it);
3. the run name is new under the storage path (reusing one silently resumes the old run).

The dataset travels to the workers through the object store (``ray.put``), so workers on
other nodes need no access to the driver's files. Checkpoints and ``stats.jsonl`` go to
``<storage>/<name>/``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.capacity import Capacity, check_feasible
from contract.model_choice import check_data
from contract.protocol import STATS_FILE, read_events
from contract.spec import JobSpec
from workers.data.arrays import ArrayDataset
from workers.data.builtin import load_dataset
from workers.nets import apply_norm
from workers.reporting import StatsCallback, StatsSink, epoch_reports
from workers.usercode import check_user_model

CONTROLLER_FAILURE_LIMIT = 2
"""Controller-level retries (e.g. a worker group that could not start) before giving up."""
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = "0.5"
"""The Train controller polls workers (and takes ONE queued report per worker) this often;
Ray's 2 s default makes every ``ray.train.report`` after the first block for up to 2 s."""


class JobError(RuntimeError):
    """A job that could not run or did not finish; the message says why."""


class JobFailedError(JobError):
    """Training started but failed (after ``max_failures`` recoveries)."""


@dataclass
class JobResult:
    """What a finished job leaves behind."""

    name: str
    run_dir: str
    stats_path: str
    test_accuracy: float | None
    test_loss: float | None
    test_miou: float | None
    """Segmentation: mean IoU over the test set (None for classification)."""
    epochs_completed: int
    checkpoint: str | None
    wall_time_s: float
    workers: list[dict[str, Any]] = field(default_factory=list)
    """The last epoch report of every rank."""

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def new_job_name() -> str:
    """A fresh run name (one per job: Ray Train resumes a run whose name it finds)."""
    return f"job-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def prepare_data(spec: JobSpec, datasets_dir: str | Path | None = None) -> ArrayDataset:
    """Load and validate the job's dataset and check the model can take it (driver side);
    a user's builder is built and run once here (``UserCodeError`` when it fails)."""
    data = load_dataset(spec.dataset, datasets_dir)
    check_data(spec, data.info)
    if spec.builder is not None:
        check_user_model(
            spec.model,
            lambda model: apply_norm(model, spec.norm, group_norm_groups=spec.group_norm_groups),
            data.x_train[:2],
            data.task,
            data.num_classes,
            tuple(data.y_train.shape[1:]),
        )
    return data


def cluster_capacity() -> Capacity:
    """The connected Ray cluster's alive nodes."""
    import ray

    return Capacity.of(node.get("Resources", {}) for node in ray.nodes() if node.get("Alive"))


def build_trainer(
    spec: JobSpec,
    data: Any,
    storage_path: str | Path,
    name: str,
    callbacks: list[Any] | None = None,
    fault: dict[str, Any] | None = None,
    controller_failure_limit: int = CONTROLLER_FAILURE_LIMIT,
) -> Any:
    """The ``TorchTrainer`` for ``spec`` (``data``: an ObjectRef of, or an ArrayDataset)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from workers.loop import train_loop_per_worker

    config: dict[str, Any] = {"spec": spec.model_dump(), "data": data}
    if fault is not None:
        config["fault"] = fault
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=spec.workers,
            use_gpu=spec.use_gpu,
            resources_per_worker=spec.resources_per_worker(),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()),
            failure_config=FailureConfig(
                max_failures=spec.max_failures,
                controller_failure_limit=controller_failure_limit,
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or [],
        ),
    )


def run_job(
    spec: JobSpec,
    storage_path: str | Path,
    name: str | None = None,
    *,
    datasets_dir: str | Path | None = None,
    data: ArrayDataset | None = None,
    sink: StatsSink | None = None,
    address: str | None = None,
    resume: bool = False,
    fault: dict[str, Any] | None = None,
    on_start: Callable[[str, Path], None] | None = None,
) -> JobResult:
    """Run ``spec`` to completion on the Ray cluster (``ray.init(address)`` if not connected).

    Raises ``DatasetError`` (bad data), ``UserCodeError`` (the bundle's builder failed),
    ``InfeasibleJobError`` (cluster too small), ``JobError`` (run name taken) before any
    worker starts, and ``JobFailedError`` when training fails. ``data``: what
    ``prepare_data`` already returned, if the caller has it (not loaded and checked again).
    ``on_start(name, run_dir)`` is called just before training starts.
    """
    import ray
    from ray.train import TrainingFailedError

    # Propagated by Ray Train from the driver to the controller (if the user set none).
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S)
    if data is None:
        data = prepare_data(spec, datasets_dir)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    check_feasible(spec, cluster_capacity())

    name = name or new_job_name()
    run_dir = Path(storage_path).resolve() / name
    if run_dir.exists() and not resume:
        raise JobError(f"run {name!r} already exists in {run_dir.parent}: use a new job name")
    stats_path = run_dir / STATS_FILE
    callback = StatsCallback(stats_path, job=name, sink=sink)
    trainer = build_trainer(spec, ray.put(data), storage_path, name, [callback], fault)
    if on_start is not None:
        on_start(name, run_dir)

    started = time.perf_counter()
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        raise JobFailedError(f"job {name} failed: {exc}") from exc
    if getattr(result, "error", None) is not None:
        raise JobFailedError(f"job {name} failed: {result.error}")
    wall = time.perf_counter() - started

    epochs = epoch_reports(read_events(stats_path))
    last = epochs[-1]["workers"] if epochs else []
    first = last[0] if last else {}
    return JobResult(
        name=name,
        run_dir=str(run_dir),
        stats_path=str(stats_path),
        test_accuracy=first.get("test_accuracy"),
        test_loss=first.get("test_loss"),
        test_miou=first.get("test_miou"),
        epochs_completed=int(first.get("epoch", 0)),
        checkpoint=getattr(result.checkpoint, "path", None),
        wall_time_s=wall,
        workers=list(last),
    )
