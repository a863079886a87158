"""The pure-torch fallback's short path on the CPU: the loss without focusing or ``pos_weight`` in seven to ten
operations per chunk of rows.

The general chunked loop (:func:`softmargin._chunks.loss_rows`) spells out :mod:`softmargin._formula` in about 25
operations per chunk, each allocating its result; on the CPU their count, not the arithmetic, sets its speed: each
operation's threads meet at its end, and on a busy machine each meeting can wait a time slice for a thread the system
put aside. This path computes the same stable form in fewer operations, in large chunks, into one to three buffers
of a chunk (and the gradient itself).

Hard targets (every value exactly 0 or 1: bool, uint8, or float targets found so, see :func:`target_kind`; no label
smoothing). With ``z = (1 - 2y) x`` (``x`` for ``y = 0``, ``-x`` for ``y = 1``)::

    l(x, y) = softplus(z) = log1p(exp(z))          (z itself where log1p(exp(-z)) / z is below half an ulp)
    dl/dx   = (1 - 2y) sigmoid(z)                  (sigmoid(x), or -sigmoid(-x): exact, no 1 - sigmoid)

Any target in [0, 1]. With ``a = -|x|``, ``g = copysign(1, x)`` (``+1`` for ``x >= +0``, ``-1`` for ``x <= -0``)
and ``d = y - (1 + g) / 2`` (``y - 1`` where ``g = 1``, ``y`` itself where ``g = -1``)::

    l(x, y) = softplus(a) - d * x          (softplus(a) = log1p(exp(-|x|)); -d * x = (1 - y) relu(x) + y relu(-x))
    dl/dx   = -(d + g * sigmoid(a))        ((1 - y) - sigmoid(-x) for g = 1, sigmoid(x) - y for g = -1)

``d`` rounds at most once (``y - 1`` is exact for ``y >= 1/2``); both terms of ``l`` are non-negative, so nothing
cancels, and each element is as accurate as :func:`softmargin._formula.element_loss_and_grad`'s.

The target is looked at once per chunk, in the pass that tells hard from soft targets (``y - y * y``: 0 only at 0
and 1, negative outside [0, 1], NaN for NaN), which is also the range check. Each row's loss is summed in float32 by
torch's cascade sum (its terms are non-negative: no cancellation); a per-class weight with its nonzero values in
[2^-64, 2^64] multiplies the losses first, in place; any other weight or mask multiplies them in float64 and the sum
is taken in float64 (no overflow of ``w * l`` and no underflow of a tiny weight). A row whose sum
is not finite is computed again: first with ``d * x`` taken as 0 where it is ``0 * inf`` (a right prediction at an
infinite logit, whose limit is 0; the fast pass leaves NaN there), then, if still not finite (an infinite loss, a
NaN logit, a float32 sum beyond float32, a zero weight on an infinite loss, an infinite ``z``), by the general
chunked formula, the reference: so every special value is handled as there. That check reads the row sums back,
which is why this path runs on CPU tensors only (elsewhere the general loop runs, which reads nothing back). It never
runs while a graph is traced: the backends run inside the operator, on real tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._chunks import Rows
from .._chunks import loss_rows as chunked_loss_rows
from .._options import LossOptions

#: Most elements per chunk (512 Ki: 2 MiB per float32 buffer, which stay in cache and are reused, not faulted in
#: afresh). Measured at 4096x2000 with two threads, fwd+bwd with a (C,) weight, medians of 6 interleaved calls on a
#: quiet machine (load about 1): float32 29 ms with 512 Ki chunks, 35 with 1 Mi, 44 with 8 Mi, BCEWithLogits 45;
#: bfloat16 27-37 ms against 29-38 (1 Mi), 65 (8 Mi) and BCEWithLogits' 28-43. On a busy machine fewer, larger chunks
#: wait less for torch's threads to meet at the end of each operation (load 4: 1 Mi chunks took 1.4 to 4x
#: BCEWithLogits' time, 8 Mi ones 0.8 to 1.1x), but they cost 3x the memory in bfloat16 and half the speed when the
#: machine is quiet, as a user's usually is.
PLAIN_CHUNK_ELEMENTS = 1 << 19

#: Elements per chunk of the general formula for the rows computed again (see ``_redo_rows``).
_GENERAL_CHUNK_ELEMENTS = 1 << 16


def _take(a: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    return a if a is None or a.shape[0] == 1 else a[start:stop]


@torch.no_grad()
def plain_loss_rows(
    rows: Rows,
    label_smoothing: float,
    grad_scale: float | torch.Tensor,
    need_grad: bool,
    cdtype: torch.dtype,
    row_sums_out: torch.Tensor,
    grad_out: torch.Tensor | None,
    chunk_elements: int | None = None,
    bad_target: Callable[[], None] | None = None,
) -> None:
    """Weighted loss sums of each row (float64) into ``row_sums_out``, the gradient scaled per row into ``grad_out``.

    What :func:`softmargin._chunks.loss_rows` computes for options without focusing and no ``pos_weight``, on CPU
    tensors.

    Args:
        rows: the (N, C) problem; ``rows.pos_weight`` must be None; ``rows.y`` dense (float, uint8 or bool) or
            sparse (made dense a chunk at a time); ``rows.weight`` in any float dtype (float64 keeps its precision
            in the row sums), ``rows.mask`` bool or uint8; each None, a (1, C) row or (N, C).
        label_smoothing: ``eps``: targets become ``y * (1 - eps) + eps / 2``.
        grad_scale: the gradient's factor: a float for every row, or an (N,) tensor (one per row).
        need_grad: whether to write ``grad_out``.
        cdtype: the compute dtype (float32, or float64 for float64 logits).
        row_sums_out: (N,) float64.
        grad_out: (N, C), the logits' dtype, contiguous (or None without ``need_grad``).
        chunk_elements: most elements per chunk (default ``PLAIN_CHUNK_ELEMENTS``).
        bad_target: called when a target is outside [0, 1] (or NaN), to raise (None: no check). Without label
            smoothing each chunk's targets are looked at anyway (:func:`target_kind`: those all 0 or 1 take the
            shorter form), so the check costs nothing more there; with it, the caller checks.

    Example::

        >>> x, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
        >>> sums, grad = torch.empty(1, dtype=torch.float64), torch.empty(1, 2)
        >>> plain_loss_rows(Rows(x, y), 0.0, 0.5, True, torch.float32, sums, grad)
        >>> torch.allclose(sums, torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="sum").double())
        True
    """
    if rows.pos_weight is not None:
        raise ValueError("plain_loss_rows computes the loss without pos_weight: use softmargin._chunks.loss_rows")
    if rows.x.device.type != "cpu":
        raise ValueError(f"plain_loss_rows runs on CPU tensors (it reads row sums back); got {rows.x.device}")
    n, c = rows.num_rows, rows.num_classes
    if n == 0:
        return
    if c == 0:
        row_sums_out.zero_()
        return
    weight, mask = rows.weight, rows.mask
    if mask is not None and mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)  # (bool arithmetic is refused; a bool is one byte: no copy)
    full = (weight is not None and weight.shape[0] > 1) or (mask is not None and mask.shape[0] > 1)
    # a (1, C) weight times a (1, C) mask, once per call: in float64 for the row sums, in cdtype for the gradient
    row_weight64 = row_weight = None
    if not full and (weight is not None or mask is not None):
        row_weight64 = weight.to(torch.float64) if weight is not None else torch.ones(1, c, dtype=torch.float64)
        row_weight = weight.to(cdtype) if weight is not None else torch.ones(1, c, dtype=cdtype)
        if mask is not None:
            row_weight64, row_weight = row_weight64 * mask, row_weight * mask
    # A (1, C) weight whose nonzero values lie in [2^-64, 2^64], in cdtype (a float64 weight with float32 logits
    # keeps its precision: float64 products), multiplies the losses in place in cdtype: w * l overflows only for
    # l > 2^64 (an inf sum: the row is computed again, in float64), and falls below float32's normal range only for
    # l < 2^-62 (a logit beyond 43 on the right side), which counts only in a row whose every loss is as small.
    # Any other weight or mask: float64 products.
    in_place = row_weight64 is not None and row_weight is not None and (weight is None or weight.dtype != torch.float64
                                                                       or cdtype == torch.float64)  # fmt: skip
    if in_place:
        assert row_weight64 is not None
        nonzero = row_weight64[row_weight64 != 0]
        in_place = nonzero.numel() == 0 or (float(nonzero.min()) >= 2.0**-64 and float(nonzero.max()) <= 2.0**64)
    weighted = full or (row_weight64 is not None and not in_place)
    step = max(1, min(n, (chunk_elements or PLAIN_CHUNK_ELEMENTS) // c))
    # buffers of one chunk: p0 ends holding the element losses (the hard targets' form needs no other: each buffer's
    # page faults, the first time it is written, cost about as much as one operation on it); p1 and p2 side by
    # side for the general form, then for the float64 products of a weighted row sum
    p0 = torch.empty(step, c, dtype=cdtype)
    p1 = p2 = wide = None
    if weighted:
        pair = torch.empty(2, step, c, dtype=cdtype)
        p1, p2 = pair[0], pair[1]
        wide = p1 if cdtype == torch.float64 else pair.view(-1).view(torch.float64).view(step, c)
    # the gradient is computed in the gradient itself where it has the compute dtype
    s_own = torch.empty(step, c, dtype=cdtype) if need_grad and (grad_out is None or grad_out.dtype != cdtype) else None
    constants = _Constants(cdtype, label_smoothing)
    for start in range(0, n, step):
        stop = min(start + step, n)
        here = stop - start
        x = rows.x[start:stop]  # (a half-precision x is read as it is: each operation computes in cdtype)
        y = rows.y[start:stop]  # sparse: made dense here
        a = p0[:here]
        hard = False
        # a target of another dtype is converted once here (each operation would otherwise convert it again): after
        # the check where the conversion could round a bad value into range
        kind = "soft" if label_smoothing else "hard" if y.dtype == torch.bool else None
        if kind is None and y.dtype in (torch.float64, torch.uint8) and cdtype != y.dtype:
            kind = target_kind(y)
        y = y if y.dtype == cdtype else y.to(cdtype)
        if kind is None:
            kind = target_kind(y, a)
        if kind == "invalid" and bad_target is not None:
            bad_target()
        hard = kind == "hard"
        s = None
        if need_grad:
            assert grad_out is not None
            s = grad_out[start:stop] if s_own is None else s_own[:here]
        w_full = _take(weight, start, stop) if full else None
        m_full = _take(mask, start, stop) if full else None
        if hard:
            torch.sub(constants.one, y, alpha=2.0, out=a)  # 1 - 2y: 1 for y = 0, -1 for y = 1
            torch.mul(x, a, out=a)  # z = (1 - 2y) x
            if s is not None:
                torch.sigmoid(a, out=s)
                torch.addcmul(s, s, y, value=-2.0, out=s)  # dl/dx = (1 - 2y) sigmoid(z): exact, no cancellation
            # l = log1p(exp(z)), z itself above the threshold (where log1p(exp(-z)) / z is below half an ulp)
            torch._C._nn.softplus(a, 1, constants.threshold, out=a)  # type: ignore[call-arg]  # (stub lacks out=)
        else:
            if p1 is None or p2 is None:
                pair = torch.empty(2, step, c, dtype=cdtype)
                p1, p2 = pair[0], pair[1]
            _element_loss(x, y, constants, a, p1[:here], p2[:here], s, careful=False)  # s: -dl/dx
        if s is not None:
            assert grad_out is not None
            scale: Any = grad_scale if isinstance(grad_scale, float) else grad_scale[start:stop, None].to(cdtype)
            scale = scale if hard else -scale
            if full:
                for factor in (w_full, m_full):
                    if factor is not None:
                        s.mul_(factor)
            elif row_weight is not None:
                scale = row_weight * scale
            if s_own is None:
                s.mul_(scale)
            else:  # (into a half-precision gradient: torch.mul would write a float32 temporary, then copy it)
                grad_out[start:stop].copy_(s.mul_(scale))
        sums = row_sums_out[start:stop]
        if not weighted:
            if in_place:
                assert row_weight is not None
                a.mul_(row_weight)
            sums.copy_(a.sum(1))  # float32 cascade sum of non-negative terms
        else:
            assert wide is not None
            products = wide[:here]  # (p1's and p2's values are used by now)
            if row_weight64 is not None:
                torch.mul(a, row_weight64, out=products)  # in float64
            else:
                products.copy_(a)
                for factor in (w_full, m_full):
                    if factor is not None:
                        products.mul_(factor)
            torch.sum(products, 1, out=sums)
        if not bool(torch.isfinite(sums).all()):
            _redo_rows(x, y, constants, cdtype, w_full, m_full, row_weight64, weight, mask, sums)


def target_kind(y: torch.Tensor, scratch: torch.Tensor | None = None) -> str:
    """``"hard"`` when every target is exactly 0 or 1, ``"soft"`` when every target is in [0, 1] and some are not
    0 or 1, ``"invalid"`` when one is outside [0, 1] or NaN (the caller's check then names it).

    A bool target is hard; a uint8 target when its largest value is 1. A float target from one pass that writes
    ``v = y - y * y`` (into ``scratch``, or a new tensor) and one that reads it: ``v`` is 0 at 0 and 1 only
    (rounding included: ``fl(y * y) < y`` on (0, 1)), positive on (0, 1), negative outside [0, 1] and NaN for NaN,
    so its smallest and largest values tell all three.
    """
    if y.numel() == 0 or y.dtype == torch.bool:
        return "hard"
    if y.dtype == torch.uint8:
        return "hard" if bool(y.max() <= 1) else "invalid"
    if not y.is_floating_point():
        return "invalid"
    v = torch.addcmul(y, y, y, value=-1.0) if scratch is None else torch.addcmul(y, y, y, value=-1.0, out=scratch)
    low, high = torch.aminmax(v)
    low_value, high_value = float(low), float(high)
    if not low_value >= 0:  # (NaN too)
        return "invalid"
    return "hard" if high_value == 0 else "soft"


class _Constants:
    """The 0-d tensors the loop reads: 1, eps/2 - 1/2 (for d) and 0."""

    def __init__(self, cdtype: torch.dtype, label_smoothing: float) -> None:
        values = torch.tensor([1.0, -0.5 + label_smoothing / 2, 0.0], dtype=cdtype)
        self.one, self.offset, self.zero, self.label_smoothing = values[0], values[1], values[2], label_smoothing
        self.threshold = 20.0 if cdtype == torch.float32 else 50.0


def _element_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    constants: _Constants,
    a: torch.Tensor,
    g: torch.Tensor,
    d: torch.Tensor,
    s: torch.Tensor | None,
    careful: bool,
) -> None:
    """One chunk's element losses into ``a``, ``-dl/dx`` into ``s`` (unless None); ``g`` and ``d`` are scratch.

    ``careful``: ``d * x`` is taken as 0 where it is ``0 * inf`` (its limit: a right prediction at an infinite
    logit); otherwise the loss is NaN there (one operation fewer; the caller computes such rows again)."""
    torch.copysign(x, -1.0, out=a)  # -|x|
    if s is not None:
        torch.sigmoid(a, out=s)  # sigmoid(-|x|)
    # log1p(exp(-|x|)): exp never sees a positive argument
    torch._C._nn.softplus(a, 1, 20, out=a)  # type: ignore[call-arg]  # (stub lacks out=)
    torch.copysign(constants.one, x, out=g)  # g
    torch.add(constants.offset, g, alpha=-0.5, out=d)  # eps/2 - (1 + g)/2: -1 or 0 without smoothing (exact)
    torch.add(d, y, alpha=1.0 - constants.label_smoothing, out=d)  # d = y' - (1 + g)/2: one rounding
    if s is not None:
        torch.addcmul(d, s, g, out=s)  # -dl/dx = d + g sigmoid(-|x|)
    if careful:
        # 0 * inf taken as 0 where d is 0 (a NaN x: NaN in a already; a NaN target: NaN, as in torch's loss, where
        # nan_to_num made it 0)
        torch.mul(d, x, out=g).masked_fill_(d == 0, 0.0)
        a.sub_(g)
    else:
        torch.addcmul(a, d, x, value=-1.0, out=a)  # l = log1p(exp(-|x|)) - d x: both terms >= 0, no cancellation


def _redo_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    constants: _Constants,
    cdtype: torch.dtype,
    w_full: torch.Tensor | None,
    m_full: torch.Tensor | None,
    row_weight64: torch.Tensor | None,
    weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    sums: torch.Tensor,
) -> None:
    """The rows of this chunk whose sum is not finite, computed again (see the module docstring)."""
    bad = (~torch.isfinite(sums)).nonzero().squeeze(1)
    xb, yb = x[bad].to(cdtype), y[bad]
    t, g, d = torch.empty_like(xb), torch.empty_like(xb), torch.empty_like(xb)
    _element_loss(xb, yb, constants, t, g, d, None, careful=True)
    wb = None if w_full is None else (w_full if w_full.shape[0] == 1 else w_full[bad])
    mb = None if m_full is None else (m_full if m_full.shape[0] == 1 else m_full[bad])
    again = t.sum(1).to(torch.float64) if row_weight64 is None and wb is None and mb is None else None
    if again is None:
        products = t * row_weight64 if row_weight64 is not None else t.to(torch.float64)
        for factor in (wb, mb):
            if factor is not None:
                products.mul_(factor)
        again = products.sum(1)
    still = ~torch.isfinite(again)
    if bool(still.any()):
        # the general formula: float64 products, and a zero weight removes its element even where l is inf or NaN
        which = still.nonzero().squeeze(1)
        if row_weight64 is not None:
            wg, mg = weight, mask
        else:
            wg = None if wb is None else (wb if wb.shape[0] == 1 else wb[which])
            mg = None if mb is None else (mb if mb.shape[0] == 1 else mb[which])
        general = torch.empty(which.numel(), dtype=torch.float64)
        chunked_loss_rows(
            Rows(xb[which], yb[which], wg, None, mg), LossOptions(label_smoothing=constants.label_smoothing), 0.0,
            False, xp=torch, compute=lambda v: v.to(cdtype), row_sum=lambda v: v.sum(dim=1, dtype=torch.float64),
            row_sums_out=general, grad_out=None, chunk_elements=_GENERAL_CHUNK_ELEMENTS,
        )  # fmt: skip
        again[which] = general
    sums[bad] = again
