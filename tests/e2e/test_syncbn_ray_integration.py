"""``syncbn.integrations.ray`` in real Ray Train runs on the test cluster (2 workers, gloo).

- In this process, a ``TorchTrainer`` whose loop ``prepare_model``s a small net: its BatchNorm2d
  layers are syncbn's under Ray's DDP (no forward buffer broadcast), both workers end with
  bit-identical running statistics, and those, like the weights and the checkpoint's
  ``plain_state_dict``, are what one process with torch's BatchNorm2d gets on the
  concatenated batches.
- ``examples/ray_train_syncbn.py``, run as a script against the test cluster (``RAY_ADDRESS``),
  trains, and docs/library.md's "With Ray Train" code is that file's, line for line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ray_train_syncbn.py"
LIBRARY_DOC = ROOT / "docs" / "library.md"
WORKERS, BATCH, STEPS, LR = 2, 6, 3, 0.1
RUNNING = ("running_mean", "running_var")
# One process on the same global batch gets 0.95-0.98 over seeds 0-4 after 2 epochs (chance
# is 0.1); a model that does not learn falls far below.
MIN_ACCURACY = 0.85


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.BatchNorm2d(8, momentum=0.3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def _batches() -> tuple[torch.Tensor, torch.Tensor]:
    """STEPS global batches of WORKERS x BATCH images and labels; rank r takes rows
    r*BATCH..(r+1)*BATCH-1, and rank 1's images have another mean and scale than rank 0's (so
    per-worker statistics would differ a lot from the global ones)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, WORKERS * BATCH, 3, 7, 7, generator=gen)
    x[:, BATCH:] = 3.0 * x[:, BATCH:] + 2.0
    y = torch.randint(0, 4, (STEPS, WORKERS * BATCH), generator=gen)
    return x, y


def _train_loop(config: dict) -> None:
    """On each worker: prepare_model, STEPS SGD steps on its own rows, report what it sees."""
    import ray.train
    import torch.distributed as dist
    from ray.train import Checkpoint
    from torch.nn.modules.batchnorm import _BatchNorm

    import syncbn
    from syncbn.integrations.ray import plain_state_dict, prepare_model, unwrap

    rank = ray.train.get_context().get_world_rank()
    model = _net()
    model.load_state_dict(config["init"])
    ddp = prepare_model(model)
    norms = [m for m in ddp.modules() if isinstance(m, _BatchNorm)]
    optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    for x, y in zip(config["x"], config["y"], strict=True):
        optimizer.zero_grad()
        F.cross_entropy(ddp(x[rows]), y[rows]).backward()
        optimizer.step()

    running = {
        f"{name}.{key}": getattr(module, key).tolist()
        for name, module in unwrap(ddp).named_modules()
        if isinstance(module, _BatchNorm)
        for key in RUNNING
    }
    everyone: list[dict] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, running)
    state = plain_state_dict(ddp)
    metrics = {
        "wrapper": type(ddp).__name__,
        "forward_sync_buffers": bool(getattr(ddp, "forward_sync_buffers", True)),
        "norm_types": sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in norms}),
        "all_syncbn": all(isinstance(m, syncbn.SyncBatchNorm) for m in norms),
        "running": everyone,
        "identical": all(other == everyone[0] for other in everyone),
        "plain_keys": sorted(state),
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            torch.save(state, os.path.join(tmp, "model.pt"))
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _reference(init: dict, x: torch.Tensor, y: torch.Tensor, rows: slice | None = None):
    """One process, torch BatchNorm2d, the same SGD steps on the global batches (or, with
    ``rows``, on one worker's rows only: what per-worker BatchNorm would hold)."""
    model = _net()
    model.load_state_dict(init)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for xs, ys in zip(x, y, strict=True):
        optimizer.zero_grad()
        F.cross_entropy(model(xs[rows or slice(None)]), ys[rows or slice(None)]).backward()
        optimizer.step()
    return model.state_dict()


@pytest.mark.timeout(120)
def test_prepare_model_synchronizes_batchnorm_in_a_ray_train_run(ray_cluster, tmp_path) -> None:
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Workers cannot import this test module: send its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    torch.manual_seed(0)
    init = _net().state_dict()
    x, y = _batches()
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"init": init, "x": x, "y": y},
        scaling_config=ScalingConfig(num_workers=WORKERS),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"syncbn-ray-{uuid.uuid4().hex[:8]}", storage_path=str(tmp_path)),
    )
    result = trainer.fit()
    metrics = result.metrics
    assert metrics["wrapper"] == "DistributedDataParallel"
    assert metrics["forward_sync_buffers"] is False  # prepare_model's default for DDP
    assert metrics["norm_types"] == ["syncbn.batchnorm.SyncBatchNorm"] and metrics["all_syncbn"]
    # Both workers hold the same running statistics (no DDP broadcast made them so) ...
    assert metrics["identical"] and len(metrics["running"]) == WORKERS
    assert metrics["running"][0] == metrics["running"][1]

    # ... those of one process with torch BatchNorm2d on the concatenated batches.
    expected = _reference(init, x, y)
    running = metrics["running"][0]
    assert set(running) == {f"{i}.{key}" for i in (1, 4) for key in RUNNING}
    for key, values in running.items():
        torch.testing.assert_close(torch.tensor(values), expected[key], rtol=1e-5, atol=1e-5)
    # Per-worker BatchNorm would be far off (rank 1's data has another mean and scale).
    local = _reference(init, x, y, rows=slice(BATCH, 2 * BATCH))
    assert (local["1.running_mean"] - expected["1.running_mean"]).abs().max() > 0.1

    # The checkpoint is plain BatchNorm2d state: it loads strictly into the plain net.
    assert metrics["plain_keys"] == sorted(expected)
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / "model.pt", weights_only=True)
    plain = _net()
    plain.load_state_dict(state, strict=True)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-5)


@pytest.mark.timeout(120)
def test_the_example_trains_on_the_cluster_as_a_script(ray_cluster, ray_head, tmp_path) -> None:
    env = {**ray_head.env(), "RAY_ADDRESS": ray_cluster}
    name = f"syncbn-example-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, str(EXAMPLE), "--epochs", "2", "--storage-path", str(tmp_path)]
    command += ["--name", name]  # docs/library.md: python examples/ray_train_syncbn.py --epochs 2
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    log = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, log
    reported = re.search(r"^test accuracy ([\d.]+)$", proc.stdout, re.MULTILINE)
    loaded = re.search(
        r"^plain ConvNet from (.+): test accuracy ([\d.]+)$", proc.stdout, re.MULTILINE
    )
    assert reported is not None and loaded is not None, log
    # The plain model loaded from the checkpoint scores what rank 0 reported.
    assert float(loaded[2]) == float(reported[1]) >= MIN_ACCURACY, log
    assert Path(loaded[1]).is_relative_to(tmp_path / name), log


def _doc_section() -> str:
    text = LIBRARY_DOC.read_text(encoding="utf-8")
    assert "\n## With Ray Train\n" in text
    return text.split("\n## With Ray Train\n", 1)[1].split("\n## ", 1)[0]


def test_the_docs_show_the_examples_code_as_it_is() -> None:
    """Every line of each of the section's Python blocks (but ``...``) is a line of the
    example, in the same order, and the bash block runs the example."""
    section = _doc_section()
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, section
    example = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for block in blocks:
        position = 0
        for line in block.splitlines():
            if line.strip() in ("", "..."):
                continue
            assert line in example[position:], f"not in {EXAMPLE.name} (in order): {line!r}"
            position = example.index(line, position) + 1
    assert "python examples/ray_train_syncbn.py" in section


def test_syncbn_integrations_ray_imports_ray_only_in_prepare_model() -> None:
    code = (
        "import sys\n"
        "import syncbn.integrations.ray as r\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "assert 'ray' not in {m.split('.')[0] for m in sys.modules}\n"
        "import torch, syncbn\n"
        "plain = torch.nn.Sequential(torch.nn.BatchNorm2d(2))\n"
        "keys = list(plain.state_dict())\n"
        "m = syncbn.convert_sync_batchnorm(plain)\n"
        "assert type(m[0]) is syncbn.SyncBatchNorm and list(r.plain_state_dict(m)) == keys\n"
        "assert 'ray' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
