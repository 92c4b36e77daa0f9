"""Train a small convnet with synchronized BatchNorm under DDP, on CPU with gloo.

Run it with torchrun (two processes on this machine, no GPU needed):

    torchrun --standalone --nproc-per-node 2 examples/torchrun_syncbn.py

Each rank sees only ``--batch-size`` images per step (4 by default), but every BatchNorm2d
layer, converted by ``syncbn.convert_sync_batchnorm``, normalizes with the statistics of the
global batch (4 x 2 ranks = 8 images), as one process with batch 8 would. The data is
scikit-learn's bundled ``load_digits`` (1797 8x8 images; nothing is downloaded): 1347 for
training, 450 for testing. At the end the layers go back to plain ``torch.nn.BatchNorm2d``
(``syncbn.revert_sync_batchnorm``) and rank 0 saves the ``state_dict`` to ``--out``, which
loads into :class:`ConvNet` without syncbn or torch.distributed.

For GPUs, use the "nccl" backend, ``torch.cuda.set_device(LOCAL_RANK)``, move the model and
batches to that device and pass ``device_ids=[LOCAL_RANK]`` to DistributedDataParallel; the
syncbn calls stay the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

import syncbn

TORCHRUN = "torchrun --standalone --nproc-per-node 2 examples/torchrun_syncbn.py"
TEST_SIZE = 450


class ConvNet(nn.Module):
    """Three Conv2d + BatchNorm2d + ReLU blocks and a linear classifier, for 1 x 8 x 8 images."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Train a small convnet on scikit-learn's digits with syncbn's synchronized "
            "BatchNorm and DistributedDataParallel (CPU, gloo). "
            f"Launch it with: {TORCHRUN}"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training set")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="images per rank per step; each BatchNorm normalizes over batch-size x (ranks "
        "synchronized) images",
    )
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and shuffling")
    parser.add_argument(
        "--sync-group-size",
        type=int,
        default=None,
        help=(
            "synchronize BatchNorm only within consecutive groups of this many ranks "
            "(syncbn.new_sync_groups; must divide the world size); default: all ranks. "
            "1 gives every rank its own statistics, i.e. plain per-rank BatchNorm"
        ),
    )
    parser.add_argument(
        "--out",
        default="syncbn-example.pt",
        help="where rank 0 saves the trained state_dict (plain BatchNorm2d layers)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be at least 1")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        parser.exit(
            2,
            f"{parser.prog}: error: run me with torchrun, which sets RANK and WORLD_SIZE:\n"
            f"    {TORCHRUN}\n",
        )
    world_size = int(os.environ["WORLD_SIZE"])
    k = args.sync_group_size
    if k is not None and (k < 1 or world_size % k):
        parser.error(f"--sync-group-size {k} must be a positive divisor of the world size")
    return args


def digits(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Train and test sets of scikit-learn's digits as (N, 1, 8, 8) floats in [0, 1] and labels;
    the split is the same on every rank."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:TEST_SIZE], order[TEST_SIZE:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def all_sum(*values: float) -> list[float]:
    """Sum numbers over all ranks (one all_reduce)."""
    packed = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(packed)
    return packed.tolist()


def train_epoch(
    ddp: DistributedDataParallel,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    recorder: list[syncbn.StatsRecorder] | None = None,
) -> float:
    """One pass over this rank's shard; the mean training loss over all ranks. With a
    ``recorder`` list, the first step runs inside ``syncbn.record_stats`` and its recorder is
    appended to the list."""
    ddp.train()
    total, count = 0.0, 0
    for step, (x, y) in enumerate(loader):
        optimizer.zero_grad()
        if step == 0 and recorder is not None:
            with syncbn.record_stats(ddp.module) as rec:  # layers named as in the bare model
                loss = F.cross_entropy(ddp(x), y)
                loss.backward()
            recorder.append(rec)
        else:
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()  # syncbn's backward all_reduces, then DDP averages the gradients
        optimizer.step()
        total += loss.item() * len(y)
        count += len(y)
    total, count = all_sum(total, count)
    return total / count


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Test accuracy over all ranks' shards. In eval mode the layers use their running
    statistics and issue no collective, so the bare model (not DDP) is evaluated."""
    model.eval()
    correct, count = 0, 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        count += len(y)
    correct, count = all_sum(correct, count)
    return correct / count


def show_stats(rec: syncbn.StatsRecorder) -> None:
    """Print what ``syncbn.record_stats`` saw in one training step on this rank: how far the
    rank's own batch statistics are from the synchronized ones, and the cost of syncing."""
    for name, stats in rec.layers.items():
        print(
            f"  {name}: {stats.local_count} values per channel on this rank, "
            f"{stats.global_count} in its group; mean shift {stats.mean_shift():.3f} sigma, "
            f"variance ratio {stats.var_ratio():.3f}",
            flush=True,
        )
    print(
        f"  syncbn: {rec.collectives} all_reduces of {rec.allreduce_bytes} bytes in all, "
        f"{1e3 * rec.sync_time_s:.1f} ms inside them (waiting for the other ranks included)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dist.init_process_group("gloo")  # env:// (MASTER_ADDR, RANK, ...) set by torchrun
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)  # reproducible weights (DDP broadcasts rank 0's)
    train_set, test_set = digits(args.seed)

    # Every rank must create the groups, in the same order: do it before anything else does.
    group = syncbn.new_sync_groups(args.sync_group_size) if args.sync_group_size else None
    model = syncbn.convert_sync_batchnorm(ConvNet(), process_group=group)
    # Synchronized layers hold identical running statistics on every rank of a group, so
    # DDP's broadcast of rank 0's buffers before every forward is not needed (and with
    # --sync-group-size it would overwrite the other groups' statistics). torch 2.13 names the
    # flag forward_sync_buffers (broadcast_buffers=False is deprecated).
    ddp = DistributedDataParallel(model, forward_sync_buffers=False)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)

    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    # Test shards without DistributedSampler's padding, so every image counts exactly once.
    test_shard = Subset(test_set, range(rank, len(test_set), world_size))
    test_loader = DataLoader(test_shard, batch_size=64)

    groups = f"groups of {args.sync_group_size} ranks" if group is not None else "all ranks"
    if rank == 0:
        print(
            f"world size {world_size}, {args.batch_size} images per rank per step, BatchNorm "
            f"statistics synchronized over {groups}; {len(train_set)} training and "
            f"{len(test_set)} test images",
            flush=True,
        )

    test_accuracy = 0.0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on every rank
        recorder: list[syncbn.StatsRecorder] = []
        loss = train_epoch(ddp, train_loader, optimizer, recorder if epoch == 0 else None)
        if rank == 0 and recorder:
            print("first step, seen by syncbn.record_stats on rank 0:", flush=True)
            show_stats(recorder[0])
        test_accuracy = accuracy(model, test_loader)
        if rank == 0:
            print(
                f"epoch {epoch + 1}/{args.epochs}  train loss {loss:.4f}  "
                f"test accuracy {test_accuracy:.4f}",
                flush=True,
            )

    # Back to torch.nn.BatchNorm2d (same tensors): the state_dict loads into a plain ConvNet.
    plain = syncbn.revert_sync_batchnorm(model)
    if rank == 0:
        torch.save(plain.state_dict(), args.out)
        print(
            f"final test accuracy {test_accuracy:.4f}; saved state_dict to {args.out}", flush=True
        )
    dist.barrier()  # no rank tears gloo down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
