"""What ``$SYNCBN_HOME`` holds, by kind and by owner, for an admin (``GET /v1/admin/usage``,
``syncbn admin usage``): the disk meter's walk (``service.operations.disk``) joined with the
rows that own each folder."""

from __future__ import annotations

from sqlalchemy import select

from contract.api import DiskUsageOut, OwnerDiskUsage
from service.operations.disk import DiskState
from service.settings import Settings
from service.storage.db import Database
from service.storage.tables import CodeBundle, Dataset, Job, User
from service.teams.quotas import quotas_in_force


def usage(db: Database, settings: Settings, state: DiskState) -> DiskUsageOut:
    """What the home holds: bytes by kind, and by owner (their datasets, code bundles and
    jobs' run folders, with their quotas in force)."""
    owned: dict[tuple[str, str], str] = {}
    with db.session() as session:
        for kind, column, owner in (
            ("datasets", Dataset.id, Dataset.owner),
            ("code", CodeBundle.id, CodeBundle.owner),
            ("runs", Job.id, Job.owner),
        ):
            owned.update(
                {(kind, ident): who for ident, who in session.execute(select(column, owner))}
            )
        names = set(owned.values())
        users = {u.name: u for u in session.scalars(select(User).where(User.name.in_(names)))}
        quotas = {name: quotas_in_force(settings, users.get(name)) for name in names}
    owners: dict[str, dict[str, int]] = {}
    unowned = 0
    for top, kinds in state.walk.by_entry.items():
        owner = owned.get(top)
        if owner is None:
            unowned += sum(kinds.values())
            continue
        counts = owners.setdefault(owner, dict.fromkeys(("datasets", "code", "runs", "logs"), 0))
        for kind, size in kinds.items():
            counts[kind] += size
    by_owner = [
        OwnerDiskUsage(
            owner=owner,
            datasets_bytes=counts["datasets"],
            code_bytes=counts["code"],
            runs_bytes=counts["runs"],
            logs_bytes=counts["logs"],
            total_bytes=sum(counts.values()),
            max_upload_bytes=quotas[owner].max_upload_bytes,
            max_model_bytes=quotas[owner].max_model_bytes,
        )
        for owner, counts in sorted(owners.items(), key=lambda item: -sum(item[1].values()))
    ]
    return DiskUsageOut(
        home=str(state.home),
        measured_at=state.walk.at,
        complete=state.walk.complete,
        used_bytes=state.used,
        budget_bytes=state.budget,
        limit_bytes=state.limit,
        free_bytes=state.free,
        filesystem_bytes=state.filesystem,
        reserve_bytes=state.reserve,
        state=state.level,
        detail=state.describe(),
        by_kind=state.walk.by_kind,
        by_owner=by_owner,
        unowned_bytes=unowned,
    )
