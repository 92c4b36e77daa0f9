"""A user's quotas (their overrides, else the service's defaults) and what they use now.

Running workers: the workers of the user's jobs on Ray (pending or running); queued jobs;
upload bytes: their datasets and code bundles; model bytes: the model files their jobs kept.
A study's jobs are its owner's.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract.api import Quotas, Usage
from contract.states import ACTIVE_STATES, JobState
from service.settings import Settings
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
            if folder.is_symlink() or not folder.is_dir():
                continue
            for file in islice(folder.iterdir(), MAX_ENTRIES):
                if file.suffix == ".safetensors" and not file.is_symlink():
                    total += file.stat().st_size
        except OSError:
            continue
    return total


def usage(session: Session, settings: Settings, owner: str) -> Usage:
    """What ``owner`` uses now, against each quota."""
    return Usage(
        running_workers=running_workers(session, owner),
        queued_jobs=queued_jobs(session, owner),
        upload_bytes=upload_bytes(session, owner),
        model_bytes=model_bytes(session, settings.layout.runs, owner),
    )
