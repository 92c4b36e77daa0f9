"""convert_sync_batchnorm on batch norm subclasses at world 1: the converter registry (a
registered subclass keeps its behaviour through convert and revert), the refusal of
unregistered subclasses before any swap, exact classes, and revert's limits. timm's layers are
in ``test_syncbn_timm.py``, a registered subclass on 2 gloo ranks in
``tests/ranks/test_syncbn_convert_ranks.py``; ``BNReLU`` and its converters in ``convertkit.py``.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from convertkit import CHANNELS, BNReLU, convert_bnrelu, init_bn, revert_bnrelu
from torch import nn

import syncbn


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
