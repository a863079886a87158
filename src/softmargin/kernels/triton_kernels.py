"""The fused GPU kernel in Triton: per-row loss sums and the gradient in one pass over the logits.

An adapter of ``softmargin/_formula.py`` (the derivation is there), like the CPU kernel. The (N, C) logits are cut
into tiles of one row by ``span`` columns; each program owns one tile and walks it in blocks of ``BLOCK`` columns,
computing in float32 (float64 for float64 inputs) and summing the weighted element losses in float64, so a row's
loss keeps float32 accuracy even for millions of classes. A row cut into several tiles (wide rows and few of them,
where one program per row would leave most of the GPU idle) has its partial sums added afterwards in a fixed
order. Tile sizes depend only on the shape and the device's multiprocessor count, so results are bitwise
reproducible on a given GPU. Tested on the CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice


#: Triton's interpreter (``TRITON_INTERPRET=1``, the CPU tests) runs the kernel in NumPy, without libdevice.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _fused_tiles_kernel(
    x_ptr,
    y_ptr,
    w_ptr,
    out_ptr,
    g_ptr,
    num_classes,
    span,
    num_tiles,
    w_row_stride,
    scale_hi,
    scale_lo,
    HAS_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
    COMPUTE: tl.constexpr,
    ACCURATE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    x_row = x_ptr + row * num_classes
    y_row = y_ptr + row * num_classes
    w_row = w_ptr + row * w_row_stride
    first = tile * span
    last = tl.minimum(first + span, num_classes)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    # Triton passes Python floats as float32: the scale comes in two parts, so that float64 keeps its precision
    scale = (tl.zeros([BLOCK], dtype=COMPUTE) + scale_hi) + scale_lo
    for start in range(first, last, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < last
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(COMPUTE)
        y = tl.load(y_row + cols, mask=mask, other=0.0).to(COMPUTE)
        w = tl.load(w_row + cols, mask=mask, other=0.0).to(COMPUTE)
        pos = tl.where(x > 0, x, 0.0)
        neg = tl.where(x < 0, -x, 0.0)
        # 0 * inf (a right prediction at infinity) is taken as its limit, 0
        margin = tl.where(y == 1.0, 0.0, (1.0 - y) * pos) + tl.where(y == 0.0, 0.0, y * neg)
        if ACCURATE:  # CUDA's correctly rounded division and libdevice's exp and log1p (about 1 ulp)
            z = libdevice.exp(-tl.abs(x))  # in [0, 1]: cannot overflow
            u = 1.0 + z
            log1p_z = libdevice.log1p(z)
            if COMPUTE == tl.float32:
                r = tl.div_rn(tl.full([BLOCK], 1.0, COMPUTE), u)  # sigmoid(|x|); "/" is approximate in float32
            else:
                r = 1.0 / u
        else:  # Triton's interpreter has no libdevice; tl.exp and tl.log are approximations on a GPU
            z = tl.exp(-tl.abs(x))
            u = 1.0 + z
            log1p_z = tl.where(u == 1.0, z, tl.log(u) * z / (u - 1.0))  # log1p(z) from log (Goldberg)
            r = 1.0 / u
        loss = tl.where(w == 0.0, 0.0, log1p_z + margin)  # a zero weight removes the element
        acc += w.to(tl.float64) * loss.to(tl.float64)
        if HAS_GRAD:
            zr = z * r  # sigmoid(-|x|)
            sig_pos = tl.where(x >= 0, r, zr)
            sig_neg = tl.where(x >= 0, zr, r)
            g = w * scale * ((1.0 - y) * sig_pos - y * sig_neg)
            tl.store(g_ptr + row * num_classes + cols, g.to(g_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + row * num_tiles + tile, tl.sum(acc, axis=0))


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # Triton's interpreter: any fixed number
    return torch.cuda.get_device_properties(device).multi_processor_count


def tiling(num_rows: int, num_classes: int, multiprocessors: int, block: int | None = None) -> tuple[int, int, int]:
    """``(block, span, tiles per row)``: enough programs to fill the GPU (about eight per multiprocessor) without
    tiles shorter than four blocks."""
    if block is None:
        block = min(1024, max(16, triton.next_power_of_2(num_classes)))
    blocks_per_row = triton.cdiv(num_classes, block)
    wanted = triton.cdiv(8 * multiprocessors, max(num_rows, 1))
    tiles = max(1, min(wanted, blocks_per_row // 4))
    span = triton.cdiv(blocks_per_row, tiles) * block
    return block, span, triton.cdiv(num_classes, span)


def fused_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    num_rows: int,
    num_classes: int,
    scale: float,
    need_grad: bool,
    block: int | None = None,
    span: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row sums (float64, shape (N,)) and the gradient ((N, C), x's dtype) for contiguous (N, C) x and y.

    ``w`` is None, a (1, C) row or an (N, C) matrix (any float dtype; cast in the kernel). ``block`` and ``span``
    override the tiling (tests).
    """
    x = x.reshape(num_rows, num_classes).contiguous()
    y = y.reshape(num_rows, num_classes).contiguous()
    if y.dtype == torch.bool:
        y = y.view(torch.uint8)  # same bytes, no copy
    if w is None:
        w = torch.ones(1, num_classes, dtype=torch.float32, device=x.device)
    w = w.contiguous()
    block, auto_span, _ = tiling(num_rows, num_classes, _multiprocessors(x.device), block)
    span = auto_span if span is None else span
    num_tiles = triton.cdiv(num_classes, span)
    scale_hi = float(np.float32(scale))
    partial = torch.empty((num_rows, num_tiles), dtype=torch.float64, device=x.device)
    grad = torch.empty((num_rows, num_classes), dtype=x.dtype, device=x.device) if need_grad else None
    _fused_tiles_kernel[(num_rows, num_tiles)](
        x, y, w, partial, grad if grad is not None else partial,
        num_classes, span, num_tiles, 0 if w.shape[0] == 1 else num_classes, scale_hi, scale - scale_hi,
        HAS_GRAD=need_grad, BLOCK=block, COMPUTE=tl.float64 if x.dtype == torch.float64 else tl.float32,
        ACCURATE=not INTERPRETED, num_warps=8 if block >= 4096 else 4,
    )  # fmt: skip
    row_sums = partial[:, 0] if num_tiles == 1 else partial.sum(dim=1)
    return row_sums, grad
