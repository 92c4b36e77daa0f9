"""syncbn's custom operators without torch.distributed: their fake kernels and autograd
registration pass ``torch.library.opcheck`` for every layout, and a converted model compiles
with ``fullgraph=True`` as plain batch norm (the not-initialized fast path). Compiled models on
real gloo ranks are in ``tests/ranks/test_syncbn_compile.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from compilekit import assert_same_steps, local_batches, make_model, train_then_eval

import syncbn
from syncbn import _ops


@pytest.mark.parametrize(
    "layout", ["contiguous", "channels_last", "permuted", "sliced", "float16", "empty"]
)
def test_operators_pass_opcheck(layout: str) -> None:
    """Fake kernels (shapes, dtypes, strides) and the autograd registration agree with the
    real kernels (world size 1: no collective)."""
    x = torch.randn(4, 6, 5, 3) * 2 + 1
    x = {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "permuted": x.transpose(0, -1).contiguous().transpose(0, -1),
        "sliced": x[:, ::2],
        "float16": x.half(),
        "empty": x[:0],
    }[layout].requires_grad_()
    channels = x.size(1)
    weight = (torch.rand(channels) + 0.5).requires_grad_()
    bias = torch.randn(channels).requires_grad_()
    args = (x, weight, bias, 1e-5, "", 1)
    if layout == "empty":  # alone, an empty batch fails the forward: only the backward
        stats = [torch.zeros(channels, dtype=torch.float64)] * 2 + [torch.tensor(8.0).double()]
    else:
        torch.library.opcheck(_ops.batch_norm, args)
        _, *stats = _ops.batch_norm(*args)
    for need_input in (True, False):
        backward_args = (torch.randn_like(x), x.detach(), weight.detach(), *stats, 1e-5, "", 1)
        torch.library.opcheck(_ops.batch_norm_backward_op, (*backward_args, need_input))


def test_without_distributed_compiles_as_plain_batchnorm() -> None:
    """The not-initialized fast path (momentum float and None) compiles too; recording is
    eager-only, so a compiled call inside record_stats records nothing."""
    assert not dist.is_initialized()
    batches = local_batches(0, [6])
    eager = train_then_eval(make_model(), batches)
    model = make_model()
    compiled_model = torch.compile(model, fullgraph=True, backend="aot_eager")
    try:
        assert_same_steps(train_then_eval(compiled_model, batches), eager, "world 1")
        model.train()
        with syncbn.record_stats(model) as rec:
            compiled_model(batches[0][0])
        assert rec.layers == {} and rec.collectives == 0
    finally:
        torch._dynamo.reset()
