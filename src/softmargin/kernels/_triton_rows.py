# mypy: disable-error-code="untyped-decorator,no-untyped-def"
"""The Triton kernels behind :mod:`softmargin.kernels.triton_kernels` (read its docstring for the launcher).

An adapter of ``softmargin/_formula.py``: :func:`_element` restates ``element_loss_and_grad`` (the plain loss) and
``element_loss_and_grad_options`` (pos_weight, asymmetric focusing) term by term, with the names used there, and is
tested against them; the derivations live there only. Everything here is computed in float32 for float16, bfloat16
and float32 inputs (in float64 for float64 inputs), and a row's weighted losses are summed with compensation
(Neumaier per lane, then a two-sum tree across lanes and tiles), so that no float64 arithmetic runs in the float32
paths and a row of a million classes still keeps float32 accuracy.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

# ---- elementary functions: libdevice on a GPU (about 1 ulp, correctly rounded division), NumPy's float32/float64
# functions under Triton's interpreter (TRITON_INTERPRET=1), which has no libdevice ----


@triton.jit
def _exp(x, ACCURATE: tl.constexpr):
    if ACCURATE:
        out = libdevice.exp(x)
    else:
        out = tl.exp(x)
    return out


@triton.jit
def _log1p(z, ACCURATE: tl.constexpr):
    if ACCURATE:
        out = libdevice.log1p(z)
    else:  # log1p from log (Goldberg): u - 1 is exact, and log(u) / (u - 1) is flat where u rounds
        u = 1.0 + z
        out = tl.where(u == 1.0, z, tl.log(u) * (z / tl.where(u == 1.0, 1.0, u - 1.0)))
    return out


@triton.jit
def _div(a, b, ACCURATE: tl.constexpr):
    if ACCURATE:  # "/" is an approximate division in float32 on a GPU; float64's is correctly rounded already
        if a.dtype == tl.float32:
            out = tl.div_rn(a, b)
        else:
            out = a / b
    else:
        out = a / b
    return out


@triton.jit
def _times(a, b):
    """a * b with 0 * inf taken as 0 (``_formula._times``)."""
    return tl.where(a == 0.0, 0.0, a * b)


@triton.jit
def _element(
    x, y, pos_weight, gamma_pos, gamma_neg, clip,
    HAS_PW: tl.constexpr, FOCUS: tl.constexpr, CLIP: tl.constexpr, ACCURATE: tl.constexpr,
):  # fmt: skip
    """(loss, dl/dx) of one block: ``element_loss_and_grad`` without options, else ``element_loss_and_grad_options``
    (label smoothing is applied to ``y`` by the caller, as there)."""
    z = _exp(-tl.abs(x), ACCURATE)  # in [0, 1]: exp never sees a positive argument
    tail = _log1p(z, ACCURATE)
    sig_abs = _div(tl.full(x.shape, 1.0, x.dtype), 1.0 + z, ACCURATE)  # sigmoid(|x|)
    sig_neg_abs = z * sig_abs  # sigmoid(-|x|), without the cancellation of 1 - sigmoid(|x|)
    nonneg = x >= 0
    p = tl.where(nonneg, sig_abs, sig_neg_abs)  # sigmoid(x)
    q = tl.where(nonneg, sig_neg_abs, sig_abs)  # sigmoid(-x) = 1 - p
    if not HAS_PW and not FOCUS:
        # l = log1p(z) + (1 - y) relu(x) + y relu(-x), the 0 * inf of a right prediction at infinity taken as 0
        margin = tl.where(y == 1.0, 0.0, (1.0 - y) * tl.where(x > 0, x, 0.0))
        margin += tl.where(y == 0.0, 0.0, y * tl.where(x < 0, -x, 0.0))
        loss = tail + margin
        grad = (1.0 - y) * p - y * q
    else:
        softplus_pos = tail + tl.where(x > 0, x, 0.0)  # -log(1 - p)
        softplus_neg = tail + tl.where(x < 0, -x, 0.0)  # -log p
        pos_loss = softplus_neg
        pos_grad = -q
        if FOCUS:
            # (1 - p)^gamma_pos = exp(-gamma_pos softplus(x)); gamma_pos = 0 means no factor (exp(0 * inf) is NaN)
            focus_pos = tl.where(gamma_pos == 0.0, 1.0, _exp(-gamma_pos * softplus_pos, ACCURATE))
            pos_loss = focus_pos * softplus_neg
            pos_grad = -focus_pos * (gamma_pos * _times(p, softplus_neg) + q)
            if CLIP:
                p_m = tl.where(p > clip, p - clip, 0.0)
                # -log(1 - p_m), 1 - p_m = q + clip without cancellation: -log1p(-p_m) up to p_m = 1/2, beyond it
                # -log(q + clip) (-log1p(-p_m) alone lost clip in p_m as p rounded to 1: inf at x = 20, clip = 1e-8)
                neg_term = tl.where(p_m < 0.5, -_log1p(-tl.where(p_m < 0.5, p_m, 0.0), ACCURATE), -tl.log(q + clip))
                p_m_safe = tl.where(p_m > 0, p_m, 1.0)
                # p_m^gamma_neg = exp(-gamma_neg log1p((1 - p_m) / p_m)): 1 - p_m >= clip does not cancel
                log_p_m = -_log1p(_div(tl.where(p_m > 0, q + clip, 0.0), p_m_safe, ACCURATE), ACCURATE)
                focus_neg = tl.where(gamma_neg == 0.0, 1.0, tl.where(p_m > 0, _exp(gamma_neg * log_p_m, ACCURATE), 0.0))
                neg_loss = _times(focus_neg, neg_term)
                ratio = tl.where(p_m > 0, _div(neg_term, p_m_safe, ACCURATE), 1.0)  # -log(1 - p_m) / p_m -> 1
                # q / (q + clip) <= 1 (1 - p_m = q + clip), where 1 / (q + clip) overflows for a subnormal clip
                q_share = tl.where(q > 0, _div(q, tl.where(q > 0, q + clip, 1.0), ACCURATE), 0.0)
                neg_grad = p * focus_neg * (gamma_neg * q * ratio + q_share)
                neg_grad = tl.where(p_m > 0, neg_grad, 0.0)
            else:
                # p^gamma_neg = exp(-gamma_neg softplus(-x))
                focus_neg = tl.where(gamma_neg == 0.0, 1.0, _exp(-gamma_neg * softplus_neg, ACCURATE))
                neg_loss = _times(focus_neg, softplus_pos)
                neg_grad = focus_neg * (gamma_neg * _times(q, softplus_pos) + p)
        else:
            neg_loss = softplus_pos
            neg_grad = p
        if HAS_PW:
            pos_loss = pos_loss * pos_weight
            pos_grad = pos_grad * pos_weight
        loss = _times(y, pos_loss) + _times(1.0 - y, neg_loss)
        grad = y * pos_grad + (1.0 - y) * neg_grad
    return loss, grad


# ---- compensated sums ----


@triton.jit
def _add_pairs(a_hi, a_lo, b_hi, b_lo):
    """(a_hi + a_lo) + (b_hi + b_lo) as a new (hi, lo) pair: Knuth's two-sum of the high parts, whose rounding error
    joins the low parts. An infinite sum keeps a zero low part (its "error" would be inf - inf)."""
    s = a_hi + b_hi
    b_virtual = s - a_hi
    err = (a_hi - (s - b_virtual)) + (b_hi - b_virtual)
    err = tl.where(tl.abs(s) < float("inf"), err, 0.0)
    return s, (a_lo + b_lo) + err


@triton.jit
def _rows_kernel(
    x_ptr, y_ptr, w_ptr, pw_ptr, m_ptr, rs_ptr, indptr_ptr, idx_ptr, val_ptr, out_ptr, g_ptr, ok_ptr,
    num_classes, y_stride, w_stride, pw_stride, m_stride, sp_row0, sp_col0, span, num_tiles,
    scale_hi, scale_lo, eps_hi, eps_lo, gp_hi, gp_lo, gn_hi, gn_lo, clip_hi, clip_lo,
    HAS_W: tl.constexpr, HAS_PW: tl.constexpr, HAS_MASK: tl.constexpr, HAS_ROW_SCALE: tl.constexpr,
    SMOOTH: tl.constexpr, FOCUS: tl.constexpr, CLIP: tl.constexpr, SPARSE: tl.constexpr, HAS_VALUES: tl.constexpr,
    HAS_GRAD: tl.constexpr, CHECK: tl.constexpr, CHECK_W: tl.constexpr, SPLIT: tl.constexpr, BLOCK: tl.constexpr,
    ACCURATE: tl.constexpr,
):  # fmt: skip
    """One program: one row, columns [tile * span, (tile + 1) * span) in blocks of BLOCK.

    Writes the tile's weighted loss sum (``out``: the row's sum, or with SPLIT a (hi, lo) pair per tile for
    :func:`_combine_tiles_kernel`) and, with HAS_GRAD, ``w * mask * dl/dx * scale * row_scale[row]`` into ``g``.
    ``out``'s dtype is the compute dtype (float32, or float64 for float64 inputs). With CHECK (the target) or
    CHECK_W (weight and pos_weight), ``ok`` gets one byte per program: 1 when every target value of the tile lies in
    [0, 1], every weight in [0, inf) and every pos_weight in (0, inf), else 0 (NaN included).
    """
    compute = out_ptr.dtype.element_ty
    row = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    first = tile * span
    last = tl.minimum(first + span, num_classes)
    # Python floats arrive as float32: each scalar comes as a float32 pair, whose sum keeps float64's precision
    scale = tl.cast(scale_hi, compute) + tl.cast(scale_lo, compute)
    eps = tl.cast(eps_hi, compute) + tl.cast(eps_lo, compute)
    gamma_pos = tl.cast(gp_hi, compute) + tl.cast(gp_lo, compute)
    gamma_neg = tl.cast(gn_hi, compute) + tl.cast(gn_lo, compute)
    clip = tl.cast(clip_hi, compute) + tl.cast(clip_lo, compute)
    if HAS_ROW_SCALE:
        scale = scale * tl.load(rs_ptr + row).to(compute)
    x_row = x_ptr + row * num_classes
    g_row = g_ptr + row * num_classes
    if SPARSE:
        # this row's positives are indices[k : k_end] (ascending, unique); find the first in this tile
        k = tl.load(indptr_ptr + sp_row0 + row)
        k_end = tl.load(indptr_ptr + sp_row0 + row + 1)
        hi = k_end
        while k < hi:  # lower bound of the tile's first column
            mid = (k + hi) // 2
            right = tl.load(idx_ptr + mid) < sp_col0 + first
            k = tl.where(right, mid + 1, k)
            hi = tl.where(right, hi, mid)
    acc = tl.zeros([BLOCK], dtype=compute)
    comp = tl.zeros([BLOCK], dtype=compute)
    ok = tl.full([BLOCK], 1, dtype=tl.int32)
    for start in range(first, last, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < last
        x = tl.load(x_row + cols, mask=valid, other=0.0).to(compute)
        if SPARSE:
            # each column's position among the positives that can lie in this block, by a binary search per lane
            target_cols = sp_col0 + cols
            lo = tl.zeros([BLOCK], dtype=tl.int64) + k
            block_end = tl.minimum(k + BLOCK, k_end)
            hi_lanes = tl.zeros([BLOCK], dtype=tl.int64) + block_end
            width = block_end - k
            while width > 0:  # floor(log2(width)) + 1 halvings empty every lane's range
                active = lo < hi_lanes
                mid = (lo + hi_lanes) // 2
                right = active & (tl.load(idx_ptr + mid, mask=active, other=0) < target_cols)
                lo = tl.where(right, mid + 1, lo)
                hi_lanes = tl.where(active & ~right, mid, hi_lanes)
                width = width // 2
            in_range = valid & (lo < block_end)
            found = in_range & (tl.load(idx_ptr + lo, mask=in_range, other=-1) == target_cols)
            if HAS_VALUES:
                y = tl.load(val_ptr + lo, mask=found, other=0.0).to(compute)
            else:
                y = tl.where(found, 1.0, 0.0).to(compute)
            k += tl.sum(found.to(tl.int64), axis=0)
        else:
            y = tl.load(y_ptr + row * y_stride + cols, mask=valid, other=0).to(compute)
        if CHECK:  # NaN fails both comparisons
            ok = tl.where((y >= 0.0) & (y <= 1.0) | ~valid, ok, 0)
        if SMOOTH:
            y = y * (1.0 - eps) + eps / 2
        pos_weight = 1.0
        if HAS_PW:
            pos_weight = tl.load(pw_ptr + row * pw_stride + cols, mask=valid, other=1.0).to(compute)
            if CHECK_W:
                ok = tl.where((pos_weight > 0.0) & (pos_weight < float("inf")) | ~valid, ok, 0)
        loss, grad = _element(x, y, pos_weight, gamma_pos, gamma_neg, clip, HAS_PW, FOCUS, CLIP, ACCURATE)
        weight = valid.to(compute)
        if HAS_W:
            weight = tl.load(w_ptr + row * w_stride + cols, mask=valid, other=0.0).to(compute)
            if CHECK_W:
                ok = tl.where((weight >= 0.0) & (weight < float("inf")) | ~valid, ok, 0)
        if HAS_MASK:
            weight = tl.where(tl.load(m_ptr + row * m_stride + cols, mask=valid, other=0) != 0, weight, 0.0)
        term = tl.where(weight == 0.0, 0.0, weight * loss)  # a zero weight removes the element, even an infinite one
        # Neumaier's compensated sum per lane (its correction is left out where the sum is infinite)
        total = acc + term
        correction = tl.where(tl.abs(acc) >= tl.abs(term), (acc - total) + term, (term - total) + acc)
        comp += tl.where(tl.abs(total) < float("inf"), correction, 0.0)
        acc = total
        if HAS_GRAD:
            tl.store(g_row + cols, (weight * scale * grad).to(g_ptr.dtype.element_ty), mask=valid)
    hi_sum, lo_sum = tl.reduce((acc, comp), 0, _add_pairs)
    if CHECK or CHECK_W:
        tl.store(ok_ptr + row * num_tiles + tile, tl.min(ok, axis=0).to(tl.uint8))
    if SPLIT:
        tl.store(out_ptr + (row * num_tiles + tile) * 2, hi_sum)
        tl.store(out_ptr + (row * num_tiles + tile) * 2 + 1, lo_sum)
    else:
        tl.store(out_ptr + row, hi_sum + lo_sum)


@triton.jit
def _combine_tiles_kernel(partial_ptr, out_ptr, num_tiles, BLOCK: tl.constexpr):
    """Row ``program_id``'s (hi, lo) tile sums added by the same two-sum tree, in a fixed order."""
    row = tl.program_id(0).to(tl.int64)
    tiles = tl.arange(0, BLOCK)
    valid = tiles < num_tiles
    base = partial_ptr + row * num_tiles * 2
    hi = tl.load(base + tiles * 2, mask=valid, other=0.0)
    lo = tl.load(base + tiles * 2 + 1, mask=valid, other=0.0)
    hi_sum, lo_sum = tl.reduce((hi, lo), 0, _add_pairs)
    tl.store(out_ptr + row, hi_sum + lo_sum)
