"""A job's checkpoints: rank 0's ``STATE_FILE`` (model, optimizer, position, every rank's
sample count) and model file (``workers.export``), and with ``norm="local"`` every rank's
own BatchNorm buffers; restored on resume."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from contract.recipe import STATE_FILE

if TYPE_CHECKING:
    import ray.train


def bn_buffers_file(rank: int) -> str:
    return f"bn-rank{rank}.pt"


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def restore_checkpoint(
    checkpoint: ray.train.Checkpoint | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    device: torch.device,
) -> tuple[int, int, int]:
    """Load ``checkpoint`` (if any) into model and optimizer; (epochs done, step, samples)."""
    if checkpoint is None:
        return 0, 0, 0
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        own = Path(directory) / bn_buffers_file(rank)
        if own.exists():  # norm="local": this rank's own running statistics
            model.load_state_dict(torch.load(own, map_location=device), strict=False)
    samples = state["samples"][rank] if rank < len(state["samples"]) else 0
    return state["epoch"], state["step"], samples
