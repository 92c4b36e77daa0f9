"""A user's quotas (their overrides, else the service's defaults) and what they use now.

Running workers: the workers of the user's jobs on Ray (pending or running); queued jobs;
upload bytes: their datasets and code bundles; model bytes: the model files their jobs kept.
A study's jobs are its owner's.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract.spec import JobSpec
from contract.states import ACTIVE_STATES, JobState
from contract.team import Quotas, Usage
from service.errors import FieldError, QuotaExceeded
from service.files.trained_models import CHECKPOINTS
from service.settings import Settings
from service.storage.db import Database
from service.storage.tables import CodeBundle, Dataset, Job, User

QUOTA_SETTINGS = {name: f"SYNCBN_QUOTA_{name.upper()}" for name in Quotas.model_fields}
"""Each quota's default setting, e.g. ``SYNCBN_QUOTA_MAX_QUEUED_JOBS``."""
MAX_ENTRIES = 10_000


def quotas_in_force(settings: Settings, user: User | None) -> Quotas:
    """The user's own limit where set, else the default setting (None: no limit)."""
    values = {}
    for name in Quotas.model_fields:
        own = getattr(user, name, None) if user is not None else None
        values[name] = own if own is not None else getattr(settings, f"quota_{name}")
    return Quotas(**values)


def default_setting(user: User | None, name: str) -> str | None:
    """The setting that ``name``'s limit comes from for ``user`` (its ``Settings`` field, for a
    422 to name), or None when it is the user's own, set by an admin (the message says so)."""
    return None if getattr(user, name, None) is not None else f"quota_{name}"


def _own(setting: str | None) -> str:
    return "" if setting else ", set for them by an admin"


def worker_quotas(session: Session, settings: Settings, owners: set[str]) -> dict[str, int | None]:
    """Each owner's most workers running at once (None: no limit)."""
    users = {u.name: u for u in session.scalars(select(User).where(User.name.in_(owners)))}
    return {
        owner: quotas_in_force(settings, users.get(owner)).max_running_workers for owner in owners
    }


def running_workers(session: Session, owner: str) -> int:
    """The workers of the owner's jobs that hold Ray resources (pending or running)."""
    specs = session.scalars(
        select(Job.spec).where(Job.owner == owner, Job.state.in_(list(ACTIVE_STATES)))
    )
    return sum(int(spec.get("workers", 1)) for spec in specs)


def queued_jobs(session: Session, owner: str) -> int:
    query = select(func.count()).where(Job.owner == owner, Job.state == JobState.QUEUED)
    return session.scalar(query) or 0


def upload_bytes(session: Session, owner: str) -> int:
    datasets = session.scalar(select(func.sum(Dataset.size_bytes)).where(Dataset.owner == owner))
    bundles = session.scalar(
        select(func.sum(CodeBundle.size_bytes)).where(CodeBundle.owner == owner)
    )
    return int(datasets or 0) + int(bundles or 0)


def model_bytes(session: Session, runs_dir: Path, owner: str) -> int:
    """The bytes of the ``.safetensors`` files under the owner's jobs' run folders (links are
    not followed: a job's own writes are untrusted)."""
    total = 0
    for job_id in session.scalars(select(Job.id).where(Job.owner == owner)):
        total += _model_bytes(runs_dir / job_id)
    return total


def _model_bytes(job_dir: Path) -> int:
    """The run folder's checkpoints' model files, reading at most ``MAX_ENTRIES`` entries of
    each folder (a job may write many)."""
    total = 0
    try:
        folders = list(islice(job_dir.iterdir(), MAX_ENTRIES))
    except OSError:
        return 0
    for folder in folders:
        try:
            if not fnmatch.fnmatchcase(folder.name, CHECKPOINTS) or folder.is_symlink():
                continue
            if not folder.is_dir():
                continue
            for file in islice(folder.iterdir(), MAX_ENTRIES):
                if file.suffix == ".safetensors" and not file.is_symlink():
                    total += file.stat().st_size
        except OSError:
            continue
    return total


def check_job_quotas(
    session: Session, settings: Settings, owner: str, specs: Sequence[JobSpec]
) -> None:
    """Refuse new jobs of ``owner`` past their quotas: a job with more workers than they may
    run at once (``FieldError`` on ``workers``), or more queued jobs than they may queue
    (``QuotaExceeded``, 429). Call it under the queue lock, with the check of the service's
    own queue (the model bytes: ``check_model_quota``, before the lock)."""
    user = session.get(User, owner)
    quotas = quotas_in_force(settings, user)
    workers = quotas.max_running_workers
    widest = max(spec.workers for spec in specs)
    if workers is not None and widest > workers:
        setting = default_setting(user, "max_running_workers")
        raise FieldError(
            "workers",
            f"{widest} workers are over {owner}'s quota of {workers} running at once "
            f"(max_running_workers{_own(setting)}; {running_workers(session, owner)} running "
            "now): use fewer workers or ask an admin",
            setting,
        )
    if quotas.max_queued_jobs is not None:
        queued = queued_jobs(session, owner)
        if queued + len(specs) > quotas.max_queued_jobs:
            raise QuotaExceeded(
                f"{owner} has {queued} job(s) queued and may queue {quotas.max_queued_jobs} "
                f"(max_queued_jobs); this asks for {len(specs)}: wait for some to start"
            )


def check_model_quota(db: Database, settings: Settings, owner: str) -> None:
    """``QuotaExceeded`` (429) when ``owner``'s model files already use their
    ``max_model_bytes``. It reads their run folders: call it before taking the queue lock, so
    that one user's history never holds up another's submit."""
    with db.session() as session:
        quota = quotas_in_force(settings, session.get(User, owner)).max_model_bytes
        if quota is None:
            return
        used = model_bytes(session, settings.layout.runs, owner)
    if used >= quota:
        raise QuotaExceeded(
            f"{owner}'s trained models use {used} bytes, at their quota of {quota} "
            "(max_model_bytes): delete old jobs first"
        )


def check_upload_quota(session: Session, settings: Settings, owner: str, size: int) -> None:
    """``FieldError`` on ``file`` when ``size`` more bytes of uploads would put ``owner`` over
    their quota (``max_upload_bytes``)."""
    user = session.get(User, owner)
    quota = quotas_in_force(settings, user).max_upload_bytes
    if quota is None:
        return
    used = upload_bytes(session, owner)
    if used + size > quota:
        setting = default_setting(user, "max_upload_bytes")
        raise FieldError(
            "file",
            f"{owner}'s datasets and code bundles use {used} bytes; with this upload "
            f"({size} bytes) they would be over their quota of {quota} "
            f"(max_upload_bytes{_own(setting)}): delete some first",
            setting,
        )


def usage(session: Session, settings: Settings, owner: str) -> Usage:
    """What ``owner`` uses now, against each quota."""
    return Usage(
        running_workers=running_workers(session, owner),
        queued_jobs=queued_jobs(session, owner),
        upload_bytes=upload_bytes(session, owner),
        model_bytes=model_bytes(session, settings.layout.runs, owner),
    )
