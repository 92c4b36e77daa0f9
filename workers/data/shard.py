"""Which samples each rank trains and evaluates on.

Sharding follows ``torch.utils.data.DistributedSampler`` (shuffle with seed + epoch, pad by
wrapping so every rank gets the same number of samples and therefore of steps); evaluation
splits the test set so that every sample is seen exactly once over all ranks. The step count
this gives is ``contract.datasets.steps_per_epoch``."""

from __future__ import annotations

import math

import numpy as np


def shard_indices(
    n: int, rank: int, world: int, epoch: int, seed: int, shuffle: bool = True
) -> np.ndarray:
    """This rank's training indices for ``epoch``, exactly as ``DistributedSampler`` picks them.

    Shuffled with ``seed + epoch`` (torch.randperm), padded by wrapping around to a multiple
    of ``world``, then every ``world``-th index from ``rank``: all ranks get
    ``ceil(n / world)`` samples.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of size {world}")
    if shuffle:
        import torch

        generator = torch.Generator()
        generator.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = np.arange(n)
    total = math.ceil(n / world) * world
    if total > n:
        reps = math.ceil((total - n) / n)
        order = np.concatenate([order, np.tile(order, reps)[: total - n]])
    return order[rank:total:world]


def eval_indices(n: int, rank: int, world: int) -> np.ndarray:
    """This rank's part of the test set: every sample on exactly one rank, no padding."""
    return np.arange(rank, n, world)


def batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches; a lone trailing sample joins the previous batch.

    Every rank has the same number of indices (``shard_indices``), hence the same batches
    and step count, which DDP and syncbn need. A one-sample batch would make a per-worker
    BatchNorm1d fail in training mode, so it is merged instead of dropped.
    """
    out = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(out) > 1 and len(out[-1]) == 1 and batch_size > 1:
        lone = out.pop()
        out[-1] = np.concatenate([out[-1], lone])
    return out
