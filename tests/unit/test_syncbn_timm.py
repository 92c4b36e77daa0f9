"""convert_sync_batchnorm on timm's batch norm + activation layers (a stand-in of
``timm.layers.norm_act``) without registration, a user's converter for them kept, other timm
subclasses refused; syncbn's modules import each other without a circle or private names.
``init_bn`` and the global batch are in ``convertkit.py``; what ``import syncbn`` loads (no timm,
no timm converters, in either order) is checked in a fresh process in
``tests/e2e/test_imports.py``.
"""

from __future__ import annotations

import ast
import copy
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from convertkit import CHANNELS, global_batch, init_bn, revert_bnrelu
from torch import nn

import syncbn

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
