"""Train a small convnet with synchronized BatchNorm under Ray Train, on CPU with gloo.

    python examples/ray_train_syncbn.py  # a local Ray of its own, 2 workers

With ``RAY_ADDRESS`` set (``RAY_ADDRESS=127.0.0.1:6379``, say) it runs on that cluster instead.
Each worker sees only its shard of scikit-learn's bundled digits (1347 8x8 training images,
450 for testing; nothing is downloaded), ``--batch-size`` images per step, but every
BatchNorm2d layer, converted by ``syncbn.integrations.ray.prepare_model``, normalizes with the
statistics of all workers' batches. After every epoch rank 0 reports the test accuracy with a
checkpoint holding ``plain_state_dict(model)``: plain BatchNorm2d state that loads into
:class:`ConvNet` without syncbn, DDP or Ray, as ``main`` does at the end.

For GPUs: ``ScalingConfig(num_workers=..., use_gpu=True)`` and ``TorchConfig(backend="nccl")``;
``prepare_model`` moves the model to each worker's GPU, and the loop moves the batches
(``ray.train.torch.get_device()``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import ray
import ray.train
import torch
import torch.nn.functional as F
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer, prepare_data_loader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from syncbn.integrations.ray import plain_state_dict, prepare_model

TEST_SIZE = 450
CHECKPOINT_FILE = "model.pt"


class ConvNet(nn.Module):
    """Two Conv2d + BatchNorm2d + ReLU blocks and a linear classifier, for 1 x 8 x 8 images."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Train and test sets of scikit-learn's digits as (N, 1, 8, 8) floats in [0, 1] and labels;
    the split is the same on every worker."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:TEST_SIZE], order[TEST_SIZE:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


@torch.no_grad()
def accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    """Accuracy on the whole ``dataset``. In eval mode the layers use their running statistics
    (the same on every worker) and issue no collective."""
    model.eval()
    x, y = dataset.tensors
    return (model(x).argmax(1) == y).float().mean().item()


def train_loop_per_worker(config: dict) -> None:
    torch.manual_seed(config["seed"])  # reproducible weights (DDP broadcasts rank 0's anyway)
    train_set, test_set = digits(config["seed"])
    model = prepare_model(ConvNet())  # BatchNorm2d -> syncbn.SyncBatchNorm, then Ray's DDP
    loader = prepare_data_loader(  # adds a DistributedSampler: a shard per worker
        DataLoader(train_set, batch_size=config["batch_size"], shuffle=True)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    rank = ray.train.get_context().get_world_rank()
    for epoch in range(config["epochs"]):
        if ray.train.get_context().get_world_size() > 1:
            loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()  # syncbn's all_reduces, then DDP's
            optimizer.step()
        metrics = {"epoch": epoch + 1, "test_accuracy": accuracy(model, test_set)}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:  # plain BatchNorm2d state, without DDP's "module." prefix
                torch.save(plain_state_dict(model), os.path.join(tmp, CHECKPOINT_FILE))
                checkpoint = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Train a small convnet on scikit-learn's digits with syncbn's synchronized "
            "BatchNorm under Ray Train (CPU workers, gloo)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (1 CPU each)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, default=8, help="images per worker per step")
    parser.add_argument("--lr", type=float, default=0.02, help="SGD learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and the split")
    parser.add_argument(
        "--storage-path",
        default=None,
        help="where Ray Train keeps the run and its checkpoints (default: ~/ray_results)",
    )
    parser.add_argument("--name", default=None, help="the run's name (default: Ray picks one)")
    args = parser.parse_args(argv)
    if min(args.workers, args.epochs, args.batch_size) < 1:
        parser.error("--workers, --epochs and --batch-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ray.init()  # the cluster at RAY_ADDRESS if set, else a local Ray of its own
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
        },
        scaling_config=ScalingConfig(num_workers=args.workers),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(
            name=args.name,
            storage_path=str(Path(args.storage_path).resolve()) if args.storage_path else None,
        ),
    )
    result = trainer.fit()
    print(f"test accuracy {result.metrics['test_accuracy']:.4f}", flush=True)

    # The checkpoint loads into a plain ConvNet: torch BatchNorm2d, no syncbn, DDP or Ray.
    with result.checkpoint.as_directory() as directory:
        state = torch.load(os.path.join(directory, CHECKPOINT_FILE), weights_only=True)
    model = ConvNet()
    model.load_state_dict(state)
    print(
        f"plain ConvNet from {result.checkpoint.path}: test accuracy "
        f"{accuracy(model, digits(args.seed)[1]):.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
