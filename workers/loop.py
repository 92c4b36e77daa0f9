"""The per-worker training loop that Ray Train runs in every worker process.

Each epoch: train on this rank's shard (DistributedSampler semantics), evaluate on this
rank's part of the whole test set and all-reduce the counts (so ``test_accuracy`` and
``test_loss`` are identical on all ranks), checkpoint, report. Every rank calls
``ray.train.report`` the same number of times: once every ``report_every_steps`` optimizer
steps (within an epoch) and once per epoch; every rank has the same number of steps.

Reports carry the per-worker statistics (see ``STAT_FIELDS``); epoch reports add
``test_accuracy``, ``test_loss`` and ``bn_running`` (a digest of the BN running statistics).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from workers.bnstats import BNProbe, running_stats_digest
from workers.data import ArrayDataset, batches, eval_indices, shard_indices
from workers.models import apply_norm, build_model
from workers.spec import JobSpec

STAT_FIELDS = (
    "rank",
    "epoch",
    "step",
    "batch_size",
    "samples",
    "loss",
    "train_accuracy",
    "samples_per_s",
    "step_time_s",
    "sync_time_s",
    "bn",
)
"""Fields of every per-worker report (plus ``kind``, ``world_size``, ``node_id`` (the Ray
node the worker runs on), ``lr``, ``time``)."""
EPOCH_FIELDS = ("test_accuracy", "test_loss", "test_samples", "bn_running")
"""Extra fields of the per-epoch reports."""
STATE_FILE = "state.pt"
EVAL_BATCH = 512


def epoch_lr(spec: JobSpec, epoch: int) -> float:
    """Cosine decay from ``spec.lr`` over the epochs (a function of the epoch: resumable)."""
    return spec.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / spec.epochs))


def _bn_buffers_file(rank: int) -> str:
    return f"bn-rank{rank}.pt"


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


class _Window:
    """Training statistics accumulated since the last report."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.end: float | None = None
        self.steps = 0
        self.samples = 0
        self.loss_sum = 0.0
        self.correct = 0
        self.step_time = 0.0

    def add(self, n: int, loss: float, correct: int, step_time: float) -> None:
        self.steps += 1
        self.samples += n
        self.loss_sum += loss * n
        self.correct += correct
        self.step_time += step_time

    def close(self) -> None:
        """Stop the clock (before evaluation and checkpointing, which are not training)."""
        self.end = time.perf_counter()

    def stats(self, sync_time: float) -> dict[str, float]:
        wall = (self.end or time.perf_counter()) - self.start
        steps, samples = max(self.steps, 1), max(self.samples, 1)
        return {
            "loss": self.loss_sum / samples,
            "train_accuracy": self.correct / samples,
            "samples_per_s": self.samples / wall if wall > 0 else 0.0,
            "step_time_s": self.step_time / steps,
            "sync_time_s": sync_time / steps,
        }


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over ``array`` (copied if read-only, as arrays from the object store are)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _all_reduce_sum(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """SUM over all ranks of a small CPU tensor (through ``device`` for NCCL); a CPU result."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = tensor.to(on)
    dist.all_reduce(tensor)
    return tensor.cpu()


def evaluate(
    model: nn.Module, data: ArrayDataset, rank: int, world: int, device: torch.device
) -> dict[str, float | int]:
    """Accuracy and mean loss over the WHOLE test set; identical on every rank."""
    model.eval()
    idx = eval_indices(len(data.x_test), rank, world)
    totals = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(idx), EVAL_BATCH):
            part = idx[start : start + EVAL_BATCH]
            x = torch.from_numpy(data.x_test[part]).to(device)
            y = torch.from_numpy(data.y_test[part]).to(device)
            out = model(x)
            totals[0] += (out.argmax(1) == y).sum().item()
            totals[1] += F.cross_entropy(out, y, reduction="sum").item()
            totals[2] += len(part)
    model.train()
    totals = _all_reduce_sum(totals, device)
    count = max(int(totals[2].item()), 1)
    return {
        "test_accuracy": totals[0].item() / count,
        "test_loss": totals[1].item() / count,
        "test_samples": int(totals[2].item()),
    }


def _maybe_inject_fault(fault: dict[str, Any] | None, rank: int, epoch: int, step: int) -> None:
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


def _load_dataset(ref: Any) -> ArrayDataset:
    if isinstance(ref, ArrayDataset):
        return ref
    import ray

    return ray.get(ref)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config = {"spec": JobSpec dict, "data": ObjectRef | ArrayDataset,
    "fault": optional test hook}``."""
    import ray
    import ray.train
    from torch.nn.parallel import DistributedDataParallel

    spec = JobSpec.model_validate(config["spec"])
    data = _load_dataset(config["data"])
    fault = config.get("fault")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    node_id = ray.get_runtime_context().get_node_id()
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
    if spec.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")

    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.input_shape, data.num_classes)
    model = apply_norm(model, spec.norm, spec.sync_group_size, world).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )

    start_epoch, step, samples = 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, map_location=device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            own = Path(directory) / _bn_buffers_file(rank)
            if own.exists():  # norm="local": this rank's own running statistics
                model.load_state_dict(torch.load(own, map_location=device), strict=False)
            start_epoch, step = state["epoch"], state["step"]
            samples = state["samples"][rank] if rank < len(state["samples"]) else 0

    distributed = dist.is_available() and dist.is_initialized()
    net: nn.Module = model
    if distributed:
        # broadcast_buffers=False: with norm="local" every rank keeps its own running
        # statistics, also right after a resume (torch 2.13 deprecates the flag, but its
        # replacement forward_sync_buffers=False still syncs buffers at construction).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*broadcast_buffers", category=FutureWarning)
            net = DistributedDataParallel(model, broadcast_buffers=False)
    probe = BNProbe(model)
    x_train = _tensor(data.x_train)
    y_train = _tensor(data.y_train)

    def report(
        kind: str,
        epoch: int,
        window: _Window,
        extra: dict[str, Any] | None = None,
        checkpoint: ray.train.Checkpoint | None = None,
    ) -> None:
        metrics: dict[str, Any] = {
            "kind": kind,
            "rank": rank,
            "world_size": world,
            "node_id": node_id,
            "epoch": epoch + 1,
            "step": step,
            "batch_size": spec.batch_size_per_worker,
            "samples": samples,
            **window.stats(probe.take_sync_time()),
            "bn": probe.layer_summaries(),
            "lr": optimizer.param_groups[0]["lr"],
            "time": time.time(),
            **(extra or {}),
        }
        ray.train.report(metrics, checkpoint=checkpoint)

    for epoch in range(start_epoch, spec.epochs):
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(spec, epoch)
        order = shard_indices(len(x_train), rank, world, epoch, spec.seed)
        plan = batches(order, spec.batch_size_per_worker)
        k = spec.report_every_steps
        window = _Window()
        for b, idx in enumerate(plan):
            _maybe_inject_fault(fault, rank, epoch + 1, b)
            last = b + 1 == len(plan)
            step_report = bool(k) and (step + 1) % k == 0 and not last
            started = time.perf_counter()
            xb = x_train[idx].to(device, non_blocking=True)
            yb = y_train[idx].to(device, non_blocking=True)
            with probe.step(detailed=step_report or last):
                out = net(xb)
                loss = F.cross_entropy(out, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            correct = int((out.detach().argmax(1) == yb).sum())
            loss_value = float(loss.detach())
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step += 1
            samples += len(idx)
            window.add(len(idx), loss_value, correct, time.perf_counter() - started)
            if step_report:
                window.close()
                report("step", epoch, window)
                window = _Window()

        window.close()
        test = evaluate(model, data, rank, world, device)
        epoch_metrics = {**test, "bn_running": running_stats_digest(model)}
        all_samples = torch.zeros(world, dtype=torch.float64)
        all_samples[rank] = samples
        all_samples = _all_reduce_sum(all_samples, device)
        with tempfile.TemporaryDirectory(prefix="syncbn-ckpt-") as directory:
            write = rank == 0 or spec.norm == "local"
            if rank == 0:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "step": step,
                        "samples": [int(s) for s in all_samples.tolist()],
                        "spec": spec.model_dump(),
                    },
                    Path(directory) / STATE_FILE,
                )
            if spec.norm == "local":
                torch.save(_bn_buffers(model), Path(directory) / _bn_buffers_file(rank))
            ckpt = ray.train.Checkpoint.from_directory(directory) if write else None
            report("epoch", epoch, window, epoch_metrics, ckpt)
