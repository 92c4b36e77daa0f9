"""convert_sync_batchnorm on a registered batch norm subclass (``convertkit.BNReLU``) on 2 real
gloo ranks: the converted layers synchronize, and together equal the subclass on the global
batch. The registry at world 1 is in ``tests/unit/test_syncbn_convert.py``.
"""

from __future__ import annotations

import torch
from convertkit import CHANNELS, BNReLU, convert_bnrelu, global_batch, init_bn, revert_bnrelu
from torch import nn

import syncbn
from syncbn.launch import run_on_ranks


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
