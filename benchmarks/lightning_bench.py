"""Lightning training steps per second on the CPU: syncbn's LayerSync plugin against plain
(per-rank) BatchNorm, same DDP setup, same run.

    .venv/bin/python benchmarks/lightning_bench.py [--steps 50] [--rounds 5] [--batch 8]

Two spawned gloo ranks (``syncbn.launch.run_on_ranks``, one thread each) each run
``Trainer(accelerator="cpu", devices=2, strategy="ddp")`` fits of a small convnet (three conv +
BatchNorm2d layers, 3x32x32 inputs, ``--batch`` images per rank and step), in rounds that
alternate the configurations so machine noise hits all alike:

- ``plain BatchNorm``: no plugin, each rank normalizes with its own batch;
- ``SyncBNLayerSync()``: ``plugins=[SyncBNLayerSync()]``;
- ``SyncBNLayerSync(), forward_sync_buffers=False``: the same with
  ``DDPStrategy(forward_sync_buffers=False)`` (DDP's broadcast of rank 0's buffers before each
  forward is redundant with synchronized layers).

A fit's first ``--warmup`` steps are not timed; a fit's speed is 1 / its median step time on
the slower rank, and a row is the median of its fits. Prints a markdown table. (Lightning's own
``sync_batchnorm=True`` has no row: it cannot run on CPU.) Needs ``lightning``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from syncbn.launch import run_on_ranks

WORLD = 2
CONFIGS = {
    "plain BatchNorm": {"plugin": False, "forward_sync_buffers": None},
    "SyncBNLayerSync()": {"plugin": True, "forward_sync_buffers": None},
    "SyncBNLayerSync(), forward_sync_buffers=False": {
        "plugin": True,
        "forward_sync_buffers": False,
    },
}


def make_module(lr: float = 0.05):
    import lightning.pytorch as pl

    class ConvNet(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(64, 10),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    torch.manual_seed(0)
    return ConvNet()


def fit_steps_per_s(config: dict, steps: int, warmup: int, batch: int, root: str) -> float:
    """One fit of ``warmup + steps`` steps on this rank; its timed steps per second."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from syncbn.integrations.lightning import SyncBNLayerSync

    times: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_end(self, *args) -> None:
            times.append(time.perf_counter())

    total = warmup + steps
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(total * batch * WORLD, 3, 32, 32, generator=gen),
        torch.randint(0, 10, (total * batch * WORLD,), generator=gen),
    )
    ddp_kwargs = {}
    if config["forward_sync_buffers"] is not None:
        ddp_kwargs["forward_sync_buffers"] = config["forward_sync_buffers"]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=DDPStrategy(**ddp_kwargs),
        plugins=[SyncBNLayerSync()] if config["plugin"] else None,
        max_steps=total,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock()],
    )
    loader = DataLoader(data, batch_size=batch, sampler=DistributedSampler(data, shuffle=False))
    trainer.fit(make_module(), loader)
    assert len(times) == total, (len(times), total)
    # The median step after warm-up (end of one step to the end of the next): robust to the
    # bursts of a shared machine.
    return 1 / statistics.median(b - a for a, b in itertools.pairwise(times[warmup - 1 :]))


def bench_rank(
    rank: int, world_size: int, steps: int, warmup: int, batch: int, rounds: int, root: str
) -> dict[str, list[float]]:
    # Lightning takes the processes as launched externally and uses their process group.
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", MASTER_ADDR="127.0.0.1")
    warnings.filterwarnings("ignore")
    import lightning.pytorch  # noqa: F401  (its loggers exist once imported)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("lightning"):
            logging.getLogger(name).setLevel(logging.ERROR)
    results: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for round_ in range(rounds):
        names = list(CONFIGS) if round_ % 2 == 0 else list(reversed(CONFIGS))
        for name in names:
            results[name].append(fit_steps_per_s(CONFIGS[name], steps, warmup, batch, root))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per fit")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per fit")
    parser.add_argument("--batch", type=int, default=8, help="images per rank and step")
    parser.add_argument("--rounds", type=int, default=5, help="fits per configuration")
    args = parser.parse_args()
    import tempfile

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        ranks = run_on_ranks(
            bench_rank,
            WORLD,
            args.steps,
            args.warmup,
            args.batch,
            args.rounds,
            root,
            timeout=600,
        )
    elapsed = time.perf_counter() - started
    # A fit's speed is that of its slower rank (DDP keeps them in step anyway).
    rows = {
        name: statistics.median(min(r[name][i] for r in ranks) for i in range(args.rounds))
        for name in CONFIGS
    }
    base = rows["plain BatchNorm"]
    print(
        f"Lightning DDP, {WORLD} gloo ranks x 1 thread, CPU ({os.cpu_count()} cores, "
        f"{platform.machine()}), torch {torch.__version__}, lightning "
        f"{__import__('lightning').__version__}; batch {args.batch}/rank of 3x32x32, "
        f"{args.steps} timed steps per fit (+{args.warmup} warm-up), median of "
        f"{args.rounds} rounds; {elapsed:.0f} s in all\n"
    )
    print("| configuration | steps/s | ms/step | vs plain BatchNorm |")
    print("|---|---:|---:|---:|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:.1f} | {1000 / rate:.1f} | {rate / base:.2f}x |")
    spread = {
        name: [round(min(r[name][i] for r in ranks), 1) for i in range(args.rounds)]
        for name in CONFIGS
    }
    print(f"\nsteps/s per round: {spread}")


if __name__ == "__main__":
    main()
