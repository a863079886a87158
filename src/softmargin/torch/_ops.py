"""The fused PyTorch operator: loss and gradient in one pass over bounded chunks of rows.

Forward computes the per-sample losses and, when ``input`` requires grad, the gradient ``w * scale * (sigmoid(x)
- y)`` in the same pass; backward only scales it by the incoming gradient (as Liger-Kernel does for
cross-entropy). Extra memory is one gradient plus one chunk of temporaries, where torch's composite keeps about
ten N x C intermediates alive. No validation happens here: the public entry points (``softmargin.torch``) validate.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from typing import Any

import torch

from .. import _validation as V
from .._chunks import PLAIN, Options, Rows, loss_rows, row_bookkeeping
from .._formula import element_loss_and_grad
from .._sparse import SparseTargets
from ..kernels import cpu

#: Elements per chunk (float32: 256 KiB per temporary, so a chunk's temporaries stay in a 2 MiB L2 cache).
CHUNK_ELEMENTS = 1 << 16


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float16, bfloat16 and float32 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _weight_rows(weight: torch.Tensor | None, shape: torch.Size, dtype: torch.dtype | None) -> torch.Tensor | None:
    """None, a (1, C) row (for a tensor of at most one dimension) or the tensor laid out like the input as (N, C)."""
    if weight is None:
        return None
    if dtype is not None:
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
    weight: torch.Tensor | None,
    reduction: str,
    need_grad: bool,
    pos_weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    options: Options = PLAIN,
    check_target: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Per-sample losses (float64, shape ``x.shape[:-1]``), the gradient (``x.dtype``) or None, rows in the mean.

    ``check_target``: raise ValueError for a dense target outside [0, 1]. The CPU kernel checks as it reads the
    target, for free (the plain loss in float32/16, the options in every dtype); every other path checks first, in
    one min/max pass.

    Dispatch: the compiled CPU kernel where it can be built (``ops/cpu.py``); on CUDA the Triton kernel for the
    plain loss where Triton is installed (``ops/triton_ops.py``); else chunked torch operations on any device.
    The gradient is that of ``reduce(per_sample, reduction)`` (for "none", of the sum).
    """
    dense = not isinstance(y, SparseTargets)
    if isinstance(y, SparseTargets) and y.values is not None and y.values.dtype != x.dtype:
        # soft values are used at the input's precision, as a dense target of its dtype would be, on every path
        y = dataclasses.replace(y, values=y.values.to(x.dtype))
    plain = pos_weight is None and mask is None and options == PLAIN
    native = x.numel() > 0 and x.device.type == "cpu" and x.dtype in _NATIVE_DTYPES and cpu.kernel() is not None
    in_kernel = (
        native and check_target and dense and (not plain or _NATIVE_DTYPES[x.dtype] in cpu.TARGET_CHECKED)
        and y.dtype in (x.dtype, torch.uint8, torch.bool)  # a target the kernel reads as given, not converted
    )  # fmt: skip
    if check_target and dense and not in_kernel:
        V.check_target_values(y.detach())
    if native:
        result, out_of_range = _native(x, y, weight, pos_weight, mask, options, reduction, need_grad)
        if out_of_range and in_kernel:
            V.check_target_values(y.detach())  # raises, naming the first bad value
        return result
    triton_ops = _triton_ops() if x.numel() > 0 and x.is_cuda and plain and dense else None
    if triton_ops is not None:
        num_rows, num_classes = math.prod(x.shape[:-1]), x.shape[-1]
        w = _weight_rows(weight, x.shape, compute_dtype(x.dtype))
        scale = _scale(reduction, num_rows, num_classes)
        row_sums, grad = triton_ops.fused_rows(x, y, w, num_rows, num_classes, scale, need_grad)
        return (row_sums / num_classes).reshape(x.shape[:-1]), _shaped(grad, x.shape), float(num_rows)
    return _chunked(x, y, weight, pos_weight, mask, options, reduction, need_grad)


def _shaped(grad: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    return None if grad is None else grad.reshape(shape)


@functools.cache
def _triton_ops() -> Any:
    """The Triton kernel module, or None where Triton is not installed (then the chunked torch path runs)."""
    try:
        from ..kernels import triton_kernels as triton_ops
    except ImportError:
        return None
    return triton_ops


_NATIVE_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _rows(x: torch.Tensor, y: torch.Tensor, weight: Any, pos_weight: Any, mask: Any, cdtype: Any) -> Rows:
    num_rows, num_classes = math.prod(x.shape[:-1]), x.shape[-1]
    return Rows(
        x.reshape(num_rows, num_classes),
        y if isinstance(y, SparseTargets) else y.reshape(num_rows, num_classes),
        _weight_rows(weight, x.shape, cdtype),
        _weight_rows(pos_weight, x.shape, cdtype),
        _weight_rows(mask, x.shape, None),
    )


def _per_sample(row_sums: torch.Tensor, divisor: Any, masked: bool, shape: torch.Size) -> torch.Tensor:
    per_sample = row_sums / divisor
    if masked:  # a sample with no observed label contributes 0
        per_sample = torch.where(torch.as_tensor(divisor, device=row_sums.device) > 0, per_sample, 0.0)
    return per_sample.expand(row_sums.shape[0]).reshape(shape[:-1])


@functools.lru_cache(maxsize=64)
def ones_row(num_classes: int, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """A (1, C) row of ones (the kernels' default weight, pos_weight and mask), made once per size, dtype and
    device (None: the CPU): the kernels only read it, and small calls should not pay for an allocation."""
    return torch.ones(1, num_classes, dtype=dtype, device=device)


def _native(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    options: Options,
    reduction: str,
    need_grad: bool,
) -> tuple[tuple[torch.Tensor, torch.Tensor | None, float], bool]:
    """The compiled kernel: one pass, no temporaries beyond the gradient itself (see cpu_kernel.c). Also returns
    whether the kernel saw a target outside [0, 1] (the row functions that look: see ``cpu.fused``)."""
    cdtype = compute_dtype(x.dtype)
    x = x.contiguous()
    if (
        x.dim() == 2 and pos_weight is None and mask is None and options == PLAIN and isinstance(y, torch.Tensor)
        and y.dtype in (x.dtype, torch.uint8) and (weight is None or weight.dim() <= 1)
    ):  # fmt: skip
        return _native_plain(x, y.contiguous(), weight, cdtype, reduction, need_grad)
    sparse = y if isinstance(y, SparseTargets) else None
    if sparse is not None:
        y_kind = "uint8" if sparse.values is None else _NATIVE_DTYPES[x.dtype]
        sparse_values = None if sparse.values is None else sparse.values.to(x.dtype).contiguous()
    elif y.dtype == torch.bool:
        y = y.contiguous().view(torch.uint8)
    elif y.dtype not in (x.dtype, torch.uint8):
        y = y.to(x.dtype)  # a target in another float dtype is converted once (documented cost)
    mask_bytes = None if mask is None else mask.contiguous().view(torch.uint8)  # bool is one byte: no copy
    rows = _rows(x, y if sparse is not None else y.contiguous(), weight, pos_weight, mask_bytes, cdtype)
    divisor, grad_scale, counted = row_bookkeeping(rows, reduction, torch, lambda t: t.to(torch.float64), _count_rows)
    num_rows, num_classes = rows.num_rows, rows.num_classes
    plain = pos_weight is None and mask is None and options == PLAIN
    w = (rows.weight if rows.weight is not None else ones_row(num_classes, cdtype)).contiguous()
    pw = rows.pos_weight if rows.pos_weight is not None else (None if plain else ones_row(num_classes, cdtype))
    pw = None if pw is None else pw.contiguous()
    m = rows.mask if rows.mask is not None else (None if plain else ones_row(num_classes, torch.uint8))
    m = None if m is None else m.contiguous()
    row_scale = None if isinstance(grad_scale, float) else grad_scale.contiguous()
    row_sums = torch.empty(num_rows, dtype=torch.float64)
    grad = torch.empty((num_rows, num_classes), dtype=x.dtype) if need_grad else None

    def pointer(t: torch.Tensor | None) -> tuple[int | None, int]:
        return (None, 0) if t is None else (t.data_ptr(), 0 if t.shape[0] == 1 else num_classes)

    if sparse is None:
        y_kind = "uint8" if rows.y.dtype == torch.uint8 else _NATIVE_DTYPES[x.dtype]
    out_of_range = cpu.fused(
        _NATIVE_DTYPES[x.dtype], y_kind, rows.x.data_ptr(), None if sparse is not None else rows.y.data_ptr(),
        pointer(w), pointer(pw), pointer(m), num_rows, num_classes,
        grad_scale if isinstance(grad_scale, float) else 0.0, None if row_scale is None else row_scale.data_ptr(),
        None if plain else (options.label_smoothing, options.gamma_pos, options.gamma_neg, options.clip),
        row_sums.data_ptr(), None if grad is None else grad.data_ptr(), torch.get_num_threads(),
        None if sparse is None else (sparse.indptr.data_ptr(), sparse.indices.data_ptr(),
                                     None if sparse_values is None else sparse_values.data_ptr()),
    )  # fmt: skip
    return (_per_sample(row_sums, divisor, mask is not None, x.shape), _shaped(grad, x.shape), counted), out_of_range


class PerVersion:
    """Values kept per tensor and version: a tensor's ``_version`` changes on every in-place write, so a value made
    from an older version is never returned, and an entry goes with its tensor. Inference tensors have no version
    counter: nothing is kept for them. Serves the weight checks (``softmargin.torch``) and conversions (below)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref[torch.Tensor], int, Any]] = {}

    def get(self, tensor: torch.Tensor) -> Any:
        """The value kept for this version of ``tensor``, or None."""
        if tensor.is_inference():
            return None
        entry = self._entries.get(id(tensor))
        return entry[2] if entry is not None and entry[0]() is tensor and entry[1] == tensor._version else None

    def put(self, tensor: torch.Tensor, value: Any) -> None:
        if tensor.is_inference():
            return
        key = id(tensor)
        self._entries[key] = (weakref.ref(tensor, lambda _: self._entries.pop(key, None)), tensor._version, value)


# A weight converted for the kernel (say bfloat16 to float32): a module's class weight is converted once, not at
# every call.
_CONVERTED = PerVersion()


def _kernel_weight(weight: torch.Tensor, cdtype: torch.dtype, num_classes: int) -> torch.Tensor:
    kept = _CONVERTED.get(weight)
    if kept is not None and kept.dtype == cdtype and kept.shape[-1] == num_classes:
        return kept
    converted = weight.detach().to(cdtype).reshape(1, -1).expand(1, num_classes).contiguous()
    _CONVERTED.put(weight, converted)
    return converted


def _count_rows(mask: torch.Tensor) -> torch.Tensor:
    """Each row's observed labels of an (N, C) byte mask, counted by the kernel library (torch converts the bytes
    to int32 first: 4 ms against 0.3 at 4096x2000)."""
    mask = mask.contiguous()
    counts = torch.empty(mask.shape[0], dtype=torch.int32)
    cpu.count_rows(mask.data_ptr(), mask.shape[0], mask.shape[1], counts.data_ptr(), torch.get_num_threads())
    return counts


def _native_plain(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, cdtype: torch.dtype, reduction: str, need_grad: bool
) -> tuple[tuple[torch.Tensor, torch.Tensor | None, float], bool]:
    """The common case (dense (N, C) target, a per-class weight or none) without the general path's bookkeeping,
    which costs more than the kernel at small sizes."""
    num_rows, num_classes = x.shape
    if weight is None:
        w = ones_row(num_classes, cdtype)
    elif weight.shape == (num_classes,) and weight.dtype == cdtype and weight.is_contiguous():
        w = weight  # the kernel reads it as it is: no conversion, no copy (small calls notice)
    else:
        w = _kernel_weight(weight, cdtype, num_classes)
    row_sums = torch.empty(num_rows, dtype=torch.float64)
    grad = torch.empty_like(x) if need_grad else None
    out_of_range = cpu.fused(
        _NATIVE_DTYPES[x.dtype], "uint8" if y.dtype == torch.uint8 else _NATIVE_DTYPES[x.dtype], x.data_ptr(),
        y.data_ptr(), (w.data_ptr(), 0), (None, 0), (None, 0), num_rows, num_classes,
        _scale(reduction, num_rows, num_classes), None, None, row_sums.data_ptr(),
        None if grad is None else grad.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return (row_sums.div_(num_classes), grad, float(num_rows)), out_of_range


def _chunked(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    options: Options,
    reduction: str,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Chunked torch operations (``_chunks.loss_rows``): any device, any option; one gradient plus one chunk."""
    cdtype = compute_dtype(x.dtype)
    rows = _rows(x, y, weight, pos_weight, mask, cdtype)
    divisor, grad_scale, counted = row_bookkeeping(rows, reduction, torch, lambda t: t.to(torch.float64))
    row_sums = torch.empty(rows.num_rows, dtype=torch.float64, device=x.device)
    grad = torch.empty(rows.x.shape, dtype=x.dtype, device=x.device) if need_grad else None
    loss_rows(
        rows, options, grad_scale, need_grad, xp=torch, compute=lambda t: t.to(cdtype),
        row_sum=lambda t: t.sum(dim=1, dtype=torch.float64), row_sums_out=row_sums, grad_out=grad,
        chunk_elements=CHUNK_ELEMENTS,
    )  # fmt: skip
    return _per_sample(row_sums, divisor, mask is not None, x.shape), _shaped(grad, x.shape), counted


def reduce(per_sample: torch.Tensor, reduction: str, counted: float) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    # an empty batch gives NaN, as torch's mean does; a batch whose labels are all missing gives 0 (its sum)
    return per_sample.sum() / counted if counted else per_sample.sum() * (math.nan if per_sample.numel() == 0 else 0.0)


class MultiLabelSoftMarginLossFunction(torch.autograd.Function):
    """Autograd wrapper: gradient w.r.t. input precomputed in forward; target and weight gradients on demand.

    Under ``create_graph=True`` backward rebuilds the gradient of the plain loss from differentiable torch ops,
    so higher derivatives (``torch.autograd.gradgradcheck``, Hessian-vector products) work too. With the imbalance
    options only the first derivative w.r.t. ``input`` is available (the public API says so before it starts).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor | None,
        reduction: str,
        pos_weight: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        options: Options = PLAIN,
        check_target: bool = False,
    ) -> torch.Tensor:
        per_sample, grad, counted = loss_and_grad(
            x, y, weight, reduction, ctx.needs_input_grad[0], pos_weight, mask, options, check_target
        )
        ctx.reduction = reduction
        ctx.plain = pos_weight is None and mask is None and options == PLAIN
        # x, y and weight are the caller's own tensors: saving them costs no memory. The gradient is kept on ctx,
        # not saved, so that backward can hand it over without a copy (see there).
        ctx.sparse_target = y if isinstance(y, SparseTargets) else None
        ctx.save_for_backward(x, None if ctx.sparse_target is not None else y, weight, pos_weight, mask)
        ctx.options = options
        ctx.grad = grad
        return reduce(per_sample, reduction, counted).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, y, weight, pos_weight, mask = ctx.saved_tensors
        y = ctx.sparse_target if ctx.sparse_target is not None else y
        grad = ctx.grad
        if ctx.reduction == "none":
            grad_output = grad_output.unsqueeze(-1)
        need_x, need_y, need_w = ctx.needs_input_grad[:3]
        scale = _scale(ctx.reduction, math.prod(x.shape[:-1]), x.shape[-1])
        grad_x = grad_y = grad_w = None
        if need_x:
            if torch.is_grad_enabled():  # create_graph=True
                if not ctx.plain:
                    raise RuntimeError(
                        "softmargin: second derivatives are available for the plain loss only, not with "
                        "pos_weight, mask, label_smoothing or asymmetric focusing"
                    )
                if isinstance(y, SparseTargets):
                    raise RuntimeError("softmargin: second derivatives are not available with sparse targets")
                grad_x = (torch.sigmoid(x) - y) * (scale * grad_output)
                grad_x = grad_x if weight is None else grad_x * weight
            elif grad is None:  # a second backward (retain_graph=True) after the gradient was handed over
                regrad = loss_and_grad(x, y, weight, ctx.reduction, True, pos_weight, mask, ctx.options)[1]
                assert regrad is not None
                grad_x = regrad * grad_output.to(x.dtype)
            elif not grad.is_cpu:
                # scaled in place (the tensor is ours alone) and handed over: no second gradient-sized buffer, and
                # no look at grad_output's value, which would wait for the device
                grad_x, ctx.grad = grad.mul_(grad_output.to(grad.dtype)), None
            elif grad_output.numel() == 1 and grad_output.item() == 1.0:
                # the usual loss.backward(): the precomputed gradient is the answer. Dropping ctx's reference
                # lets autograd take the tensor itself as x.grad instead of copying it.
                grad_x, ctx.grad = grad, None
            else:
                grad_x = grad * grad_output.to(grad.dtype)
        # target and weight gradients (plain loss only; checked before forward)
        if need_y:  # dL/dy = -scale * w * x; a zero weight removes the element, also where x is infinite
            grad_y = -x * (scale * grad_output)
            if weight is not None:
                grad_y = torch.where(weight == 0, 0.0, grad_y * weight)
            grad_y = grad_y.to(y.dtype)
        if need_w:  # dL/dw = scale * l(x, y), summed over the dimensions the weight was broadcast along
            element_loss, _ = element_loss_and_grad(x.to(weight.dtype), y.to(weight.dtype), torch, need_grad=False)
            grad_w = (element_loss * (scale * grad_output)).sum_to_size(weight.shape)
        return grad_x, grad_y, grad_w, None, None, None, None, None
