"""torch.compile against eager: one training step of the converted ResNet on gloo ranks.

    .venv/bin/python benchmarks/compile_bench.py [--iters 40] [--world 2] [--batch 16]

The model is ``workers.nets.build_model("resnet", (8, 8), 10)`` (the CNN ``model="auto"``
picks for 8x8 images, 6 BatchNorm2d layers). Each of ``--world`` spawned gloo ranks (one
thread each) holds ``--batch`` samples and times one step: forward, cross-entropy, backward,
SGD update (no DDP: parameter gradients are not averaged, only the BN statistics are
synchronized). Four models with the same weights, timed call by call interleaved (a barrier
before each call): torch's local ``BatchNorm2d`` and ``syncbn.SyncBatchNorm``, each eager and
``torch.compile``d (default inductor backend, ``fullgraph=True``). Prints medians (rank 0),
the compile time of each compiled model (first training step, rank 0), and ratios against
eager local BatchNorm and eager syncbn measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import syncbn
from syncbn.launch import run_on_ranks
from workers.nets import build_model

INPUT_SHAPE, CLASSES = (8, 8), 10


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def rank_bench(rank: int, world_size: int, batch: int, iters: int) -> dict[str, dict]:
    torch._inductor.config.compile_threads = 1  # k ranks share the cores: no compile workers
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(batch, *INPUT_SHAPE, generator=gen)
    y = torch.randint(0, CLASSES, (batch,), generator=gen)

    def model(sync: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        net = build_model("resnet", INPUT_SHAPE, CLASSES)
        return syncbn.convert_sync_batchnorm(net) if sync else net

    steps = {
        "BatchNorm2d (local), eager": make_step(model(False), x, y),
        "SyncBatchNorm, eager": make_step(model(True), x, y),
        "BatchNorm2d (local), compiled": make_step(
            torch.compile(model(False), fullgraph=True), x, y
        ),
        "SyncBatchNorm, compiled": make_step(torch.compile(model(True), fullgraph=True), x, y),
    }
    compile_s = {}
    for name, step in steps.items():
        dist.barrier()
        start = time.perf_counter()
        step()  # compiles the compiled ones
        compile_s[name] = time.perf_counter() - start
        for _ in range(4):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            dist.barrier()
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {
        "median_ms": {name: 1e3 * statistics.median(ts) for name, ts in times.items()},
        "first_step_s": compile_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="samples per rank")
    args = parser.parse_args()

    result = run_on_ranks(rank_bench, args.world, args.batch, args.iters, timeout=1500)[0]
    medians, first = result["median_ms"], result["first_step_s"]
    local, ours = medians["BatchNorm2d (local), eager"], medians["SyncBatchNorm, eager"]
    print(
        f"torch {torch.__version__}, world {args.world} (gloo, 1 thread per rank), batch "
        f"{args.batch} per rank, resnet {INPUT_SHAPE}, medians of {args.iters} training steps\n"
    )
    print("| model | median ms | vs local BN eager | vs SyncBatchNorm eager | first step s |")
    print("|---|---|---|---|---|")
    for name, ms in medians.items():
        print(f"| {name} | {ms:.3f} | {ms / local:.2f} | {ms / ours:.2f} | {first[name]:.1f} |")


if __name__ == "__main__":
    main()
