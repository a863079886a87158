"""The pure-torch fallback's short path: the loss without focusing or ``pos_weight``, in a dozen in-place operations
per chunk.

The general chunked loop (:func:`softmargin._chunks.loss_rows`) spells out :mod:`softmargin._formula` with about 25
small operations per chunk, each allocating its result; on the CPU their overhead, not the arithmetic, sets its
speed. This path computes the same stable form with fewer, fused operations into buffers reused across chunks:

    t = sigmoid(-|x|)                        (one operation; accurate for every x)
    e = 1 - y - [x < 0]                      (the sign taken from x's sign bit, so -0.0 and +0.0 agree with copysign)
    l = softplus(-|x|) + e * x               (``e * x`` is ``(1 - y) relu(x) + y relu(-x)``: no cancellation)
    dl/dx = e - copysign(t, x)               (``(1 - y) - sigmoid(-x)`` for x >= 0, ``sigmoid(x) - y`` below)

``e * x`` is ``0 * inf`` only for a right prediction at infinity, whose limit is 0 (NaN replaced by 0 there only: a
NaN logit still propagates through the ``softplus`` term). A weight (times a mask) is folded into ``e`` and the
``softplus`` term before they are added, so a zero weight removes an element whose loss is infinite; the weight is
first divided by a power of two no smaller than its largest value (exact), so ``w * l`` cannot overflow where the row
sum does not, and the row sums are multiplied back in float64.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._chunks import Rows

#: Elements per chunk of the short path (float32: 4 MiB per buffer).
PLAIN_CHUNK_ELEMENTS = 1 << 20


def _power_of_two_scale(weight: torch.Tensor) -> torch.Tensor:
    """A 0-d float64 tensor: a power of two >= max(weight) (1 for an all-zero weight), computed on the device."""
    _, exponent = torch.frexp(weight.detach().amax().to(torch.float64))
    return torch.ldexp(torch.ones((), dtype=torch.float64, device=weight.device), exponent)


def _chunk(a: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    return a if a is None or a.shape[0] == 1 else a[start:stop]


def plain_loss_rows(
    rows: Rows,
    label_smoothing: float,
    grad_scale: float | torch.Tensor,
    need_grad: bool,
    cdtype: torch.dtype,
    row_sums_out: torch.Tensor,
    grad_out: torch.Tensor | None,
    chunk_elements: int,
) -> None:
    """Weighted loss sums of each row (float64) into ``row_sums_out``, the gradient scaled per row into ``grad_out``.

    Args:
        rows: the (N, C) problem; ``rows.pos_weight`` must be None; ``rows.y`` dense, or sparse (dense chunks).
        label_smoothing: ``eps``: targets become ``y * (1 - eps) + eps / 2``.
        grad_scale: the gradient's factor: a float for every row, or an (N,) tensor (one per row).
        need_grad: whether to write ``grad_out``.
        cdtype: the compute dtype (float32, or float64 for float64 logits).
        row_sums_out: (N,) float64.
        grad_out: (N, C), the logits' dtype (or None without ``need_grad``).
        chunk_elements: elements per chunk: each of the four buffers (and a byte mask) holds one chunk.

    Example (what the torch backend does without options)::

        plain_loss_rows(Rows(x, y), 0.0, 1 / x.numel(), True, torch.float32, row_sums, grad, 1 << 20)
    """
    if rows.pos_weight is not None:
        raise ValueError("plain_loss_rows computes the loss without pos_weight: use softmargin._chunks.loss_rows")
    n, c = rows.num_rows, rows.num_classes
    device = rows.x.device
    step = max(1, min(n, chunk_elements // max(c, 1)))
    neg_abs, tail, sig, diff = (torch.empty((step, c), dtype=cdtype, device=device) for _ in range(4))
    half = torch.full((), 0.5, dtype=cdtype, device=device)
    # the weight divided by `back`, a power of two >= its largest value, so that w * l cannot overflow
    back = None if rows.weight is None else _power_of_two_scale(rows.weight)
    weight = None if rows.weight is None else rows.weight / back.to(cdtype)
    mask = None if rows.mask is None else rows.mask.to(cdtype) if rows.mask.shape[0] == 1 else rows.mask
    # the gradient's factor, negated (the loop computes -dl/dx), times `back`
    factor: Any = -grad_scale if back is None else back.to(cdtype) * -grad_scale
    if not isinstance(grad_scale, float):
        factor = factor.to(cdtype)[:, None]
    # the common case, one weight row for every row: the gradient's factor once per call
    same_weight = (weight is None or weight.shape[0] == 1) and (mask is None or mask.shape[0] == 1)
    row_weight = weight if mask is None else mask if weight is None else weight * mask
    if same_weight and row_weight is not None and isinstance(grad_scale, float):
        factor = row_weight * factor
    for start in range(0, n, step):
        stop = min(start + step, n)
        m = stop - start
        x, y = rows.x[start:stop], rows.y[start:stop]
        x = x if x.dtype == cdtype else x.to(cdtype)
        y = y if y.dtype == cdtype else y.to(cdtype)
        a, t, s, d = neg_abs[:m], tail[:m], sig[:m], diff[:m]
        torch.abs(x, out=a).neg_()  # -|x|
        torch.exp(a, out=t)
        t.log1p_()  # log1p(exp(-|x|))
        if need_grad:
            torch.sigmoid(a, out=s)  # sigmoid(-|x|)
        if label_smoothing:
            y = torch.mul(y, 1.0 - label_smoothing, out=d).add_(label_smoothing / 2)
        torch.copysign(half, x, out=a).add_(0.5)  # [x >= 0] by the sign bit (-0.0 counts as negative)
        torch.sub(y, a, out=d)  # d = y - [x >= 0] = -e: y itself where x < 0 (no rounding of 1 - y)
        if need_grad:
            torch.copysign(s, x, out=s).add_(d)  # -dl/dx = d + copysign(sigmoid(-|x|), x)
        w = row_weight if same_weight else _chunk_weight(weight, mask, start, stop, cdtype)
        if w is not None:
            d.mul_(w)  # folded into d before d * x, so that a zero weight times an infinite x is caught below
            t.mul_(w)
        torch.mul(d, x, out=a)  # d * x = -w ((1 - y) relu(x) + y relu(-x))
        a.nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)  # 0 * inf: a right prediction at infinity
        t.sub_(a)  # the weighted element loss
        torch.sum(t, dim=1, dtype=torch.float64, out=row_sums_out[start:stop])
        if need_grad:
            assert grad_out is not None
            if w is not None and not (same_weight and isinstance(grad_scale, float)):
                s.mul_(w)
            torch.mul(s, factor if isinstance(grad_scale, float) else factor[start:stop], out=grad_out[start:stop])
    if back is not None:
        row_sums_out.mul_(back)


def _chunk_weight(
    weight: torch.Tensor | None, mask: torch.Tensor | None, start: int, stop: int, cdtype: torch.dtype
) -> torch.Tensor | None:
    """Rows ``start:stop`` of weight times mask (either a (1, C) row, an (N, C) matrix or None)."""
    w = _chunk(weight, start, stop)
    mc = _chunk(mask, start, stop)
    if mc is None:
        return w
    return mc.to(cdtype) if w is None else w * mc
