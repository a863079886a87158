"""The pure-torch fallback's short path: the loss without focusing or ``pos_weight`` in 15 to 18 in-place operations
per chunk.

The general chunked loop (:func:`softmargin._chunks.loss_rows`) spells out :mod:`softmargin._formula` in about 25
operations per chunk, each allocating its result; on the CPU their overhead, not the arithmetic, sets its speed
(10x slower than ``BCEWithLogits``). This path computes the same stable form with fewer operations, in place, into
four buffers of one chunk kept between calls (per calling thread). With ``s = sigmoid(-|x|)``, ``g = sign(x)`` and
``d = y - (1 + g) / 2`` (``y - 1`` for x > 0, ``y`` itself for x < 0, ``y - 1/2`` at 0)::

    l(x, y) = log1p(exp(-|x|)) - d * x      (-d * x = (1 - y) relu(x) + y relu(-x): no cancellation)
    dl/dx   = -(d + g * s)                  ((1 - y) - sigmoid(-x) for x > 0, sigmoid(x) - y below, 1/2 - y at 0)

``d`` rounds at most once (``y - 1``, exact for ``y >= 1/2``), so each element is as accurate as
:func:`softmargin._formula.element_loss_and_grad`'s, and the gradient of a hard label is exact at any ``x``
(``-sigmoid(-x)``, not ``sigmoid(x) - 1``). ``d * x`` is ``0 * inf`` only for a right prediction at infinity (or a
zero weight at an infinite logit), whose limit is 0: NaN is replaced by 0 there, while a NaN logit still propagates
through the ``log1p`` term. With a weight or a mask, the weight is divided by twice a power of two no smaller than
its largest value (exact), so ``w * l``, and the sum of two such, cannot overflow float32 where the float64 row sum
does not: the weighted row sums add column pairs in float32 (one rounding) before the float64 sum, and are
multiplied back. One difference from the C kernel: a NaN logit under a zero weight or a missing label gives a NaN
loss (the kernel skips the element; the gradient is NaN there on both).

Each operation runs on torch's threads. (Splitting the rows over Python threads instead, one per torch thread with
chunks below torch's grain size so that the threads meet once per call, measured faster on a loaded machine but no
faster than one thread on a quiet one, 2x slower than this.)
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import torch

from .._chunks import Rows

#: Most elements per chunk of the short path (float32: 8 MiB per buffer, four buffers), and at most a quarter of the
#: problem (so the buffers never outgrow the gradient), but never under 64 Ki. Each operation runs on torch's threads,
#: which meet at its end: few, large chunks meet few times. That matters on a busy machine, where each meeting can
#: wait a time slice for a thread the system put aside (at 4096x2000 with another process busy on both cores: 2.2 s
#: with 512 Ki-element chunks against BCEWithLogits' 0.11 s); on a quiet one 64 Ki to 2 Mi measured within 10 %.
PLAIN_CHUNK_ELEMENTS = 1 << 21


@dataclasses.dataclass
class _Job:
    """One call's operands, prepared once for every chunk."""

    rows: Rows
    label_smoothing: float
    need_grad: bool
    cdtype: torch.dtype
    weight: torch.Tensor | None  # divided by `back` (twice a power of two)
    mask: torch.Tensor | None
    same_weight: bool  # weight and mask are each None or one (1, C) row
    row_weight: torch.Tensor | None  # their product, when same_weight
    factor: Any  # the gradient's factor: a float, a 0-d or (1, C) tensor, or (N, 1) with a per-row scale
    uniform_scale: bool  # the gradient's scale is one float (factor already holds row_weight)
    row_sums_out: torch.Tensor
    grad_out: torch.Tensor | None


def _power_of_two_scale(weight: torch.Tensor) -> torch.Tensor:
    """A 0-d float64 tensor: a power of two >= max(weight) (1 for an all-zero weight), computed on the device."""
    _, exponent = torch.frexp(weight.detach().amax().to(torch.float64))
    return torch.ldexp(torch.ones((), dtype=torch.float64, device=weight.device), exponent)


_workspace = threading.local()

#: Largest workspace kept between calls, per thread and slot (bytes).
WORKSPACE_BYTES = 8 << 20


def _buffers(
    count: int, shape: tuple[int, int], dtype: torch.dtype, device: torch.device, slot: int = 0
) -> list[torch.Tensor]:
    """``count`` buffers of ``shape``: on the CPU, views of one workspace kept by this thread between calls (a fresh
    allocation of a megabyte or more comes from the system, page by page: its page faults cost more than the
    arithmetic done in it)."""
    size = math.prod(shape)
    nbytes = count * size * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or nbytes > WORKSPACE_BYTES:
        return [torch.empty(shape, dtype=dtype, device=device) for _ in range(count)]
    kept: dict[tuple[int, torch.dtype], torch.Tensor] = _workspace.__dict__.setdefault("kept", {})
    flat = kept.get((slot, dtype))
    if flat is None or flat.numel() < count * size:
        flat = kept[(slot, dtype)] = torch.empty(count * size, dtype=dtype)
    return [flat[i * size : (i + 1) * size].view(shape) for i in range(count)]


def _to(value: Any, dtype: torch.dtype) -> Any:
    return value.to(dtype) if isinstance(value, torch.Tensor) else value


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
    chunk_elements: int | None = None,
) -> None:
    """Weighted loss sums of each row (float64) into ``row_sums_out``, the gradient scaled per row into ``grad_out``.

    What :func:`softmargin._chunks.loss_rows` computes for ``options`` without focusing and no ``pos_weight``.

    Args:
        rows: the (N, C) problem; ``rows.pos_weight`` must be None; ``rows.y`` dense, or sparse (dense chunks).
        label_smoothing: ``eps``: targets become ``y * (1 - eps) + eps / 2``.
        grad_scale: the gradient's factor: a float for every row, or an (N,) tensor (one per row).
        need_grad: whether to write ``grad_out``.
        cdtype: the compute dtype (float32, or float64 for float64 logits).
        row_sums_out: (N,) float64.
        grad_out: (N, C), the logits' dtype (or None without ``need_grad``).
        chunk_elements: elements per chunk (default: see ``PLAIN_CHUNK_ELEMENTS``): each of the four buffers holds
            one chunk.

    Example::

        >>> x, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
        >>> sums, grad = torch.empty(1, dtype=torch.float64), torch.empty(1, 2)
        >>> plain_loss_rows(Rows(x, y), 0.0, 0.5, True, torch.float32, sums, grad)
        >>> torch.allclose(sums, torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="sum").double())
        True
    """
    if rows.pos_weight is not None:
        raise ValueError("plain_loss_rows computes the loss without pos_weight: use softmargin._chunks.loss_rows")
    n, c = rows.num_rows, rows.num_classes
    # The weight (or the mask) is divided by `back`: twice a power of two >= the weight's largest value, so that
    # w * l cannot overflow where the row sum does not, not even once two columns are added (see _run_rows).
    back: Any = None
    weight = mask = None
    if rows.weight is not None:
        back = 2.0 * _power_of_two_scale(rows.weight)
        weight = rows.weight / back.to(cdtype)
    elif rows.mask is not None:
        back = 2.0
    if rows.mask is not None:
        # a (1, C) row once here; an (N, C) mask a chunk at a time (_chunk_weight), times 1/2 without a weight
        mask = rows.mask if rows.mask.shape[0] > 1 else rows.mask.to(cdtype) * (1.0 if weight is not None else 0.5)
    # the gradient's factor, negated (the loop computes -dl/dx), times `back`
    factor: Any = -grad_scale if back is None else _to(back, cdtype) * -grad_scale
    uniform_scale = isinstance(grad_scale, float)
    if not uniform_scale:
        factor = factor.to(cdtype)[:, None]
    same_weight = (weight is None or weight.shape[0] == 1) and (mask is None or mask.shape[0] == 1)
    row_weight = weight if mask is None else mask if weight is None else weight * mask
    if same_weight and row_weight is not None and uniform_scale:
        factor = row_weight * factor  # the common case: one (1, C) factor for the gradient, once per call
    job = _Job(rows, label_smoothing, need_grad, cdtype, weight, mask, same_weight, row_weight, factor, uniform_scale,
               row_sums_out, grad_out)  # fmt: skip
    if chunk_elements is None:
        chunk_elements = min(PLAIN_CHUNK_ELEMENTS, max(1 << 16, n * c // 4))
    _run_rows(job, 0, n, max(1, min(n, chunk_elements // max(c, 1))))
    if back is not None:
        row_sums_out.mul_(back)


def _run_rows(job: _Job, first: int, last: int, step: int) -> None:
    """Rows ``first:last`` of the job, ``step`` rows at a time, into the job's outputs."""
    rows, cdtype, label_smoothing, need_grad = job.rows, job.cdtype, job.label_smoothing, job.need_grad
    if last <= first:
        return
    c = rows.num_classes
    # the weighted row sums add column j and column c - pair + j first in cdtype (one rounding; the weight's 1/2
    # keeps the pair from overflowing), then the pairs in float64
    pair = c // 2 if job.weight is not None or job.mask is not None else 0
    step = min(step, last - first)
    device = rows.x.device
    buffers = _buffers(4, (step, c), cdtype, device)
    # the float64 copy that the row sums read, in a buffer of ours (torch's own would be a fresh one each time)
    sum_buffer = _buffers(1, (step, c - pair), torch.float64, device, slot=1)[0] if cdtype != torch.float64 else None
    half = torch.full((), 0.5, dtype=cdtype, device=device)
    same_weight, factor, grad_out = job.same_weight, job.factor, job.grad_out
    # the chunks as views, made in one call each (slicing in Python costs more than some of the arithmetic)
    xs, sums = rows.x[first:last].split(step), job.row_sums_out[first:last].split(step)
    ys = rows.y[first:last].split(step) if isinstance(rows.y, torch.Tensor) else None
    grads = grad_out[first:last].split(step) if grad_out is not None else None
    for i, start in enumerate(range(first, last, step)):
        x = xs[i] if xs[i].dtype == cdtype else xs[i].to(cdtype)
        stop = start + x.shape[0]
        y = ys[i] if ys is not None else rows.y[start:stop]  # sparse: made dense a chunk at a time
        a, t, s, d = buffers if x.shape[0] == step else [b[: x.shape[0]] for b in buffers]
        torch.abs(x, out=a).neg_()  # -|x|
        torch.exp(a, out=t)
        t.log1p_()  # log1p(exp(-|x|))
        if need_grad:
            torch.sigmoid(a, out=s)  # sigmoid(-|x|)
        torch.sign(x, out=a)  # g: +-1, 0 at +-0 (where d = y - 1/2 and -dl/dx = y - 1/2 are exact)
        if label_smoothing:
            y = y if y.dtype == cdtype else y.to(cdtype)  # (a half-precision y times a float stays half)
            y = torch.mul(y, 1.0 - label_smoothing, out=d).add_(label_smoothing / 2)
            torch.sub(y, torch.add(half, a, alpha=0.5), out=d)
        else:
            torch.add(half, a, alpha=0.5, out=d)  # [x > 0] (1/2 at 0)
            torch.sub(y, d, out=d)  # d = y - [x > 0]: y itself where x < 0 (no rounding of 1 - y); y reads as it is
        if need_grad:
            torch.addcmul(d, s, a, out=s)  # -dl/dx = d + sign(x) sigmoid(-|x|)
        w = job.row_weight if same_weight else _chunk_weight(job.weight, job.mask, start, stop, cdtype)
        if w is not None:
            d.mul_(w)  # folded into d before d * x, so that a zero weight times an infinite x is caught below
            t.mul_(w)
        torch.mul(d, x, out=a)  # d * x = -w ((1 - y) relu(x) + y relu(-x))
        a.nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)  # 0 * inf: a right prediction at infinity
        t.sub_(a)  # the weighted element loss
        if pair:
            t[:, :pair].add_(t[:, c - pair :])
        part = t[:, : c - pair]
        if sum_buffer is not None:
            part = sum_buffer[: x.shape[0]].copy_(part)
        torch.sum(part, dim=1, out=sums[i])
        if grads is not None:
            if w is not None and not (same_weight and job.uniform_scale):
                s.mul_(w)
            torch.mul(s, factor if job.uniform_scale else factor[start:stop], out=grads[i])


def _chunk_weight(
    weight: torch.Tensor | None, mask: torch.Tensor | None, start: int, stop: int, cdtype: torch.dtype
) -> torch.Tensor | None:
    """Rows ``start:stop`` of weight times mask (either a (1, C) row, an (N, C) matrix or None)."""
    w = _chunk(weight, start, stop)
    mc = _chunk(mask, start, stop)
    if mc is None:
        return w
    return mc * 0.5 if w is None else w * mc  # (without a weight, the mask carries the 1/2 of `back`)
