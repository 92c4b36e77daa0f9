"""A test-only hook that makes one worker process exit abruptly, to prove that a job resumes
from its last checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def maybe_inject_fault(fault: dict[str, Any] | None, rank: int, epoch: int, step: int) -> None:
    """Test hook: exit this worker process abruptly once (guarded by a marker file).

    ``fault = {"rank": r, "epoch": e, "step": s, "marker": path}``: rank r exits with
    ``os._exit`` at step s of epoch e (1-based) unless ``marker`` exists. It first waits until
    Ray Train has registered every checkpoint reported so far, so the resume point is known.
    """
    if not fault or rank != fault["rank"] or epoch != fault["epoch"] or step != fault["step"]:
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    import ray.train

    ray.train.get_all_reported_checkpoints(timeout_s=60)
    marker.write_text(f"rank {rank} exited at epoch {epoch} step {step}\n")
    os._exit(17)
