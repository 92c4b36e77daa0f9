"""A user's batch norm + activation subclass (``BNReLU``) and its converters, deterministic
parameters and a global batch, for the converter tests at world 1
(``tests/unit/test_syncbn_convert.py``, ``test_syncbn_timm.py``) and on 2 gloo ranks
(``tests/ranks/test_syncbn_convert_ranks.py``).
"""

from __future__ import annotations

import torch
from torch import nn

import syncbn

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
