"""syncbn.convert_group_norm: every batch norm becomes a GroupNorm that keeps its affine
parameters and does not depend on the batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import syncbn
from contract.model_choice import NORM_CHANNELS
from workers.nets import build_model


def _numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


@pytest.mark.parametrize(
    ("channels", "groups"), [(64, 32), (48, 24), (16, 16), (7, 7), (3, 3), (1, 1), (96, 32)]
)
def test_group_count_is_the_largest_divisor_up_to_32(channels: int, groups: int) -> None:
    assert syncbn.group_count(channels) == groups


@pytest.mark.parametrize(
    ("kind", "shape"),
    [("mlp", (64,)), ("resnet", (1, 8, 8)), ("cnn1d", (2, 16)), ("unet", (1, 12, 12))],
)
def test_every_batchnorm_becomes_a_groupnorm_with_the_same_parameters(kind: str, shape) -> None:
    torch.manual_seed(0)
    model = build_model(kind, shape, 3)
    for m in model.modules():  # affine parameters that are not the defaults
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    bns = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)
    ]
    params = _numel(model.parameters())
    weights = {n: (m.weight.clone(), m.bias.clone(), m.eps) for n, m in bns}

    converted = syncbn.convert_group_norm(model)

    assert _numel(converted.parameters()) == params
    assert list(converted.buffers()) == []  # no running statistics
    for name, (weight, bias, eps) in weights.items():
        gn = converted.get_submodule(name)
        assert isinstance(gn, nn.GroupNorm)
        assert gn.num_groups == syncbn.group_count(gn.num_channels)
        assert gn.eps == eps
        torch.testing.assert_close(gn.weight.detach(), weight)
        torch.testing.assert_close(gn.bias.detach(), bias)


@pytest.mark.parametrize(
    ("kind", "shape"), [("mlp", (64,)), ("resnet", (1, 8, 8)), ("unet", (1, 12, 12))]
)
def test_outputs_do_not_depend_on_the_batch(kind: str, shape) -> None:
    torch.manual_seed(1)
    model = syncbn.convert_group_norm(build_model(kind, shape, 3)).train()
    x = torch.randn(8, *shape)
    together = model(x)
    alone = torch.cat([model(x[i : i + 1]) for i in range(8)])  # batch 1, training mode
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)
    plain = build_model(kind, shape, 3).train()  # BatchNorm does depend on it
    assert not torch.allclose(plain(x[:2])[:1], plain(x[:4])[:1], atol=1e-3)


def test_batchnorm1d_on_features_is_groupnorm_over_channel_groups() -> None:
    bn = nn.BatchNorm1d(6)
    gn = syncbn.convert_group_norm(bn, num_groups=3)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 3
    x = torch.randn(5, 6)
    expected = torch.nn.functional.group_norm(x, 3, gn.weight, gn.bias, gn.eps)
    torch.testing.assert_close(gn(x), expected)


def test_a_given_group_count_must_divide_every_layer_and_leaves_the_model_unchanged() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6)
    )
    with pytest.raises(ValueError, match="layer '3': 4 groups do not divide its 6 channels"):
        syncbn.convert_group_norm(model, num_groups=4)
    assert isinstance(model[1], nn.BatchNorm2d) and isinstance(model[3], nn.BatchNorm2d)
    converted = syncbn.convert_group_norm(model, num_groups=2)
    assert [m.num_groups for m in converted.modules() if isinstance(m, nn.GroupNorm)] == [2, 2]


def test_synchronized_layers_convert_and_subclasses_are_refused() -> None:
    model = syncbn.convert_sync_batchnorm(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    assert isinstance(syncbn.convert_group_norm(model)[1], nn.GroupNorm)

    class BatchNormWithExtras(nn.BatchNorm2d):
        pass

    with pytest.raises(TypeError, match=r"layer '0'.*BatchNormWithExtras"):
        syncbn.convert_group_norm(nn.Sequential(BatchNormWithExtras(4)))


def test_a_shared_layer_stays_shared_and_the_mode_is_kept() -> None:
    bn = nn.BatchNorm1d(4).eval()
    model = nn.ModuleDict({"a": bn, "b": bn})
    converted = syncbn.convert_group_norm(model)
    assert converted["a"] is converted["b"]
    assert isinstance(converted["a"], nn.GroupNorm) and not converted["a"].training


@pytest.mark.parametrize(
    ("kind", "shape"),
    [("mlp", (64,)), ("resnet", (1, 8, 8)), ("cnn1d", (2, 16)), ("unet", (1, 12, 12))],
)
def test_the_contract_knows_each_built_in_models_batchnorm_channels(kind: str, shape) -> None:
    """contract.model_choice.NORM_CHANNELS (the submit-time check of group_norm_groups) must
    match the networks: every channel count it lists occurs, and no other."""
    model = build_model(kind, shape, 3)
    found = {
        m.num_features for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    assert found == set(NORM_CHANNELS[kind])
