"""What every submission is checked against before a job is queued (jobs and studies alike):
the dataset and model (from the dataset's stored metadata: nothing is loaded), a code bundle's
module, whether the cluster could ever fit it, and room in the queue. Each problem is a
``FieldError`` naming the JobSpec field (or ``QueueFull``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from contract.capacity import Capacity, InfeasibleJobError, check_feasible
from contract.datasets import DatasetError, DatasetInfo, Task, builtin_info, steps_per_epoch
from contract.model_choice import check_data
from contract.spec import JobSpec
from contract.states import JobState
from service.cluster import Cluster, RayUnavailable
from service.errors import FieldError, QueueFull
from service.settings import Settings
from service.storage import store
from service.storage.db import Database
from service.teams.access import check_create, check_use
from service.teams.caller import Caller
from service.teams.quotas import check_job_quotas

logger = logging.getLogger("service.jobs.submission")


@dataclass(frozen=True)
class Checked:
    """A spec that passed: its steps per epoch and the dataset's task."""

    steps_per_epoch: int
    task: Task


def cluster_capacity(ray: Cluster) -> Capacity | None:
    """The cluster's alive nodes (None when Ray cannot be reached: nothing is rejected)."""
    try:
        return ray.capacity()
    except RayUnavailable:
        logger.warning("Ray unreachable: accepting without the feasibility check")
        return None


def dataset_info(db: Database, spec: JobSpec, caller: Caller | None = None) -> DatasetInfo:
    """The metadata of ``spec.dataset`` (``FieldError`` on ``dataset`` when it is unknown;
    ``Forbidden`` when ``caller`` may not use it)."""
    if spec.is_builtin_dataset:
        return builtin_info(spec.dataset)
    with db.session() as session:
        row = store.get_dataset(session, spec.dataset)
        if row is None:
            raise FieldError("dataset", f"unknown dataset {spec.dataset!r}: upload it first")
        if caller is not None:
            check_use(session, caller, "dataset", row.id, row.owner)
        return DatasetInfo(
            row.id,
            row.n_train,
            tuple(row.input_shape),
            row.num_classes,
            row.task,  # type: ignore[arg-type]
            tuple(row.class_names) if row.class_names else None,
        )


def check_submission(
    db: Database, spec: JobSpec, capacity: Capacity | None, caller: Caller | None = None
) -> Checked:
    """``FieldError`` naming the field unless ``spec`` can train on its data and could ever
    fit the cluster of ``capacity`` (None: not checked); ``Forbidden`` unless ``caller`` may
    submit and use its dataset and code bundle."""
    if caller is not None:
        check_create(caller, "submit jobs")
    info = dataset_info(db, spec, caller)
    try:
        check_data(spec, info)
    except DatasetError as exc:
        raise FieldError(exc.field, str(exc)) from exc
    if spec.builder is not None:
        _check_builder(db, spec, spec.builder[0], caller)
    if capacity is not None:
        try:
            check_feasible(spec, capacity)
        except InfeasibleJobError as exc:
            raise FieldError(exc.field, str(exc)) from exc
    steps = steps_per_epoch(info.n_train, spec.workers, spec.batch_size_per_worker)
    return Checked(steps, info.task)


def check_queue_room(
    session: Session, settings: Settings, specs: Sequence[JobSpec], owner: str
) -> None:
    """``QueueFull`` unless ``specs`` fit in the queue (``SYNCBN_MAX_QUEUED_JOBS``), and
    ``owner``'s quotas allow them (``service.teams.quotas``). Call it under the queue lock."""
    queued = store.count_by_state(session).get(JobState.QUEUED, 0)
    jobs, most = len(specs), settings.max_queued_jobs
    if queued + jobs > most:
        raise QueueFull(
            f"the job queue is full ({queued} queued, at most {most}; this asks for {jobs})"
        )
    check_job_quotas(session, settings, owner, specs)


def _check_builder(db: Database, spec: JobSpec, module: str, caller: Caller | None) -> None:
    """``FieldError`` unless ``spec.code`` is an uploaded bundle that has ``module``."""
    with db.session() as session:
        bundle = store.get_code_bundle(session, spec.code or "")
        if bundle is None:
            raise FieldError("code", f"unknown code bundle {spec.code!r}: upload it first")
        if caller is not None:
            check_use(session, caller, "code bundle", bundle.id, bundle.owner)
        if module not in bundle.modules:
            raise FieldError(
                "model",
                f"code bundle {bundle.id} has no module {module!r} "
                f"(it has: {', '.join(bundle.modules)})",
            )
