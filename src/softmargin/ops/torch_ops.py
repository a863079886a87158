"""The fused PyTorch operator: loss and gradient in one pass over bounded chunks of rows.

Forward computes the per-sample losses and, when ``input`` requires grad, the gradient ``w * scale * (sigmoid(x)
- y)`` in the same pass; backward only scales it by the incoming gradient (as Liger-Kernel does for
cross-entropy). Extra memory is one gradient plus one chunk of temporaries, where torch's composite keeps about
ten N x C intermediates alive. No validation happens here: the public entry points (``softmargin.torch``) validate.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import torch

from .._formula import element_loss_and_grad
from . import cpu

#: Elements per chunk (float32: 256 KiB per temporary, so a chunk's temporaries stay in a 2 MiB L2 cache).
CHUNK_ELEMENTS = 1 << 16


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float16, bfloat16 and float32 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _weight_rows(weight: Optional[torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The weight as a (1, C) row (per-class or scalar weight) or laid out like the input as (N, C)."""
    if weight is None:
        return None
    weight = weight.to(dtype)
    if weight.dim() <= 1:
        return weight.reshape(1, -1).expand(1, shape[-1])
    return weight.expand(shape).reshape(math.prod(shape[:-1]), shape[-1])  # copies only if broadcast


def _scale(reduction: str, num_rows: int, num_classes: int) -> float:
    count = num_classes * (num_rows if reduction == "mean" else 1)
    return 1.0 / count if count else float("nan")


def loss_and_grad(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: Optional[torch.Tensor],
    reduction: str,
    need_grad: bool,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-sample losses (float64 accumulation, shape ``x.shape[:-1]``) and the gradient (``x.dtype``) or None.

    Dispatch: the compiled CPU kernel where it can be built (``ops/cpu.py``), the Triton kernel on CUDA where
    Triton is installed (``ops/triton_ops.py``), else chunked torch operations on any device. Both give the gradient of ``reduce(per_sample, reduction)`` (for "none", of the sum).
    """
    num_classes = x.shape[-1]
    num_rows = math.prod(x.shape[:-1])
    scale = _scale(reduction, num_rows, num_classes)
    triton_ops = _triton_ops() if x.is_cuda else None
    if x.numel() == 0:
        row_sums, grad = _chunked(x, y, weight, num_rows, num_classes, scale, need_grad)
    elif x.device.type == "cpu" and x.dtype in _NATIVE_DTYPES and cpu.kernel() is not None:
        row_sums, grad = _native(x, y, weight, num_rows, num_classes, scale, need_grad)
    elif triton_ops is not None:
        w = _weight_rows(weight, x.shape, compute_dtype(x.dtype))
        row_sums, grad = triton_ops.fused_rows(x, y, w, num_rows, num_classes, scale, need_grad)
    else:
        row_sums, grad = _chunked(x, y, weight, num_rows, num_classes, scale, need_grad)
    per_sample = (row_sums / num_classes).reshape(x.shape[:-1])
    return per_sample, (grad.reshape(x.shape) if grad is not None else None)


@functools.lru_cache(maxsize=None)
def _triton_ops() -> Any:
    """The Triton kernel module, or None where Triton is not installed (then the chunked torch path runs)."""
    try:
        from . import triton_ops
    except ImportError:
        return None
    return triton_ops


_NATIVE_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _native(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: Optional[torch.Tensor],
    num_rows: int,
    num_classes: int,
    scale: float,
    need_grad: bool,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The compiled kernel: one pass, no temporaries beyond the gradient itself (see cpu_kernel.c)."""
    x = x.contiguous()
    if y.dtype == torch.bool:
        y = y.contiguous().view(torch.uint8)
    elif y.dtype not in (x.dtype, torch.uint8):
        y = y.to(x.dtype)  # a target in another float dtype is converted once (documented cost)
    y = y.contiguous()
    w = _weight_rows(weight, x.shape, compute_dtype(x.dtype))
    if w is None:
        w = torch.ones(1, num_classes, dtype=compute_dtype(x.dtype))
    w = w.contiguous()
    row_sums = torch.empty(num_rows, dtype=torch.float64)
    grad = torch.empty((num_rows, num_classes), dtype=x.dtype) if need_grad else None
    cpu.fused(
        _NATIVE_DTYPES[x.dtype],
        "uint8" if y.dtype == torch.uint8 else _NATIVE_DTYPES[x.dtype],
        x.data_ptr(), y.data_ptr(), w.data_ptr(), 0 if w.shape[0] == 1 else num_classes,
        num_rows, num_classes, scale, row_sums.data_ptr(), None if grad is None else grad.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    return row_sums, grad


def _chunked(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: Optional[torch.Tensor],
    num_rows: int,
    num_classes: int,
    scale: float,
    need_grad: bool,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Chunked torch operations over rows: any device; extra memory one gradient plus one chunk of temporaries."""
    cdtype = compute_dtype(x.dtype)
    x2 = x.reshape(num_rows, num_classes)
    y2 = y.reshape(num_rows, num_classes)
    w2 = _weight_rows(weight, x.shape, cdtype)
    zero_weights = w2 is not None and bool((w2 == 0).any())
    row_sums = torch.empty(num_rows, dtype=torch.float64, device=x.device)
    grad = torch.empty((num_rows, num_classes), dtype=x.dtype, device=x.device) if need_grad else None
    step = max(1, chunk_elements // max(num_classes, 1))
    for start in range(0, num_rows, step):
        stop = min(start + step, num_rows)
        loss, g = element_loss_and_grad(x2[start:stop].to(cdtype), y2[start:stop].to(cdtype), torch, need_grad=need_grad)
        if w2 is not None:
            wc = w2 if w2.shape[0] == 1 else w2[start:stop]
            loss = loss.to(torch.float64) * wc  # in float64: w * l may exceed float32 where the row mean does not
            if zero_weights:  # a zero weight removes the element, even where its loss is inf (0 * inf)
                loss = torch.where(wc == 0, 0.0, loss)
            if g is not None:
                g = g * wc
        row_sums[start:stop] = loss.sum(dim=1, dtype=torch.float64)
        if grad is not None and g is not None:
            grad[start:stop] = g * scale
    return row_sums, grad


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.mean()  # an empty batch gives NaN, as torch's mean does


class MultiLabelSoftMarginLossFunction(torch.autograd.Function):
    """Autograd wrapper: gradient w.r.t. input precomputed in forward; target and weight gradients on demand.

    Under ``create_graph=True`` backward rebuilds the gradients from differentiable torch ops instead, so higher
    derivatives (``torch.autograd.gradgradcheck``, Hessian-vector products) work too.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, y: torch.Tensor, weight: Optional[torch.Tensor], reduction: str
    ) -> torch.Tensor:
        per_sample, grad = loss_and_grad(x, y, weight, reduction, need_grad=ctx.needs_input_grad[0])
        ctx.reduction = reduction
        # x, y and weight are the caller's own tensors: saving them costs no memory. The gradient is kept on ctx,
        # not saved, so that backward can hand it over without a copy (see there).
        ctx.save_for_backward(x, y, weight)
        ctx.grad = grad
        return reduce(per_sample, reduction).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, y, weight = ctx.saved_tensors
        grad = ctx.grad
        if ctx.reduction == "none":
            grad_output = grad_output.unsqueeze(-1)
        need_x, need_y, need_w = ctx.needs_input_grad[:3]
        num_classes = x.shape[-1]
        scale = _scale(ctx.reduction, math.prod(x.shape[:-1]), num_classes)
        differentiable = torch.is_grad_enabled()
        grad_x = grad_y = grad_w = None
        if need_x:
            if differentiable:
                grad_x = (torch.sigmoid(x) - y) * (scale * grad_output)
                grad_x = grad_x if weight is None else grad_x * weight
            elif grad is None:  # a second backward (retain_graph=True) after the gradient was handed over
                grad_x = loss_and_grad(x, y, weight, ctx.reduction, need_grad=True)[1] * grad_output.to(x.dtype)
            elif grad_output.numel() == 1 and bool(grad_output == 1):
                # the usual loss.backward(): the precomputed gradient is the answer. Dropping ctx's reference
                # lets autograd take the tensor itself as x.grad instead of copying it.
                grad_x, ctx.grad = grad, None
            else:
                grad_x = grad * grad_output.to(grad.dtype)
        if need_y:  # dL/dy = -scale * w * x; a zero weight removes the element, also where x is infinite
            grad_y = -x * (scale * grad_output)
            if weight is not None:
                grad_y = torch.where(weight == 0, 0.0, grad_y * weight)
            grad_y = grad_y.to(y.dtype)
        if need_w:  # dL/dw = scale * l(x, y), summed over the dimensions the weight was broadcast along
            element_loss, _ = element_loss_and_grad(x.to(weight.dtype), y.to(weight.dtype), torch, need_grad=False)
            grad_w = (element_loss * (scale * grad_output)).sum_to_size(weight.shape)
        return grad_x, grad_y, grad_w, None
