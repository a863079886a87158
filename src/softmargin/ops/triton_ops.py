"""The fused GPU kernel in Triton: per-row loss sums and the gradient in one pass over the logits.

An adapter of ``softmargin/_formula.py`` (the derivation is there), like the CPU kernel: each program owns one row
and walks its classes in tiles of ``BLOCK`` columns, computing in float32 (float64 for float64 inputs) and summing the
weighted element losses in float64, so a row's loss keeps float32 accuracy even for millions of classes. The loop
order is fixed, so results are bitwise reproducible. Tested on the CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _fused_rows_kernel(
    x_ptr,
    y_ptr,
    w_ptr,
    out_ptr,
    g_ptr,
    num_classes,
    w_row_stride,
    scale,
    HAS_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * num_classes
    y_row = y_ptr + row * num_classes
    w_row = w_ptr + row * w_row_stride
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < num_classes
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(COMPUTE)
        y = tl.load(y_row + cols, mask=mask, other=0.0).to(COMPUTE)
        w = tl.load(w_row + cols, mask=mask, other=0.0).to(COMPUTE)
        z = tl.exp(-tl.abs(x))  # in [0, 1]: cannot overflow
        pos = tl.where(x > 0, x, 0.0)
        neg = tl.where(x < 0, -x, 0.0)
        # 0 * inf (a right prediction at infinity) is taken as its limit, 0
        margin = tl.where(y == 1.0, 0.0, (1.0 - y) * pos) + tl.where(y == 0.0, 0.0, y * neg)
        u = 1.0 + z
        log1p_z = tl.where(u == 1.0, z, tl.log(u) * z / (u - 1.0))  # log1p(z) without libdevice (Goldberg)
        loss = tl.where(w == 0.0, 0.0, log1p_z + margin)  # a zero weight removes the element
        acc += w.to(tl.float64) * loss.to(tl.float64)
        if HAS_GRAD:
            r = 1.0 / u  # sigmoid(|x|)
            zr = z * r  # sigmoid(-|x|)
            sig_pos = tl.where(x >= 0, r, zr)
            sig_neg = tl.where(x >= 0, zr, r)
            g = w * scale * ((1.0 - y) * sig_pos - y * sig_neg)
            tl.store(g_ptr + row * num_classes + cols, g.to(g_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + row, tl.sum(acc, axis=0))


def fused_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    w: Optional[torch.Tensor],
    num_rows: int,
    num_classes: int,
    scale: float,
    need_grad: bool,
    block: Optional[int] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Row sums (float64, shape (N,)) and the gradient ((N, C), x's dtype) for contiguous (N, C) x and y.

    ``w`` is None, a (1, C) row or an (N, C) matrix (any float dtype; cast in the kernel).
    """
    x = x.reshape(num_rows, num_classes).contiguous()
    if y.dtype == torch.bool:
        y = y.to(torch.uint8)
    y = y.reshape(num_rows, num_classes).contiguous()
    if w is None:
        w = torch.ones(1, num_classes, dtype=torch.float32, device=x.device)
    w = w.contiguous()
    row_sums = torch.empty(num_rows, dtype=torch.float64, device=x.device)
    grad = torch.empty((num_rows, num_classes), dtype=x.dtype, device=x.device) if need_grad else None
    if block is None:
        block = min(4096, max(16, triton.next_power_of_2(num_classes)))
    _fused_rows_kernel[(num_rows,)](
        x, y, w, row_sums, grad if grad is not None else row_sums,
        num_classes, 0 if w.shape[0] == 1 else num_classes, scale,
        HAS_GRAD=need_grad, BLOCK=block, COMPUTE=tl.float64 if x.dtype == torch.float64 else tl.float32,
    )  # fmt: skip
    return row_sums, grad
