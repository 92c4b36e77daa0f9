"""syncbn.integrations.lightning: ``Trainer(strategy="ddp", plugins=[SyncBNLayerSync()])`` on 2
real gloo ranks (CPU) trains a small convnet, BatchNorm2d, a registered subclass
(``convertkit.BNReLU``) and BatchNorm1d included, to the weights and running statistics of one
process with plain BatchNorm on the concatenated batches; the model is plain BatchNorm again
after ``fit``, and the checkpoint saved during ``fit`` holds plain BatchNorm state. Lightning's
own ``Trainer(sync_batchnorm=True)`` fails on CPU.

The ranks are ``syncbn.launch.run_on_ranks`` processes (a deadline, a clear error): each sets
``LOCAL_RANK``, so Lightning's DDP takes the processes as launched externally and uses the
process group they already hold.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from convertkit import BNReLU, convert_bnrelu, revert_bnrelu
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import syncbn
from syncbn.integrations.lightning import SyncBNLayerSync
from syncbn.launch import run_on_ranks

WORLD = 2
PER_RANK = 4  # samples per rank and step
STEPS = 6  # per epoch
EPOCHS = 2
SAMPLES = WORLD * PER_RANK * STEPS
LR = 0.1
BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


class Net(pl.LightningModule):
    """Conv + BatchNorm2d, conv + BNReLU (a registered subclass), linear + BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            BNReLU(8),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 16, bias=False),
            nn.BatchNorm1d(16, momentum=0.3),
            nn.ReLU(),
            nn.Linear(16, 4),
        )
        self.seen: list[list[int]] = []  # sample indices of each training step
        self.types: dict[str, dict[str, str]] = {}  # BN layer types at each hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def bn_types(self) -> dict[str, str]:
        return {n: type(m).__name__ for n, m in self.named_modules() if isinstance(m, BN_TYPES)}

    def training_step(self, batch, batch_idx):
        index, x, y = batch
        self.seen.append(index.tolist())
        self.types.setdefault("training", self.bn_types())
        return F.cross_entropy(self(x), y)

    def on_save_checkpoint(self, checkpoint) -> None:
        self.types["checkpoint"] = self.bn_types()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def dataset() -> TensorDataset:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(SAMPLES, 3, 6, 6, generator=gen) * 2 + 1
    y = torch.randint(0, 4, (SAMPLES,), generator=gen)
    return TensorDataset(torch.arange(SAMPLES), x, y)


def loader() -> DataLoader:
    """Rank r's share of global batch t: samples 8t + r, 8t + r + 2, ... (no shuffling:
    Lightning's own DistributedSampler would shuffle a training loader even with
    ``shuffle=False``; it keeps one the loader has)."""
    data = dataset()
    return DataLoader(data, batch_size=PER_RANK, sampler=DistributedSampler(data, shuffle=False))


def trainer(root: str, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy="ddp",
        max_epochs=EPOCHS,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def as_launched_externally(rank: int) -> None:
    """Lightning's environment variables for a process it did not launch (the group exists)."""
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", MASTER_ADDR="127.0.0.1")
    warnings.filterwarnings("ignore")  # Lightning's advice about workers, logging, ...


def lightning_rank(rank: int, world_size: int, root: str) -> dict[str, object]:
    """Fit ``Net`` with SyncBNLayerSync on this rank's share of every global batch, then try
    Lightning's own ``sync_batchnorm=True`` (one spawn of the ranks for both)."""
    as_launched_externally(rank)
    model = make_net()
    # Registered in this process for convert (apply) and revert, both inside fit.
    with syncbn.registered_converter(BNReLU, convert_bnrelu, revert_bnrelu):
        fit = trainer(root, plugins=[SyncBNLayerSync()])
        fit.fit(model, loader())
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "seen": model.seen,
        "types": {**model.types, "after": model.bn_types()},
        "checkpoint": fit.checkpoint_callback.best_model_path,
        "torch_syncbn": torch_syncbn_errors(root),
        "groups": sync_groups(),
    }


def sync_groups() -> dict[str, object]:
    """SyncBNLayerSync(sync_group_size=k)'s group: k ranks, made once per process group."""
    pairs, singles = SyncBNLayerSync(sync_group_size=2), SyncBNLayerSync(sync_group_size=1)
    group = singles.sync_group()
    return {
        "sizes": [dist.get_world_size(pairs.sync_group()), dist.get_world_size(group)],
        "cached": singles.sync_group() is group,
        "world": SyncBNLayerSync().sync_group(),
    }


def torch_syncbn_errors(root: str) -> list[str]:
    """What Lightning's ``sync_batchnorm=True`` (torch.nn.SyncBatchNorm) does on CPU: DDP
    refuses the model when Lightning wraps it; unwrapped, the layer refuses its first training
    forward. Both fail on every rank before any collective of their own."""
    errors = []
    model = make_net()
    model.body[4] = nn.BatchNorm2d(8)  # no subclass: Lightning would drop its ReLU silently
    try:
        trainer(root, sync_batchnorm=True).fit(model, loader())
    except ValueError as error:
        errors.append(f"{type(model.body[1]).__name__} in fit: {error}")
    layer = nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(3)).train()
    try:
        layer(torch.randn(2, 3, 4, 4))
    except ValueError as error:
        errors.append(f"forward: {error}")
    return errors


def reference() -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """One process, plain BatchNorm, each step on the concatenated batch of all ranks."""
    model = make_net()
    optimizer = model.configure_optimizers()
    _, x, y = dataset().tensors
    batches = []
    for _ in range(EPOCHS):
        for step in range(STEPS):
            rows = slice(step * WORLD * PER_RANK, (step + 1) * WORLD * PER_RANK)
            optimizer.zero_grad()
            F.cross_entropy(model(x[rows]), y[rows]).backward()
            optimizer.step()
            batches.append(list(range(SAMPLES))[rows])
    return model.state_dict(), batches


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    root = tmp_path_factory.mktemp("lightning")
    return run_on_ranks(lightning_rank, WORLD, str(root), timeout=150)


def test_layersync_plugin_trains_like_batchnorm_on_the_global_batch(results) -> None:
    expected, batches = reference()

    # Each rank got a different half of every global batch.
    for step, batch in enumerate(batches):
        halves = [set(r["seen"][step]) for r in results]
        assert len(halves[0]) == len(halves[1]) == PER_RANK and not halves[0] & halves[1]
        assert halves[0] | halves[1] == set(batch)

    synced = {"body.1": "SyncBatchNorm", "body.4": "SyncBatchNormAct", "body.8": "SyncBatchNorm"}
    plain = {"body.1": "BatchNorm2d", "body.4": "BNReLU", "body.8": "BatchNorm1d"}
    for result in results:
        assert result["types"] == {"training": synced, "checkpoint": synced, "after": plain}
    # Both ranks hold the same weights and statistics, those of the single process up to
    # float32 rounding over 12 momentum-SGD steps (measured: 2.6e-6 at most, on a running_var
    # of 3.3; relative differences below 1e-6).
    state = results[0]["state"]
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(results[1]["state"][key], state[key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(state[key], value, rtol=2e-6, atol=1e-6, msg=key)
    assert state["body.8.num_batches_tracked"] == EPOCHS * STEPS

    # Saved by rank 0 at the end of the last epoch, while the layers were synchronized: plain
    # BatchNorm state that loads strictly into the unconverted model.
    checkpoint = torch.load(results[0]["checkpoint"], weights_only=True)
    fresh = make_net()
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, results[0]["state"][key], rtol=0, atol=0, msg=key)


def test_sync_group_size_makes_groups_of_that_many_ranks_once(results) -> None:
    for result in results:
        assert result["groups"] == {"sizes": [2, 1], "cached": True, "world": None}


def test_lightning_sync_batchnorm_refuses_cpu(results) -> None:
    """Why the plugin exists: ``Trainer(sync_batchnorm=True)`` converts to
    torch.nn.SyncBatchNorm, which DDP refuses on CPU, as the layer itself does. Lightning's
    revert after the failed fit leaves its ``_BatchNormXd``, not the BatchNorm2d it was."""
    for result in results:
        assert result["torch_syncbn"] == [
            "_BatchNormXd in fit: SyncBatchNorm layers only work with GPU modules",
            "forward: SyncBatchNorm expected input tensor to be on GPU or XPU or privateuseone",
        ]


# --------------------------------------------------------------------------- in this process


def test_apply_and_revert_round_trip_without_distributed() -> None:
    model, plugin = make_net(), SyncBNLayerSync()
    params = [id(p) for p in model.parameters()]
    with syncbn.registered_converter(BNReLU, convert_bnrelu, revert_bnrelu):
        assert plugin.apply(model) is model
        assert set(model.bn_types().values()) == {"SyncBatchNorm", "SyncBatchNormAct"}
        assert plugin.revert(model) is model
    assert model.bn_types() == {
        "body.1": "BatchNorm2d",
        "body.4": "BNReLU",
        "body.8": "BatchNorm1d",
    }
    assert [id(p) for p in model.parameters()] == params


def test_unregistered_subclass_fails_before_anything_changes() -> None:
    model = make_net()
    with pytest.raises(syncbn.UnsupportedBatchNormError, match="BNReLU"):
        SyncBNLayerSync().apply(model)
    assert model.bn_types()["body.1"] == "BatchNorm2d"


def test_constructor_arguments_and_pickling() -> None:
    assert repr(SyncBNLayerSync(sync_group_size=2)) == "SyncBNLayerSync(sync_group_size=2)"
    assert isinstance(SyncBNLayerSync(), pl.plugins.LayerSync)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="sync_group_size"):
            SyncBNLayerSync(sync_group_size=bad)
    with pytest.raises(ValueError, match="not both"):
        SyncBNLayerSync(sync_group_size=2, process_group=object())  # type: ignore[arg-type]
    copy = pickle.loads(
        pickle.dumps(SyncBNLayerSync(sync_group_size=2))
    )  # ddp_spawn pickles the Trainer
    assert copy.sync_group_size == 2 and copy.sync_group is not None
    with pytest.raises(RuntimeError, match="init_process_group"):
        copy.sync_group()  # groups need torch.distributed


def test_import_syncbn_does_not_import_lightning() -> None:
    code = (
        "import sys, syncbn, syncbn.integrations\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'lightning', 'pytorch_lightning', 'ray', 'fastapi'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
