"""The model, batches and float64 reference of the ``syncbn.precise_bn`` tests
(``tests/ranks/test_precise_bn.py`` on 1-4 gloo ranks, ``tests/unit/test_precise_bn_local.py``
without torch.distributed): a small CNN whose BN layers differ in affine, momentum and running
statistics, each rank's uneven (or empty) batches, and snapshots of the running statistics.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

# Batch sizes per rank, per world size: uneven counts and sizes, an empty rank at k = 3 and 4.
PLANS = {
    1: [[4, 3, 5, 2]],
    2: [[2, 5], [3, 3, 4, 2]],
    3: [[3, 2], [], [4, 2, 3]],
    4: [[2, 2], [5, 3, 2], [], [3]],
}
NUM_BATCHES = 3  # a rank with more batches uses the first three
UPDATED = ("1", "4", "10")  # the layers with running statistics
CHANNELS = {"1": 8, "4": 6, "10": 5}
PACKED = sum(2 * c + 1 for c in CHANNELS.values()) + 1  # + the error flag


def make_model() -> torch.nn.Sequential:
    """Conv-BN-ReLU-Conv-BN-ReLU-BN(no running stats)-pool-Linear-BN1d, random weights."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 6, 3, bias=False),
            torch.nn.BatchNorm2d(6, affine=False, momentum=None),
            torch.nn.ReLU(),
            torch.nn.BatchNorm2d(6, track_running_stats=False),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(6, 5),
            torch.nn.BatchNorm1d(5, momentum=0.3),
        )
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, _BatchNorm) and m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_()
    return model


def rank_batches(world_size: int, rank: int) -> list[torch.Tensor]:
    """This rank's input batches (spatial sizes vary too)."""
    out = []
    for b, size in enumerate(PLANS[world_size][rank]):
        gen = torch.Generator().manual_seed(100 * world_size + 10 * rank + b)
        x = torch.randn(size, 3, 7 + b % 2, 6 + b % 3, generator=gen) * 2
        out.append(x + torch.tensor([3.0, -1.0, 5.0]).view(1, 3, 1, 1))
    return out


def as_items(batches: list[torch.Tensor], rank: int) -> list:
    """The accepted batch forms: tensors, (x, y) tuples, {"x": x, ...} dicts."""
    kind = rank % 3
    if kind == 1:
        return [(x, torch.zeros(len(x))) for x in batches]
    if kind == 2:
        return [{"x": x, "y": torch.zeros(len(x))} for x in batches]
    return batches


def stale_stats(model: torch.nn.Module, rank: int) -> None:
    """Different, wrong running statistics on every rank (as after local batch norm)."""
    gen = torch.Generator().manual_seed(50 + rank)
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.num_batches_tracked.fill_(7)


def snapshot(model: torch.nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "momentum": [m.momentum for m in model.modules() if isinstance(m, _BatchNorm)],
        "stats": {
            name: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
            for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.running_mean is not None
        },
    }


def assert_unchanged(before: dict, after: dict) -> None:
    assert after["modes"] == before["modes"]
    for name in UPDATED:
        mean, var, tracked = after["stats"][name]
        assert torch.equal(mean, before["stats"][name][0]), name
        assert torch.equal(var, before["stats"][name][1]), name
        assert tracked == before["stats"][name][2], name


def reference_stats(world_size: int, ranks: list[int]) -> dict[str, tuple]:
    """Float64: the same model (train-mode batch norm) over every rank's batches in turn; each
    layer's mean and unbiased variance over all inputs it saw."""
    model = make_model().double().train()
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in UPDATED}

    def capture(name):
        def hook(module, args):
            seen[name].append(args[0].transpose(0, 1).reshape(module.num_features, -1))

        return hook

    for name in UPDATED:
        model.get_submodule(name).register_forward_pre_hook(capture(name))
    with torch.no_grad():
        for rank in ranks:
            for x in rank_batches(world_size, rank)[:NUM_BATCHES]:
                model(x.double())
    out = {}
    for name, chunks in seen.items():
        values = torch.cat(chunks, 1)
        out[name] = (values.mean(1), values.var(1, unbiased=True))
    return out


def assert_stats(got: dict, ref: dict) -> None:
    for name in UPDATED:
        mean, var, _ = got[name]
        torch.testing.assert_close(mean.double(), ref[name][0], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(var.double(), ref[name][1], rtol=1e-5, atol=1e-6, msg=name)
