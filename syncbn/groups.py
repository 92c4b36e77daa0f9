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

    Ranks ``0..k-1`` form the first group, ``k..2k-1`` the second, and so on (apex's
    ``create_syncbn_process_group``, MegDet's sub-linear BN). Every rank must call it, in the
    same order relative to other group creations (it creates all groups collectively). Pass
    the result to ``convert_sync_batchnorm(model, process_group=group)``: each group then
    normalizes with the statistics of its own ``group_size x`` per-rank batch, exactly as one
    BatchNorm on that group's concatenated batch would, and the all_reduces (the same bytes
    per rank as over the whole world) stay inside the group. Smaller groups mean cheaper
    collectives and a smaller effective batch. ``ValueError`` when ``group_size`` does not
    divide the world size.

    Example (8 ranks, statistics over pairs)::

        group = syncbn.new_sync_groups(2)
        model = syncbn.convert_sync_batchnorm(model, process_group=group)
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
