"""The small-batch experiment: per-worker BatchNorm vs synchronized BatchNorm on Ray Train.

On ``digits`` (or ``--dataset shapes``), for each seed, with the same epochs, learning-rate
schedule and global batch (8 samples per optimizer step, hence the same number of steps):

1. 4 workers x batch 2, ``norm=local``  (BN statistics from 2 samples per worker)
2. 4 workers x batch 2, ``norm=sync``   (BN statistics from the global batch of 8)
3. 1 worker  x batch 8                  (the large-batch reference)

for one or more model settings (``--models resnet mlp``): the ResNet-style CNN that
``model="auto"`` picks for 8x8 images (BatchNorm2d: statistics over batch x H x W values), and
an MLP on the flattened images (BatchNorm1d: statistics over the batch alone, the harder
case for 2 samples). Prints mean +- std test accuracy, wall time, samples/s and the syncbn
share of step time, all measured in this one run on one local Ray cluster.

With ``--dataset shapes`` (segmentation, the small U-Net ``unet``, whose BatchNorm2d sees
2 images per worker) the metric is the test mIoU (mean +- std), with the pixel accuracy
beside it; epochs and learning rate default to values tuned for it (``DEFAULTS``).

With ``--precise-bn N`` each 4x2 arm also runs ``+ precise``: the same job with
``precise_bn_batches=N`` (before each evaluation, the BN running statistics become the exact
population statistics of N training batches per worker over all workers). Training is the
same, so only the evaluation differs.

    python benchmarks/small_batch.py --epochs 4 --seeds 0 1 2 --models resnet mlp
    python benchmarks/small_batch.py --dataset shapes --seeds 0 1 2
    python benchmarks/small_batch.py --dataset digits --models resnet mlp --precise-bn 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.protocol import read_events
from contract.spec import JobSpec
from workers.driver import run_job
from workers.reporting import epoch_reports

DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 4, "lr": 0.05, "models": ["resnet", "mlp"]},
    "shapes": {"epochs": 6, "lr": 0.05, "models": ["unet"]},
}
"""Per dataset: what ``--epochs``, ``--lr`` and ``--models`` default to."""
CONFIGS = (
    ("4x2 local", {"workers": 4, "batch_size_per_worker": 2, "norm": "local"}),
    ("4x2 sync", {"workers": 4, "batch_size_per_worker": 2, "norm": "sync"}),
    ("1x8 (reference)", {"workers": 1, "batch_size_per_worker": 8, "norm": "local"}),
)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def configs(precise: int) -> list[tuple[str, dict[str, Any]]]:
    """``CONFIGS``; with ``precise`` > 0, each multi-worker arm followed by its ``+ precise``."""
    out = []
    for label, config in CONFIGS:
        out.append((label, config))
        if precise and config["workers"] > 1:
            out.append((f"{label} + precise", {**config, "precise_bn_batches": precise}))
    return out


def run_one(model: str, config: dict[str, Any], seed: int, args: argparse.Namespace, storage: Path):
    """One job; returns its accuracy, wall time and per-worker throughput/sync figures."""
    spec = JobSpec(
        dataset=args.dataset,
        model=model,
        epochs=args.epochs,
        lr=args.lr,
        seed=seed,
        max_failures=0,
        **config,
    )
    result = run_job(spec, storage)
    epochs = epoch_reports(read_events(result.stats_path))
    # Throughput over all epochs: per epoch, the sum over ranks of samples/s; then the mean.
    throughput = [sum(w["samples_per_s"] for w in e["workers"]) for e in epochs]
    step = [w["step_time_s"] for e in epochs for w in e["workers"]]
    sync = [w["sync_time_s"] for e in epochs for w in e["workers"]]
    shifts = [
        layer["mean_shift"]
        for e in epochs
        for w in e["workers"]
        for layer in w["bn"].values()
        if layer.get("mean_shift") is not None
    ]
    return {
        "test_accuracy": result.test_accuracy,
        "test_miou": result.test_miou,
        "wall_s": result.wall_time_s,
        "samples_per_s": statistics.mean(throughput),
        "step_ms": 1000 * statistics.mean(step),
        "sync_ms": 1000 * statistics.mean(sync),
        "mean_shift": statistics.mean(shifts) if shifts else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits")
    parser.add_argument("--epochs", type=int, default=None, help="default: per dataset")
    parser.add_argument("--lr", type=float, default=None, help="default: per dataset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=None, help="default: per dataset")
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local cluster")
    parser.add_argument(
        "--precise-bn", type=int, default=0, metavar="N", help="add arms with precise_bn_batches=N"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    args = parser.parse_args()
    for key, value in DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    segmentation = args.dataset == "shapes"

    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    print(
        f"{args.dataset}, {args.epochs} epochs, lr {args.lr} (cosine), seeds {args.seeds}, "
        f"precise_bn_batches {args.precise_bn}, "
        f"{os.cpu_count()} cores, Ray cluster of {args.cpus} logical CPUs",
        flush=True,
    )
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="small-batch-") as tmp:
        for model in args.models:
            for seed in args.seeds:
                for label, config in configs(args.precise_bn):
                    row = run_one(model, config, seed, args, Path(tmp))
                    raw.setdefault(model, {}).setdefault(label, []).append(row)
                    print(f"  {model:6s} {label:20s} seed {seed}: {json.dumps(row)}", flush=True)
    total = time.perf_counter() - started

    metric = "test mIoU" if segmentation else "test accuracy"
    header = (
        f"{'model':7s} {'config':20s} {metric:>17s} "
        + (f"{'pixel accuracy':>17s} " if segmentation else "")
        + f"{'wall s':>7s} "
        f"{'samples/s':>10s} {'step ms':>8s} {'sync ms':>8s} {'sync share':>10s} "
        f"{'BN mean shift':>13s}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for model, by_config in raw.items():
        for label, rows in by_config.items():

            def avg(key: str, rows=rows) -> float:
                return statistics.mean(r[key] for r in rows)

            shifts = [r["mean_shift"] for r in rows if r["mean_shift"] is not None]
            share = avg("sync_ms") / avg("step_ms") if avg("step_ms") else 0.0
            first = _mean_std([r["test_accuracy"] for r in rows])
            if segmentation:  # mIoU, then the pixel accuracy
                first = f"{_mean_std([r['test_miou'] for r in rows]):>17s} {first:>17s}"
            print(
                f"{model:7s} {label:20s} {first:>17s} "
                f"{avg('wall_s'):7.1f} {avg('samples_per_s'):10.0f} {avg('step_ms'):8.2f} "
                f"{avg('sync_ms'):8.2f} {share:10.1%} "
                f"{(statistics.mean(shifts) if shifts else 0.0):13.3f}"
            )
    print(f"\ntotal {total:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(raw, indent=1))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
