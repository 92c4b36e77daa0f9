"""convert_sync_batchnorm on batch norm subclasses: the converter registry, timm's layers, and
the refusal of unregistered subclasses, at world 1 and on 2 real gloo ranks."""

from __future__ import annotations

import ast
import copy
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import syncbn
from syncbn.launch import run_on_ranks

CHANNELS = 4


class BNReLU(nn.BatchNorm2d):
    """A user's batch norm + activation subclass: what a plain SyncBatchNorm would drop."""

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.relu = nn.ReLU()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.relu(super().forward(input))


def convert_bnrelu(bn: BNReLU, process_group) -> syncbn.SyncBatchNormAct:
    return syncbn.SyncBatchNormAct.from_batchnorm(bn, process_group, act=bn.relu)


def revert_bnrelu(converted: syncbn.SyncBatchNormAct) -> BNReLU:
    out = BNReLU(
        converted.num_features,
        eps=converted.eps,
        momentum=converted.momentum,
        affine=converted.affine,
        track_running_stats=converted.track_running_stats,
    )
    out.relu = converted.act
    return syncbn.share_batchnorm_state(converted, out)


class BNSiLU(nn.BatchNorm2d):
    """A subclass nobody registers a converter for."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(super().forward(input))


class BNReLUVariant(BNReLU):
    """A subclass of a registered class: not covered by its parent's converter."""


class TorchSyncBNAct(nn.SyncBatchNorm):
    """A subclass of torch's SyncBatchNorm: unregistered too."""


@pytest.fixture
def bnrelu_registered():
    with syncbn.registered_converter(BNReLU, convert_bnrelu, revert_bnrelu):
        yield


def init_bn(bn: nn.Module, seed: int = 7) -> nn.Module:
    """Random affine parameters; biases around zero so the activation clips part of the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
    return bn


def global_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(n, CHANNELS, 5, 3, generator=gen) * 2 + torch.arange(CHANNELS).view(1, -1, 1, 1)
    return x, torch.randn(n, CHANNELS, 5, 3, generator=gen)


def _small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, CHANNELS, 3),
        init_bn(BNReLU(CHANNELS)),
        nn.Conv2d(CHANNELS, 2, 1),
        nn.BatchNorm2d(2),
    )


def test_registered_subclass_keeps_its_behaviour_through_convert_and_revert(
    bnrelu_registered,
) -> None:
    model = _small_model()
    reference = copy.deepcopy(model)
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    relu = model[1].relu
    x = torch.randn(6, 3, 7, 7)

    converted = syncbn.convert_sync_batchnorm(model)
    assert converted is model
    assert type(converted[1]) is syncbn.SyncBatchNormAct
    assert type(converted[3]) is syncbn.SyncBatchNorm
    assert converted[1].act is relu
    assert [id(p) for p in converted.parameters()] == params
    assert list(converted.state_dict()) == keys

    # The activation is really there: without it the outputs of layer 1 would go negative.
    plain = nn.BatchNorm2d(CHANNELS)
    plain.load_state_dict(reference[1].state_dict())
    assert (plain(reference[0](x)) < 0).any()
    for mode in ("train", "eval"):
        getattr(reference, mode)()
        getattr(converted, mode)()
        hidden = reference[0](x)
        torch.testing.assert_close(converted[1](hidden), reference[1](hidden), atol=1e-6, rtol=0)
        torch.testing.assert_close(converted(x), reference(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(converted[1].running_mean, reference[1].running_mean)

    reverted = syncbn.revert_sync_batchnorm(converted)
    assert type(reverted[1]) is BNReLU and type(reverted[3]) is nn.BatchNorm2d
    assert not hasattr(reverted[1], syncbn.convert.CONVERTED_FROM)
    assert [id(p) for p in reverted.parameters()] == params
    assert list(reverted.state_dict()) == keys
    for mode in ("eval", "train"):
        getattr(reference, mode)()
        getattr(reverted, mode)()
        torch.testing.assert_close(reverted(x), reference(x), atol=1e-6, rtol=0)


def test_registered_subclass_converts_at_the_root(bnrelu_registered) -> None:
    bn = init_bn(BNReLU(CHANNELS, momentum=None, eps=1e-3))
    converted = syncbn.convert_sync_batchnorm(bn, process_group="group-sentinel")
    assert isinstance(converted, syncbn.SyncBatchNormAct)
    assert converted.process_group == "group-sentinel"
    assert (converted.momentum, converted.eps) == (None, 1e-3)
    assert converted.weight is bn.weight and converted.running_var is bn.running_var
    assert syncbn.convert_sync_batchnorm(converted) is converted  # idempotent
    reverted = syncbn.revert_sync_batchnorm(converted)
    assert type(reverted) is BNReLU and reverted.weight is bn.weight


def bnrelu_rank(rank: int, world_size: int, sizes: list[int]) -> dict[str, object]:
    """This rank's slice of the global batch through a converted BNReLU (train mode)."""
    x, grad = global_batch(sum(sizes))
    start = sum(sizes[:rank])
    x = x[start : start + sizes[rank]].clone().requires_grad_()
    model = nn.Sequential(init_bn(BNReLU(CHANNELS)))
    with syncbn.registered_converter(BNReLU, convert_bnrelu, revert_bnrelu):
        model = syncbn.convert_sync_batchnorm(model)
    out = model(x)
    out.backward(grad[start : start + sizes[rank]])
    return {
        "type": type(model[0]).__name__,
        "out": out.detach(),
        "dx": x.grad,
        "running_mean": model[0].running_mean,
        "running_var": model[0].running_var,
    }


def test_registered_subclass_synchronizes_across_two_ranks() -> None:
    sizes = [2, 5]
    results = run_on_ranks(bnrelu_rank, 2, sizes)
    x, grad = global_batch(sum(sizes))
    x.requires_grad_()
    reference = init_bn(BNReLU(CHANNELS))
    out = reference(x)
    out.backward(grad)
    assert all(r["type"] == "SyncBatchNormAct" for r in results)
    assert (out == 0).any() and (out > 0).any()
    for key, expected in (("out", out.detach()), ("dx", x.grad)):
        got = torch.cat([r[key] for r in results])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=key)
    for r in results:
        torch.testing.assert_close(r["running_mean"], reference.running_mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(r["running_var"], reference.running_var, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [BNSiLU, BNReLUVariant, TorchSyncBNAct])
def test_unregistered_subclass_raises_and_leaves_the_model_alone(bnrelu_registered, cls) -> None:
    model = nn.Sequential(nn.BatchNorm2d(3), BNReLU(3), nn.Sequential(cls(3)))
    before = list(model.named_modules())
    with pytest.raises(syncbn.UnsupportedBatchNormError) as info:
        syncbn.convert_sync_batchnorm(model)
    message = str(info.value)
    assert re.search(re.escape(f"{cls.__module__}.{cls.__qualname__}"), message), message
    assert "syncbn.register_converter" in message
    assert isinstance(info.value, TypeError)
    # Checked before any swap: the exact and the registered layer before it are untouched.
    assert list(model.named_modules()) == before


def test_uninitialized_lazy_batch_norm_raises_before_any_swap() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3), nn.LazyBatchNorm1d())
    before = list(model.named_modules())
    with pytest.raises(ValueError, match="uninitialized lazy"):
        syncbn.convert_sync_batchnorm(model)
    assert list(model.named_modules()) == before
    model(torch.randn(4, 3))  # the lazy layer becomes a BatchNorm1d
    converted = syncbn.convert_sync_batchnorm(model)
    assert all(type(m) is syncbn.SyncBatchNorm for m in converted)
    assert all(m.torch_class is nn.BatchNorm1d for m in converted)


def test_exact_classes_convert_and_revert_and_converting_twice_is_a_no_op(
    bnrelu_registered,
) -> None:
    model = nn.Sequential(
        nn.BatchNorm1d(3),
        nn.BatchNorm2d(3, affine=False),
        nn.BatchNorm3d(3, momentum=None).eval(),
        nn.SyncBatchNorm(3, track_running_stats=False),
        BNReLU(3),
        syncbn.SyncBatchNorm(3),
    )
    classes = [type(m) for m in model]
    already = model[5]
    converted = syncbn.convert_sync_batchnorm(model)
    assert [type(m) for m in converted] == [syncbn.SyncBatchNorm] * 4 + [
        syncbn.SyncBatchNormAct,
        syncbn.SyncBatchNorm,
    ]
    assert converted[5] is already
    assert [m.torch_class for m in converted[:4]] == [*classes[:3], None]
    assert not converted[2].training and converted[2].momentum is None

    layers = list(converted.modules())
    again = syncbn.convert_sync_batchnorm(converted)
    assert again is converted and list(again.modules()) == layers

    converted[3](torch.randn(2, 3, 4, 4))  # torch's SyncBatchNorm: dims are learnt from input
    converted[5](torch.randn(2, 3, 4))
    reverted = syncbn.revert_sync_batchnorm(converted)
    assert [type(m) for m in reverted] == [*classes[:3], nn.BatchNorm2d, BNReLU, nn.BatchNorm1d]


def test_register_converter_validates_and_cleans_up() -> None:
    with pytest.raises(TypeError, match="built in"):
        syncbn.register_converter(nn.BatchNorm2d, convert_bnrelu, revert_bnrelu)
    with pytest.raises(TypeError, match="already"):
        syncbn.register_converter(syncbn.SyncBatchNormAct, convert_bnrelu, revert_bnrelu)
    with pytest.raises(TypeError, match="batch norm class"):
        syncbn.register_converter(nn.ReLU, convert_bnrelu, revert_bnrelu)

    syncbn.register_converter(BNReLU, convert_bnrelu, revert_bnrelu)
    try:
        with pytest.raises(ValueError, match="already registered"):
            syncbn.register_converter(BNReLU, convert_bnrelu, revert_bnrelu)
        converted = syncbn.convert_sync_batchnorm(BNReLU(2))
    finally:
        syncbn.unregister_converter(BNReLU)
    with pytest.raises(syncbn.UnsupportedBatchNormError, match="register_converter"):
        syncbn.convert_sync_batchnorm(BNReLU(2))
    # Reverting needs the converter too, and says so.
    with pytest.raises(syncbn.UnsupportedBatchNormError, match="register_converter"):
        syncbn.revert_sync_batchnorm(converted)

    with syncbn.registered_converter(BNReLU, convert_bnrelu, revert_bnrelu):
        assert type(syncbn.convert_sync_batchnorm(BNReLU(2))) is syncbn.SyncBatchNormAct
    with pytest.raises(syncbn.UnsupportedBatchNormError):
        syncbn.convert_sync_batchnorm(BNReLU(2))


def test_revert_refuses_a_syncbatchnorm_subclass_it_cannot_undo() -> None:
    layer = syncbn.SyncBatchNormAct(3, act=nn.ReLU())
    layer(torch.randn(4, 3, 2, 2))
    with pytest.raises(syncbn.UnsupportedBatchNormError, match="SyncBatchNormAct"):
        syncbn.revert_sync_batchnorm(layer)


# --- timm ---------------------------------------------------------------------------------
# timm cannot be imported here (it imports torchvision, whose wheel does not load with this
# CPU torch), so these tests put a STAND-IN for ``timm.layers.norm_act`` into sys.modules. Its
# two classes copy the structure of timm's (huggingface/pytorch-image-models,
# timm/layers/norm_act.py): BatchNormAct2d(nn.BatchNorm2d) with the same constructor and
# ``drop`` then ``act`` children applied after the batch norm, and SyncBatchNormAct
# (nn.SyncBatchNorm), what timm's own convert_sync_batchnorm makes, applying ``drop`` and
# ``act`` when present.


class Shift(nn.Module):
    """A deterministic "drop" layer whose order relative to the activation matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - 0.5


def _stand_in_norm_act() -> types.ModuleType:
    module = types.ModuleType("timm.layers.norm_act")

    def _create_act(act_layer, act_kwargs=None, inplace=False, apply_act=True) -> nn.Module:
        act_kwargs = dict(act_kwargs or {})
        if act_layer is None or not apply_act:
            return nn.Identity()
        if inplace:
            act_kwargs["inplace"] = inplace
        return act_layer(**act_kwargs)

    class BatchNormAct2d(nn.BatchNorm2d):
        __module__ = "timm.layers.norm_act"
        __qualname__ = "BatchNormAct2d"

        def __init__(
            self,
            num_features,
            eps=1e-5,
            momentum=0.1,
            affine=True,
            track_running_stats=True,
            apply_act=True,
            act_layer=nn.ReLU,
            act_kwargs=None,
            inplace=True,
            drop_layer=None,
            device=None,
            dtype=None,
        ):
            super().__init__(
                num_features,
                eps=eps,
                momentum=momentum,
                affine=affine,
                track_running_stats=track_running_stats,
                device=device,
                dtype=dtype,
            )
            self.drop = drop_layer() if drop_layer is not None else nn.Identity()
            self.act = _create_act(act_layer, act_kwargs, inplace, apply_act)

        def forward(self, x):
            x = super().forward(x)
            x = self.drop(x)
            return self.act(x)

    class SyncBatchNormAct(nn.SyncBatchNorm):
        __module__ = "timm.layers.norm_act"
        __qualname__ = "SyncBatchNormAct"

        def forward(self, x):
            x = super().forward(x)
            if hasattr(self, "drop"):
                x = self.drop(x)
            if hasattr(self, "act"):
                x = self.act(x)
            return x

    module.BatchNormAct2d = BatchNormAct2d
    module.SyncBatchNormAct = SyncBatchNormAct
    return module


@pytest.fixture
def timm_norm_act(monkeypatch):
    """The stand-in ``timm.layers.norm_act`` (see above), importable while the test runs."""
    norm_act = _stand_in_norm_act()
    timm = types.ModuleType("timm")
    layers = types.ModuleType("timm.layers")
    timm.layers, layers.norm_act = layers, norm_act
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.layers", layers)
    monkeypatch.setitem(sys.modules, "timm.layers.norm_act", norm_act)
    yield norm_act
    syncbn.unregister_converter(norm_act.BatchNormAct2d)
    syncbn.unregister_converter(norm_act.SyncBatchNormAct)


def test_timm_batchnormact2d_converts_without_registration(timm_norm_act) -> None:
    model = nn.Sequential(
        init_bn(timm_norm_act.BatchNormAct2d(CHANNELS, drop_layer=Shift)),
        init_bn(timm_norm_act.BatchNormAct2d(CHANNELS, act_layer=nn.PReLU, inplace=False), 3),
        init_bn(timm_norm_act.BatchNormAct2d(CHANNELS, apply_act=False), 5),
    )
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    assert "1.act.weight" in keys
    layers = list(model)
    x = global_batch(6)[0]

    converted = syncbn.convert_sync_batchnorm(model)
    assert all(type(m) is syncbn.SyncBatchNormAct for m in converted)
    assert list(converted.state_dict()) == keys
    for old, new in zip(layers, converted, strict=True):
        assert new.act is old.act and new.drop is old.drop and new.weight is old.weight
    for mode in ("train", "eval"):
        getattr(reference, mode)()
        getattr(converted, mode)()
        torch.testing.assert_close(converted(x), reference(x), atol=1e-6, rtol=0)

    reverted = syncbn.revert_sync_batchnorm(converted)
    assert all(type(m) is timm_norm_act.BatchNormAct2d for m in reverted)
    for old, new in zip(layers, reverted, strict=True):
        assert new.act is old.act and new.drop is old.drop
        assert new.weight is old.weight and new.running_var is old.running_var
    assert list(reverted.state_dict()) == keys
    for mode in ("eval", "train"):
        getattr(reference, mode)()
        getattr(reverted, mode)()
        torch.testing.assert_close(reverted(x), reference(x), atol=1e-6, rtol=0)


def test_timm_syncbatchnormact_converts_too(timm_norm_act) -> None:
    # As timm's own convert_sync_batchnorm builds it.
    layer = init_bn(timm_norm_act.SyncBatchNormAct(CHANNELS))
    layer.act, layer.drop = nn.ReLU(), Shift()
    reference = copy.deepcopy(layer)
    x = global_batch(6)[0]
    converted = syncbn.convert_sync_batchnorm(layer)
    assert type(converted) is syncbn.SyncBatchNormAct and converted.act is layer.act
    torch.testing.assert_close(converted(x), reference(x), atol=1e-6, rtol=0)
    reverted = syncbn.revert_sync_batchnorm(converted)
    assert type(reverted) is timm_norm_act.SyncBatchNormAct and reverted.drop is layer.drop
    torch.testing.assert_close(reverted(x), reference(x), atol=1e-6, rtol=0)


def test_a_user_converter_for_timm_is_kept(timm_norm_act) -> None:
    calls = []

    def convert(bn, process_group):
        calls.append(bn)
        return syncbn.SyncBatchNormAct.from_batchnorm(bn, process_group, act=bn.act, drop=bn.drop)

    syncbn.register_converter(timm_norm_act.BatchNormAct2d, convert, revert_bnrelu)
    syncbn.convert_sync_batchnorm(timm_norm_act.BatchNormAct2d(2))
    assert len(calls) == 1


def test_other_timm_subclasses_still_raise(timm_norm_act) -> None:
    class SplitBatchNorm2d(nn.BatchNorm2d):
        __module__ = "timm.layers.split_batchnorm"

    match = re.escape("timm.layers.split_batchnorm")
    with pytest.raises(syncbn.UnsupportedBatchNormError, match=match):
        syncbn.convert_sync_batchnorm(SplitBatchNorm2d(2))


def test_import_syncbn_does_not_import_timm_or_its_converters() -> None:
    code = (
        "import sys, torch, syncbn\n"
        "syncbn.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(2)))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('timm', 'syncbn._timm')))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "order",
    [
        ("syncbn._timm", "syncbn.convert", "syncbn.converters"),
        ("syncbn.convert", "syncbn.converters", "syncbn._timm"),
    ],
)
def test_timm_converters_and_convert_import_in_either_order(order) -> None:
    code = "".join(f"import {name}\n" for name in order) + (
        "import syncbn\n"
        "assert syncbn.convert.convert_sync_batchnorm is syncbn.convert_sync_batchnorm\n"
        "assert syncbn._timm.timm_converters() == []  # no timm here\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _syncbn_imports() -> tuple[dict[str, set[str]], list[str]]:
    """The syncbn modules each syncbn module imports (lazy imports in functions included;
    ``syncbn/__init__`` left out: importing any module runs it), and the private names one
    module takes from another (``from syncbn.m import _x``, ``m._x``)."""
    package = Path(syncbn.__file__).parent
    names = {f"syncbn.{path.stem}" for path in package.glob("*.py")} - {"syncbn.__init__"}
    graph: dict[str, set[str]] = {}
    private: list[str] = []
    for path in sorted(package.glob("*.py")):
        here = "syncbn" if path.stem == "__init__" else f"syncbn.{path.stem}"
        imported: set[str] = set()
        aliases: dict[str, str] = {}  # local name -> syncbn module
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name in names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    if submodule in names:  # from syncbn import _timm
                        imported.add(submodule)
                        aliases[alias.asname or alias.name] = submodule
                    elif node.module in names:
                        imported.add(node.module)
                        if alias.name.startswith("_"):
                            private.append(f"{here} imports {node.module}.{alias.name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
            ):
                private.append(f"{here} reads {aliases[node.value.id]}.{node.attr}")
        if here != "syncbn":
            graph[here] = imported - {here}
    return graph, private


def test_syncbn_modules_import_no_circle_and_no_private_names() -> None:
    graph, private = _syncbn_imports()
    assert {"syncbn.convert", "syncbn.converters", "syncbn._timm"} <= set(graph)
    assert not private, private
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            cycle = " -> ".join((*path[path.index(module) :], module))
            pytest.fail(f"import circle: {cycle}")
        if module not in done:
            for target in sorted(graph[module]):
                visit(target, (*path, module))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())
