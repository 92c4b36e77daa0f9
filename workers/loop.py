"""The per-worker training loop that Ray Train runs in every worker process.

Each epoch: train on this rank's shard (DistributedSampler semantics), evaluate on this
rank's part of the whole test set and all-reduce the counts (so ``test_accuracy`` and
``test_loss`` are identical on all ranks), checkpoint, report. Every rank calls
``ray.train.report`` the same number of times: once every ``report_every_steps`` optimizer
steps (within an epoch) and once per epoch; every rank has the same number of steps.

Segmentation data (``ArrayDataset.task``) trains with per-pixel cross-entropy that skips
``IGNORE_LABEL`` pixels; its loss and accuracy (train and test) are over the non-ignored
pixels, and evaluation also all-reduces a confusion matrix, once, for ``test_miou``. Samples
(``samples``, ``samples_per_s``, ``test_samples``) are always images.

``precision="bf16"`` runs forward passes under ``torch.autocast`` (bfloat16; syncbn keeps its
statistics in fp32, the loss is taken in fp32). ``compile=True`` trains with
``torch.compile`` of the (DDP) model, except on the steps that are reported: those run
eagerly so that their per-layer BN statistics can be recorded. ``precise_bn_batches``
recomputes the BN running statistics (``syncbn.precise_bn``) before each evaluation.

Rank 0's part of each checkpoint includes the model file of ``workers.export``
(safetensors weights and the recipe).

Each report is one ``contract.protocol.WorkerReport`` per rank, dumped to a dict; epoch reports
add the ``EpochEval`` fields (``test_accuracy``, ``test_loss``, ``test_miou`` (segmentation),
``test_samples`` and ``bn_running``, a digest of the BN running statistics).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from contract.datasets import IGNORE_LABEL
from contract.protocol import EpochEval, ReportKind, WorkerReport
from contract.recipe import MODEL_FILE
from contract.spec import JobSpec
from workers.bnstats import BNProbe, running_stats_digest
from workers.data.arrays import ArrayDataset
from workers.data.shard import batches, eval_indices, shard_indices
from workers.export import recipe_for, write_model_file
from workers.nets import apply_norm, model_for

if TYPE_CHECKING:
    import ray.train

STATE_FILE = "state.pt"
EVAL_BATCH = 512
EVAL_PIXELS = 512 * 32 * 32
"""Evaluation batches hold at most EVAL_BATCH samples and, for segmentation, EVAL_PIXELS
pixels (at least one image)."""


def epoch_lr(spec: JobSpec, epoch: int) -> float:
    """Cosine decay from ``spec.lr`` over the epochs (a function of the epoch: resumable)."""
    return spec.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / spec.epochs))


def _bn_buffers_file(rank: int) -> str:
    return f"bn-rank{rank}.pt"


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


class _Window:
    """Training statistics accumulated since the last report.

    ``samples`` counts images (throughput); loss and accuracy are means over the counted
    predictions: samples for classification, non-ignored pixels for segmentation.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.end: float | None = None
        self.steps = 0
        self.samples = 0
        self.counted = 0
        self.loss_sum = 0.0
        self.correct = 0
        self.step_time = 0.0

    def add(self, n: int, loss: float, correct: int, counted: int, step_time: float) -> None:
        """One step of ``n`` samples: mean ``loss`` and ``correct`` of ``counted`` predictions."""
        self.steps += 1
        self.samples += n
        self.counted += counted
        self.loss_sum += loss * counted
        self.correct += correct
        self.step_time += step_time

    def close(self) -> None:
        """Stop the clock (before evaluation and checkpointing, which are not training)."""
        self.end = time.perf_counter()

    def stats(self, sync_time: float) -> dict[str, float]:
        wall = (self.end or time.perf_counter()) - self.start
        steps, counted = max(self.steps, 1), max(self.counted, 1)
        return {
            "loss": self.loss_sum / counted,
            "train_accuracy": self.correct / counted,
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


def loss_and_hits(
    out: torch.Tensor, y: torch.Tensor, segmentation: bool, reduction: str = "mean"
) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy of a batch (``reduction`` "mean" or "sum"), its correct predictions and
    how many were counted: samples, or for segmentation the pixels not labelled
    ``IGNORE_LABEL`` (the mean is over those; 0 if there are none)."""
    pred = out.detach().argmax(1)
    if not segmentation:
        return F.cross_entropy(out, y, reduction=reduction), int((pred == y).sum()), len(y)
    valid = y != IGNORE_LABEL
    counted = int(valid.sum())
    loss = F.cross_entropy(out, y, ignore_index=IGNORE_LABEL, reduction="sum")
    if reduction == "mean":
        loss = loss / max(counted, 1)
    return loss, int(((pred == y) & valid).sum()), counted


def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 ``(num_classes, num_classes)`` counts of (target, prediction) pixel pairs;
    ``IGNORE_LABEL`` pixels are left out."""
    valid = y != IGNORE_LABEL
    pairs = (y[valid] * num_classes + pred[valid]).cpu()
    counts = torch.bincount(pairs, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).to(torch.int64)


def confusion_metrics(confusion: torch.Tensor) -> tuple[float, float | None]:
    """Pixel accuracy and mean IoU of a (target, prediction) confusion matrix.

    The mean is over the classes that occur in the targets or the predictions (a class whose
    union is empty is left out); (0.0, None) when no pixel was counted.
    """
    counts = confusion.to(torch.float64)
    hits = counts.diagonal()
    union = counts.sum(0) + counts.sum(1) - hits
    present = union > 0
    if not present.any():
        return 0.0, None
    return float(hits.sum() / counts.sum()), float((hits[present] / union[present]).mean())


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """``torch.autocast`` to bfloat16 for ``precision="bf16"`` (disabled for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def evaluate(
    model: nn.Module,
    data: ArrayDataset,
    rank: int,
    world: int,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, float | int | None]:
    """Accuracy and mean loss over the WHOLE test set; identical on every rank.

    Segmentation: pixel accuracy and ``test_miou`` from the confusion matrix (all-reduced
    once), the loss per non-ignored pixel.
    """
    segmentation = data.task == "segmentation"
    k = data.num_classes
    batch = EVAL_BATCH
    if segmentation:
        batch = max(1, min(EVAL_BATCH, EVAL_PIXELS // math.prod(data.y_test.shape[1:])))
    model.eval()
    idx = eval_indices(len(data.x_test), rank, world)
    totals = torch.zeros(4, dtype=torch.float64)  # correct, loss sum, counted, samples
    confusion = torch.zeros((k, k), dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, len(idx), batch):
            part = idx[start : start + batch]
            x = torch.from_numpy(data.x_test[part]).to(device)
            y = torch.from_numpy(data.y_test[part]).to(device)
            with autocast(precision, device):
                out = model(x).float()
            loss, correct, counted = loss_and_hits(out, y, segmentation, reduction="sum")
            totals += torch.tensor([correct, loss.item(), counted, len(part)], dtype=torch.float64)
            if segmentation:
                confusion += confusion_matrix(out.argmax(1), y, k)
    model.train()
    totals = _all_reduce_sum(totals, device)
    count = max(int(totals[2].item()), 1)
    result: dict[str, float | int | None] = {
        "test_accuracy": totals[0].item() / count,
        "test_loss": totals[1].item() / count,
        "test_samples": int(totals[3].item()),
    }
    if segmentation:
        confusion = _all_reduce_sum(confusion, device)
        result["test_accuracy"], result["test_miou"] = confusion_metrics(confusion)
    return result


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


def _device(spec: JobSpec) -> torch.device:
    """This worker's device: Ray Train's GPU for ``use_gpu``, else the CPU."""
    if not spec.use_gpu:
        return torch.device("cpu")
    import ray.train.torch

    return ray.train.torch.get_device()


def _restore(
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
        own = Path(directory) / _bn_buffers_file(rank)
        if own.exists():  # norm="local": this rank's own running statistics
            model.load_state_dict(torch.load(own, map_location=device), strict=False)
    samples = state["samples"][rank] if rank < len(state["samples"]) else 0
    return state["epoch"], state["step"], samples


def _distributed(model: nn.Module) -> nn.Module:
    """``model`` in DDP when torch.distributed is initialized (else ``model`` itself)."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    # broadcast_buffers=False: with norm="local" every rank keeps its own running
    # statistics, also right after a resume (torch 2.13 deprecates the flag, but its
    # replacement forward_sync_buffers=False still syncs buffers at construction).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers", category=FutureWarning)
        return DistributedDataParallel(model, broadcast_buffers=False)


class _RankTrainer:
    """One rank's training run: model, optimizer, BN probe, and where training stands."""

    def __init__(self, config: dict[str, Any]) -> None:
        import ray
        import ray.train

        spec = self.spec = JobSpec.model_validate(config["spec"])
        self.data = _load_dataset(config["data"])
        self.segmentation = self.data.task == "segmentation"
        self.fault: dict[str, Any] | None = config.get("fault")
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.node_id = ray.get_runtime_context().get_node_id()
        torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
        self.device = _device(spec)

        torch.manual_seed(spec.seed)
        model = model_for(spec, self.data.input_shape, self.data.num_classes, self.data.task)
        self.model = apply_norm(model, spec.norm, spec.sync_group_size, self.world).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=spec.lr,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
        )
        self.start_epoch, self.step, self.samples = _restore(
            ray.train.get_checkpoint(), self.model, self.optimizer, self.rank, self.device
        )
        self.net = _distributed(self.model)
        # Compiled steps record no per-layer statistics: reported steps run eagerly.
        self.compiled = torch.compile(self.net) if spec.compile else self.net
        self.probe = BNProbe(self.model)
        self.x_train = _tensor(self.data.x_train)
        self.y_train = _tensor(self.data.y_train)

    def run(self) -> None:
        """Train the remaining epochs: each trained, evaluated, checkpointed and reported."""
        for epoch in range(self.start_epoch, self.spec.epochs):
            window = self.train_epoch(epoch)
            if self.spec.precise_bn_batches:
                self.precise_bn(epoch)
            self.checkpoint_and_report(epoch, window, self.evaluate())

    def train_epoch(self, epoch: int) -> _Window:
        """One epoch on this rank's shard, with a step report every ``report_every_steps``
        steps (never on the last); the closed window of the steps after the last report."""
        for group in self.optimizer.param_groups:
            group["lr"] = epoch_lr(self.spec, epoch)
        order = shard_indices(len(self.x_train), self.rank, self.world, epoch, self.spec.seed)
        plan = batches(order, self.spec.batch_size_per_worker)
        k = self.spec.report_every_steps
        window = _Window()
        for b, idx in enumerate(plan):
            _maybe_inject_fault(self.fault, self.rank, epoch + 1, b)
            last = b + 1 == len(plan)
            step_report = bool(k) and (self.step + 1) % k == 0 and not last
            self.train_step(idx, window, detailed=step_report or last)
            if step_report:
                window.close()
                self.report("step", epoch, window)
                window = _Window()
        window.close()
        return window

    def train_step(self, idx: np.ndarray, window: _Window, detailed: bool) -> None:
        """One optimizer step on the samples ``idx``, added to ``window``."""
        started = time.perf_counter()
        xb = self.x_train[idx].to(self.device, non_blocking=True)
        yb = self.y_train[idx].to(self.device, non_blocking=True)
        net = self.net if detailed else self.compiled
        with self.probe.step(detailed=detailed):
            with autocast(self.spec.precision, self.device):
                out = net(xb)
            loss, correct, counted = loss_and_hits(out.float(), yb, self.segmentation)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        loss_value = float(loss.detach())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.step += 1
        self.samples += len(idx)
        window.add(len(idx), loss_value, correct, counted, time.perf_counter() - started)

    def precise_bn(self, epoch: int) -> None:
        """Set the BN running statistics to the population statistics of
        ``precise_bn_batches`` batches of this rank's shard on every rank (one all_reduce).

        Each batch holds as many samples as a BN layer normalized over in training (the
        synchronized group's batch for ``norm="sync"``), as the layers before it then see.
        """
        import syncbn

        spec = self.spec
        group = 1 if spec.norm == "local" else (spec.sync_group_size or self.world)
        order = shard_indices(len(self.x_train), self.rank, self.world, epoch, spec.seed)
        plan = batches(order, spec.batch_size_per_worker * group)[: spec.precise_bn_batches]
        syncbn.precise_bn(self.model, (self.x_train[i] for i in plan), len(plan))

    def evaluate(self) -> EpochEval:
        """The test-set evaluation (identical on all ranks) and the BN running-stats digest."""
        test = evaluate(
            self.model, self.data, self.rank, self.world, self.device, self.spec.precision
        )
        return EpochEval(**test, bn_running=running_stats_digest(self.model))

    def checkpoint_and_report(self, epoch: int, window: _Window, test: EpochEval) -> None:
        """Write this rank's part of the epoch checkpoint and report it with the epoch stats.

        Rank 0 writes ``STATE_FILE`` (model, optimizer, position, every rank's samples) and the
        model file (``workers.export``); with ``norm="local"`` every rank also writes its own
        BN buffers.
        """
        import ray.train

        all_samples = torch.zeros(self.world, dtype=torch.float64)
        all_samples[self.rank] = self.samples
        all_samples = _all_reduce_sum(all_samples, self.device)
        local = self.spec.norm == "local"
        with tempfile.TemporaryDirectory(prefix="syncbn-ckpt-") as directory:
            if self.rank == 0:
                state = {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "step": self.step,
                    "samples": [int(s) for s in all_samples.tolist()],
                    "spec": self.spec.model_dump(),
                }
                torch.save(state, Path(directory) / STATE_FILE)
                metrics = test.model_dump(include={"test_accuracy", "test_loss", "test_miou"})
                recipe = recipe_for(self.spec, self.data, epoch + 1, metrics)
                write_model_file(Path(directory) / MODEL_FILE, self.model, recipe)
            if local:
                buffers = Path(directory) / _bn_buffers_file(self.rank)
                torch.save(_bn_buffers(self.model), buffers)
            write = self.rank == 0 or local
            checkpoint = ray.train.Checkpoint.from_directory(directory) if write else None
            self.report("epoch", epoch, window, test, checkpoint)

    def report(
        self,
        kind: ReportKind,
        epoch: int,
        window: _Window,
        test: EpochEval | None = None,
        checkpoint: ray.train.Checkpoint | None = None,
    ) -> None:
        """``ray.train.report`` this rank's ``WorkerReport`` (as a dict) for ``window``.

        For a local-norm model this runs the probe's all_reduce: every rank reports together.
        """
        import ray.train

        report = WorkerReport(
            kind=kind,
            rank=self.rank,
            world_size=self.world,
            node_id=self.node_id,
            epoch=epoch + 1,
            step=self.step,
            batch_size=self.spec.batch_size_per_worker,
            samples=self.samples,
            **window.stats(self.probe.take_sync_time()),
            bn=self.probe.layer_summaries(),
            lr=self.optimizer.param_groups[0]["lr"],
            time=time.time(),
            **(test.model_dump() if test is not None else {}),
        )
        ray.train.report(report.model_dump(mode="json"), checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config = {"spec": JobSpec dict, "data": ObjectRef | ArrayDataset,
    "fault": optional test hook}``."""
    _RankTrainer(config).run()
