"""Per-channel batch moments from sums around a shift: the formula the forward and precise_bn share.

Sums are taken around a per-channel shift k close to the data (a sample, a running mean), so
the centred values are O(std) and their sums lose nothing to cancellation when |mean| >> std:
``S1 = sum(x - k)``, ``S2 = sum((x - k)^2)`` over ``N`` values per channel. Then

    mean = k + S1/N,    var = S2/N - (S1/N)^2  (clamped at 0),    unbiased = var * N/(N - 1).

Sums around different shifts (one per rank) meet at the origin before an all_reduce:
``sum x = S1 + N k`` and ``sum x^2 = S2 + 2 k S1 + N k^2``; with k = 0 the formula above is
the plain one of those raw sums.

Everything is plain tensor ops with no branch on tensor values, so it traces under
``torch.compile`` (``fullgraph=True``) as well as it runs eagerly.
"""

from __future__ import annotations

import torch


def reduce_dims(input: torch.Tensor) -> list[int]:
    """All dims but the channel dim (1)."""
    return [0, *range(2, input.dim())]


def broadcast_shape(input: torch.Tensor) -> list[int]:
    """(1, C, 1, ...): a per-channel vector shaped to broadcast against ``input``."""
    return [1, input.size(1)] + [1] * (input.dim() - 2)


def shifted_sums(
    input: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``S1 = sum(x - shift)`` and ``S2 = sum((x - shift)^2)`` ((C,) each), in
    ``dtype``; ``shift`` is (C,)."""
    centred = input.to(dtype) - shift.to(dtype).view(broadcast_shape(input))
    dims = reduce_dims(input)
    s1 = centred.sum(dims)
    # `centred` is a fresh tensor: square it in place, so one temporary of the input's size is
    # live rather than two (fresh large buffers cost page faults on every call).
    s2 = centred.square_().sum(dims)
    return s1, s2


def unshifted_sums(
    s1: torch.Tensor, s2: torch.Tensor, count: int | torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum x`` and ``sum x^2`` from sums around ``shift`` (give float64 operands: the
    shift's square is added back)."""
    return s1 + count * shift, s2 + 2 * shift * s1 + count * shift * shift


def mean_var(
    s1: torch.Tensor,
    s2: torch.Tensor,
    count: int | torch.Tensor,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean ``shift + S1/N`` and biased variance ``S2/N - (S1/N)^2`` (at least 0)
    from sums around ``shift`` (the origin when None) over ``count`` = N values, an int or a
    0-d tensor. An empty batch (N = 0) gives mean ``shift`` (0 without one) and variance 0."""
    n = count.clamp_min(1) if isinstance(count, torch.Tensor) else max(count, 1)
    d = s1 / n
    var = (s2 / n - d * d).clamp_min(0)
    return (d if shift is None else shift + d), var


def unbiased_var(var: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Bessel's correction ``var * N/(N - 1)`` for a 0-d tensor ``count`` = N (N <= 1 leaves
    ``var * N``: 0 for an empty batch, ``var`` for a single value)."""
    return var * count / (count - 1).clamp_min(1)
