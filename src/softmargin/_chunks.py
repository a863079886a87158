"""The chunked loop shared by the NumPy backend and the torch fallback: one piece of logic, two array namespaces.

Rows of the (N, C) problem are processed in chunks of about ``chunk_elements`` elements, so no temporary is larger
than a chunk. Per-row bookkeeping (the divisor of each sample's loss, the scale of each row's gradient, which samples
count in the batch mean) is computed here too, so both backends treat masks and empty batches alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._formula import element_loss_and_grad, element_loss_and_grad_options
from ._options import PLAIN, LossOptions  # noqa: F401  (PLAIN: re-exported for the backends)

Options = LossOptions  # the name the backends used before LossOptions was public


@dataclass
class Rows:
    """The problem laid out as rows: each optional operand is None, a (1, C) row or an (N, C) matrix."""

    x: Any
    y: Any
    weight: Any = None
    pos_weight: Any = None
    mask: Any = None

    @property
    def num_rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.x.shape[1])


def take_rows(a: Any, start: int, stop: int) -> Any:
    """Rows start:stop of an operand, or the operand itself where it is None or one row broadcast over all."""
    return a if a is None or a.shape[0] == 1 else a[start:stop]


def row_bookkeeping(
    rows: Rows, reduction: str, xp: Any, as_float64: Callable[[Any], Any], count: Callable[[Any], Any] | None = None
) -> tuple[Any, Any, float]:
    """(divisor of each row's loss, gradient scale of each row, number of rows in the batch mean).

    Without a mask every row is divided by C and counts; with one, a row is divided by its number of observed
    labels, and a row with none contributes 0 and is left out of the mean (a batch with nothing observed has loss
    0). Divisor and scale are floats when they are the same for every row, else (N,) float64 arrays. ``count``
    counts each row's observed labels of an (N, C) mask (default: a sum).
    """
    n, c = rows.num_rows, rows.num_classes
    if rows.mask is None or rows.mask.shape[0] == 1:
        divisor: Any = float(c if rows.mask is None else rows.mask.sum())
        counted = float(n) if (divisor or rows.mask is None) else 0.0
        scale: Any = 1.0 / divisor if divisor else (math.nan if rows.mask is None else 0.0)
    else:
        # int32: torch sums bytes to int64 10x slower
        divisor = as_float64(count(rows.mask) if count is not None else rows.mask.sum(1, dtype=xp.int32))
        observed = divisor > 0
        counted = float(observed.sum())
        scale = xp.where(observed, 1.0 / xp.where(observed, divisor, 1.0), 0.0)
    if reduction == "mean":
        if counted:
            scale = scale / counted
        else:  # nothing counts: torch's NaN for an empty batch, 0 for a batch whose labels are all missing
            scale = scale * (math.nan if rows.mask is None else 0.0)
    return divisor, scale, counted


def loss_rows(
    rows: Rows,
    options: Options,
    grad_scale: Any,
    need_grad: bool,
    *,
    xp: Any,
    compute: Callable[[Any], Any],
    row_sum: Callable[[Any], Any],
    row_sums_out: Any,
    grad_out: Any,
    chunk_elements: int,
) -> None:
    """Weighted loss sums of each row into ``row_sums_out``; the gradient, scaled per row, into ``grad_out``."""
    n, c = rows.num_rows, rows.num_classes
    # NumPy looks whether a weight is zero to skip a where(); torch always applies it (a look would wait for a GPU)
    zero_weights = rows.weight is not None and (xp.__name__ != "numpy" or bool((rows.weight == 0).any()))
    step = max(1, chunk_elements // max(c, 1))
    plain = not options.focusing and rows.pos_weight is None
    for start in range(0, n, step):
        stop = min(start + step, n)
        x = compute(rows.x[start:stop])
        y = compute(rows.y[start:stop])
        if options.label_smoothing:
            y = y * (1 - options.label_smoothing) + options.label_smoothing / 2
        if plain:
            loss, grad = element_loss_and_grad(x, y, xp, need_grad=need_grad)
        else:
            pos_weight = take_rows(rows.pos_weight, start, stop)
            loss, grad = element_loss_and_grad_options(
                x, y, xp, pos_weight=None if pos_weight is None else compute(pos_weight),
                gamma_pos=options.gamma_pos, gamma_neg=options.gamma_neg, clip=options.clip, need_grad=need_grad,
            )  # fmt: skip
        weight = take_rows(rows.weight, start, stop)
        mask = take_rows(rows.mask, start, stop)
        if mask is not None:
            weight = compute(mask) if weight is None else weight * compute(mask)
        if weight is not None:
            weight = compute(weight)
            # in float64: w * l may exceed float32 where the row mean does not; a zero weight (or a missing label)
            # removes the element, even where its loss is inf (0 * inf)
            weighted = loss * weight if xp.__name__ == "numpy" else loss.to(xp.float64) * weight
            loss = xp.where(weight == 0, 0.0, weighted) if zero_weights or mask is not None else weighted
            if grad is not None:
                grad = grad * weight
        row_sums_out[start:stop] = row_sum(loss)
        if need_grad and grad is not None:
            grad_out[start:stop] = grad * (grad_scale if isinstance(grad_scale, float) else grad_scale[start:stop, None])


def redo_overflowed_rows(
    rows: Rows,
    options: Options,
    row_sums: Any,
    *,
    xp: Any,
    compute: Callable[[Any], Any],
    row_sum: Callable[[Any], Any],
    chunk_elements: int,
) -> None:
    """Recompute with ``compute`` (float64) the loss of the rows whose ``row_sums`` (float64; a NumPy array or a CPU
    tensor: they are read) is inf, in place.

    For float16/bfloat16/float32 input the C kernel forms each element's loss in float32 and accumulates ``w * l`` in
    float64, so a weight cannot overflow it; but ``pos_weight`` multiplies inside the element (``y * pw *
    softplus(-x)``), and that product can exceed float32 where the sample's loss does not (``x = -3e38, y = 1, pw =
    10, C = 100``: 3e37). Only rows whose sum came out inf are redone (at an infinite logit the loss may really be inf:
    redoing finds the same), in runs of consecutive rows; the gradient, ``w * scale * pw * (p - 1)`` with no such
    product, stays."""
    import numpy as np

    bad = np.flatnonzero(np.isinf(row_sums if xp.__name__ == "numpy" else row_sums.numpy()))
    if bad.size == 0:
        return
    for run in np.split(bad, np.flatnonzero(np.diff(bad) != 1) + 1):  # consecutive rows: one chunked call each
        start, stop = int(run[0]), int(run[-1]) + 1
        sub = Rows(
            rows.x[start:stop], rows.y[start:stop], take_rows(rows.weight, start, stop),
            take_rows(rows.pos_weight, start, stop), take_rows(rows.mask, start, stop),
        )  # fmt: skip
        loss_rows(
            sub, options, 1.0, False, xp=xp, compute=compute, row_sum=row_sum, row_sums_out=row_sums[start:stop],
            grad_out=None, chunk_elements=chunk_elements,
        )  # fmt: skip
