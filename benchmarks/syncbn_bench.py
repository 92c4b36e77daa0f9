"""syncbn on the CPU: one layer, forward + backward, against its baselines in the same run.

    .venv/bin/python benchmarks/syncbn_bench.py [--iters 60] [--worlds 1 2 4] [--baseline REV]

World 1 (in this process, all cores): torch.nn.BatchNorm2d, syncbn.SyncBatchNorm (which
falls back to F.batch_norm without a group), and syncbn's synchronized kernels with the
collectives skipped (the no-communication floor of the sync path).
World k > 1 (k spawned gloo ranks, one thread each): local BatchNorm2d in the same processes,
syncbn.SyncBatchNorm, a naive synchronized BN (autograd all_reduce of [mean, mean of
squares], as detectron2's NaiveSyncBatchNorm), and the latency of all_reduces of the sizes
syncbn sends. With ``--baseline REV`` (a git revision), every row also times
``syncbn/_functions.py`` as of REV ("sync kernels, no comm @REV"), interleaved with this tree's
kernels: an eager before/after in one run. Prints a markdown table of medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import syncbn
from syncbn._functions import SyncBatchNormFunction
from syncbn.launch import run_on_ranks

SHAPES = [(32, 64, 32, 32), (16, 256, 8, 8)]
ROOT = Path(__file__).resolve().parents[1]


def baseline_function(source: str | None) -> type[torch.autograd.Function] | None:
    """``SyncBatchNormFunction`` from another version's ``_functions.py`` source."""
    if source is None:
        return None
    module = types.ModuleType("syncbn_baseline_functions")
    exec(compile(source, "baseline syncbn/_functions.py", "exec"), module.__dict__)
    return module.SyncBatchNormFunction


def median_ms(
    methods: dict[str, Callable[[], object]], iters: int, synced: bool
) -> dict[str, float]:
    """Median wall time (ms) of each method, interleaved so machine noise hits all alike; the
    order is reversed every other round, so no method always runs after the same one.

    With ``synced``, ranks start every timed call together (a barrier before it).
    """
    for fn in methods.values():
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for i in range(iters):
        items = list(methods.items())
        for name, fn in items if i % 2 == 0 else reversed(items):
            if synced:
                dist.barrier()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def fwd_bwd(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor):
    def step() -> None:
        x.grad = None
        layer(x).backward(grad)

    return step


class AllReduceSum(torch.autograd.Function):
    """Differentiable all_reduce(SUM) (detectron2's AllReduce)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def naive_sync_bn(bn: torch.nn.BatchNorm2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """detectron2's NaiveSyncBatchNorm forward (equal batch sizes assumed), training mode."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        channels = x.size(1)
        moments = torch.cat([x.mean((0, 2, 3)), (x * x).mean((0, 2, 3))])
        moments = AllReduceSum.apply(moments) / dist.get_world_size()
        mean, meansq = moments.split(channels)
        invstd = torch.rsqrt(meansq - mean * mean + bn.eps)
        scale = bn.weight * invstd
        shift = bn.bias - mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    return forward


def kernels_without_communication(
    bn: syncbn.SyncBatchNorm, function: type[torch.autograd.Function] = SyncBatchNormFunction
):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return function.apply(
            x, bn.weight, bn.bias, bn.running_mean, bn.running_var, 0.1, bn.eps, None, 1, None, bn
        )

    return forward


def time_in_collectives(bn: syncbn.SyncBatchNorm, x, grad, iters: int) -> float:
    """Median ms one forward+backward spends inside syncbn's all_reduces (waiting included)."""
    times = []
    for _ in range(iters):
        dist.barrier()
        with syncbn.record_stats(bn) as rec:
            fwd_bwd(bn, x, grad)()
        times.append(rec.sync_time_s)
    return 1e3 * statistics.median(times)


def inputs(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).requires_grad_()
    return x, torch.randn(shape, generator=gen)


def with_baseline(methods: dict, bn: syncbn.SyncBatchNorm, x, grad, baseline, rev) -> dict:
    if baseline is not None:
        methods[f"sync kernels, no comm @{rev}"] = fwd_bwd(
            kernels_without_communication(bn, baseline), x, grad
        )
    return methods


def world_one(iters: int, source: str | None, rev: str | None) -> list[dict]:
    baseline = baseline_function(source)
    rows = []
    for shape in SHAPES:
        x, grad = inputs(shape)
        channels = shape[1]
        torch_bn, ours = torch.nn.BatchNorm2d(channels), syncbn.SyncBatchNorm(channels)
        methods = {
            "BatchNorm2d": fwd_bwd(torch_bn, x, grad),
            "SyncBatchNorm": fwd_bwd(ours, x, grad),
            "sync kernels, no comm": fwd_bwd(kernels_without_communication(ours), x, grad),
        }
        with_baseline(methods, ours, x, grad, baseline, rev)
        rows.append({"shape": shape, "world": 1, **median_ms(methods, iters, False)})
    return rows


def rank_bench(
    rank: int, world_size: int, iters: int, source: str | None, rev: str | None
) -> list[dict]:
    baseline = baseline_function(source)
    rows = []
    for shape in SHAPES:
        x, grad = inputs(shape)
        channels = shape[1]
        local_bn, ours = torch.nn.BatchNorm2d(channels), syncbn.SyncBatchNorm(channels)
        forward_msg = torch.zeros(2 * channels + 1, dtype=torch.float64)
        backward_msg = torch.zeros(2 * channels)
        methods = {
            "BatchNorm2d (local)": fwd_bwd(local_bn, x, grad),
            "SyncBatchNorm": fwd_bwd(ours, x, grad),
            "naive sync BN": fwd_bwd(naive_sync_bn(local_bn), x, grad),
            "sync kernels, no comm": fwd_bwd(kernels_without_communication(ours), x, grad),
            "all_reduce fwd msg": partial(dist.all_reduce, forward_msg),
            "all_reduce bwd msg": partial(dist.all_reduce, backward_msg),
        }
        with_baseline(methods, ours, x, grad, baseline, rev)
        row = {"shape": shape, "world": world_size, **median_ms(methods, iters, True)}
        row["SyncBatchNorm: inside collectives"] = time_in_collectives(ours, x, grad, iters)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also time syncbn/_functions.py as of this git revision (e.g. HEAD)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    source = None
    if args.baseline is not None:
        source = subprocess.run(
            ["git", "show", f"{args.baseline}:syncbn/_functions.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads at world 1, 1 per rank above"
    )
    print(f"medians of {args.iters} iterations, forward + backward of one layer, float32\n")
    print("| shape (per rank) | world | method | median ms | ratio vs BatchNorm2d |")
    print("|---|---|---|---|---|")
    checks = []
    before_after = []
    for world in args.worlds:
        if world == 1:
            rows = world_one(args.iters, source, args.baseline)
        else:
            per_rank = run_on_ranks(
                rank_bench, world, args.iters, source, args.baseline, timeout=900
            )
            rows = per_rank[0]  # rank 0's medians; ranks run in lockstep
        for row in rows:
            base_key = "BatchNorm2d" if world == 1 else "BatchNorm2d (local)"
            base = row[base_key]
            for key, value in row.items():
                if key in ("shape", "world"):
                    continue
                ratio = (
                    ""
                    if key.startswith(("all_reduce", "SyncBatchNorm:"))
                    else f"{value / base:.2f}"
                )
                print(f"| {row['shape']} | {world} | {key} | {value:.3f} | {ratio} |")
            if args.baseline is not None:
                now = row["sync kernels, no comm"]
                before_after.append(
                    (row["shape"], world, now, row[f"sync kernels, no comm @{args.baseline}"])
                )
            if world > 1:
                comm = row["all_reduce fwd msg"] + row["all_reduce bwd msg"]
                overhead = row["SyncBatchNorm"] - base
                inside = row["SyncBatchNorm: inside collectives"]
                checks.append((row["shape"], world, overhead, comm, inside))
    print()
    for shape, world, overhead, comm, inside in checks:
        verdict = "meets" if overhead <= 1.2 * comm else "MISSES"
        print(
            f"{shape} world {world}: SyncBatchNorm overhead over local BN {overhead:.3f} ms; "
            f"its two all_reduces alone {comm:.3f} ms -> ratio {overhead / comm:.2f} "
            f"({verdict} the <= 1.2 target); time inside them in the layer, waiting for the "
            f"slowest rank included: {inside:.3f} ms"
        )
    for shape, world, now, then in before_after:
        print(
            f"{shape} world {world}: sync kernels (eager, no comm) {now:.3f} ms in this tree, "
            f"{then:.3f} ms at {args.baseline} -> ratio {now / then:.2f}"
        )


if __name__ == "__main__":
    main()
