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
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from contract.protocol import EpochEval, ReportKind, WorkerReport
from contract.recipe import MODEL_FILE
from contract.spec import JobSpec
from workers.bnstats import BNProbe, running_stats_digest
from workers.checkpoint import STATE_FILE, bn_buffers, bn_buffers_file, restore_checkpoint
from workers.data.arrays import ArrayDataset
from workers.data.shard import batches, shard_indices
from workers.export import recipe_for, write_model_file
from workers.faults import maybe_inject_fault
from workers.metrics import Window, all_reduce_sum, as_tensor, autocast, evaluate, loss_and_hits
from workers.nets import apply_norm, model_for

if TYPE_CHECKING:
    import ray.train


def epoch_lr(spec: JobSpec, epoch: int) -> float:
    """Cosine decay from ``spec.lr`` over the epochs (a function of the epoch: resumable)."""
    return spec.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / spec.epochs))


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
        self.model = apply_norm(
            model, spec.norm, spec.sync_group_size, self.world, spec.group_norm_groups
        ).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=spec.lr,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
        )
        self.start_epoch, self.step, self.samples = restore_checkpoint(
            ray.train.get_checkpoint(), self.model, self.optimizer, self.rank, self.device
        )
        self.net = _distributed(self.model)
        # Compiled steps record no per-layer statistics: reported steps run eagerly.
        self.compiled = torch.compile(self.net) if spec.compile else self.net
        self.probe = BNProbe(self.model)
        self.x_train = as_tensor(self.data.x_train)
        self.y_train = as_tensor(self.data.y_train)

    def run(self) -> None:
        """Train the remaining epochs: each trained, evaluated, checkpointed and reported."""
        for epoch in range(self.start_epoch, self.spec.epochs):
            window = self.train_epoch(epoch)
            if self.spec.precise_bn_batches:
                self.precise_bn(epoch)
            self.checkpoint_and_report(epoch, window, self.evaluate())

    def train_epoch(self, epoch: int) -> Window:
        """One epoch on this rank's shard, with a step report every ``report_every_steps``
        steps (never on the last); the closed window of the steps after the last report."""
        for group in self.optimizer.param_groups:
            group["lr"] = epoch_lr(self.spec, epoch)
        order = shard_indices(len(self.x_train), self.rank, self.world, epoch, self.spec.seed)
        plan = batches(order, self.spec.batch_size_per_worker)
        k = self.spec.report_every_steps
        window = Window()
        for b, idx in enumerate(plan):
            maybe_inject_fault(self.fault, self.rank, epoch + 1, b)
            last = b + 1 == len(plan)
            step_report = bool(k) and (self.step + 1) % k == 0 and not last
            self.train_step(idx, window, detailed=step_report or last)
            if step_report:
                window.close()
                self.report("step", epoch, window)
                window = Window()
        window.close()
        return window

    def train_step(self, idx: np.ndarray, window: Window, detailed: bool) -> None:
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

    def checkpoint_and_report(self, epoch: int, window: Window, test: EpochEval) -> None:
        """Write this rank's part of the epoch checkpoint and report it with the epoch stats.

        Rank 0 writes ``STATE_FILE`` (model, optimizer, position, every rank's samples) and the
        model file (``workers.export``); with ``norm="local"`` every rank also writes its own
        BN buffers.
        """
        import ray.train

        all_samples = torch.zeros(self.world, dtype=torch.float64)
        all_samples[self.rank] = self.samples
        all_samples = all_reduce_sum(all_samples, self.device)
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
                buffers = Path(directory) / bn_buffers_file(self.rank)
                torch.save(bn_buffers(self.model), buffers)
            write = self.rank == 0 or local
            checkpoint = ray.train.Checkpoint.from_directory(directory) if write else None
            self.report("epoch", epoch, window, test, checkpoint)

    def report(
        self,
        kind: ReportKind,
        epoch: int,
        window: Window,
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
            allreduce_bytes_per_step=self.probe.allreduce_bytes_per_step,
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
