"""Process groups: who synchronizes with whom."""

from __future__ import annotations

import torch.distributed as dist


def group_world_size(process_group: dist.ProcessGroup | None) -> int:
    """Ranks in ``process_group`` (the world when None); 1 when torch.distributed is not in use."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    size = dist.get_world_size(process_group)
    if size < 1:
        raise ValueError("this rank is not a member of the SyncBatchNorm process_group")
    return size


def new_sync_groups(group_size: int) -> dist.ProcessGroup:
    """Split the world into consecutive groups of ``group_size`` ranks; return this rank's group.

    Every rank must call it (it creates all groups collectively). Statistics of a
    ``SyncBatchNorm`` given the returned group are synchronized within the group only.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("new_sync_groups needs torch.distributed: call init_process_group first")
    world = dist.get_world_size()
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if world % group_size:
        raise ValueError(
            f"world size {world} is not divisible by group_size {group_size}: "
            f"choose a divisor of {world}"
        )
    group, _ = dist.new_subgroups(group_size=group_size)
    return group
