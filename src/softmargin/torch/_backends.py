"""The backends that compute the loss rows, and the table that chooses one.

Every backend computes, for the (N, C) rows of a problem, the per-sample losses (each row's weighted element losses
divided by its number of labels: C, or the observed ones under a mask), the gradient of their sum w.r.t. the logits
in the same pass, and the number of rows that count in a batch mean. They run inside the operator of
:mod:`softmargin.torch._ops` on real tensors only (never while a graph is traced), which is why they may read
pointers, ask for the thread count and raise with the first bad value.

=========  ==========================================  =================================================
backend    where                                       what
=========  ==========================================  =================================================
``cpu``    CPU tensors, when the C kernel is available  the fused C kernel (``softmargin.kernels.cpu``)
``triton`` CUDA tensors (or CPU tensors under            the Triton kernel (``softmargin.kernels.triton_kernels``):
           ``TRITON_INTERPRET=1``)                      every option, dense and sparse (CSR) targets
``torch``  any device, any option                      chunked torch operations (``_chunks``; on the CPU without focusing
                                                       or pos_weight the short path of ``torch._fallback``)
=========  ==========================================  =================================================

``auto`` (the default) takes the first that applies; ``SOFTMARGIN_BACKEND=cpu|triton|torch`` forces one, and
asking for one that cannot run on the given tensors is an error, not a silent fallback. Two eager calls skip this
table: the loss of a contiguous (N, C) CPU batch reduced to its mean or sum, plain or with options (one-row weights, a
mask), when ``cpu`` would run it, goes straight to the kernel library (``_ops._PlainLoss``, ``_ops._OptionsLoss``,
bitwise the same results; ``SOFTMARGIN_BACKEND=torch`` or ``triton`` still decides).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import torch

from .. import _validation as V
from .._chunks import Rows, redo_overflowed_rows, row_bookkeeping
from .._chunks import loss_rows as chunked_loss_rows
from .._options import PLAIN, LossOptions
from .._sparse import SparseTargets
from ..kernels import cpu
from ._fallback import plain_loss_rows

#: Elements per chunk of the torch backend (float32: 256 KiB per temporary, so that a chunk's temporaries stay in a
#: 2 MiB L2 cache; larger chunks measured slower).

CHUNK_ELEMENTS = 1 << 16

BACKENDS = ("auto", "cpu", "triton", "torch")

_NATIVE_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float16, bfloat16 and float32 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _kernel_target(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A dense target (or a sparse target's values) as the C kernel reads it: in the input's dtype, uint8 or the
    compute dtype as given (float16/bfloat16 logits take a float32 target: soft labels are not rounded to the
    logits' 11 or 8 bits, see kernels/csrc/kernel.c); another dtype converted once to the compute dtype (documented
    cost)."""
    if y.dtype in (x.dtype, torch.uint8, compute_dtype(x.dtype)):
        return y
    return y.to(compute_dtype(x.dtype))


def per_sample_dtype(x: torch.Tensor, y: Any, weight: torch.Tensor | None) -> torch.dtype:
    """The per-sample losses' dtype: float64 when the input, a dense target or the weight is float64 (torch's loss
    then computes in float64 from the weighting on: a float32 input's per-sample loss may exceed float32's range and
    stay finite), else float32."""
    operands = (x, y if isinstance(y, torch.Tensor) else None, weight)
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in operands) else torch.float32


def requested_backend() -> str:
    """``SOFTMARGIN_BACKEND`` (default ``auto``), checked."""
    value = os.environ.get("SOFTMARGIN_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"SOFTMARGIN_BACKEND={value!r} is not valid: expected one of {', '.join(BACKENDS)}")
    return value


@functools.cache
def triton_module() -> Any:
    """The Triton kernel module, or None where Triton is not installed."""
    try:
        from ..kernels import triton_kernels
    except ImportError:
        return None
    return triton_kernels


def _triton_runs_on(x: torch.Tensor) -> bool:
    return x.is_cuda or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def choose_backend(x: torch.Tensor) -> str:
    """The backend for these logits, from the table above."""
    wanted = requested_backend()
    if x.numel() == 0:
        return "torch"  # nothing to compute: the bookkeeping alone (NaN for an empty mean, as torch)
    native = x.device.type == "cpu" and x.dtype in _NATIVE_DTYPES and cpu.kernel() is not None
    if wanted == "auto":
        if native and x.numel() > 0:
            return "cpu"
        if x.is_cuda and x.numel() > 0 and triton_module() is not None:
            return "triton"
        return "torch"
    if wanted == "cpu" and not native:
        raise RuntimeError(
            f"SOFTMARGIN_BACKEND=cpu, but the C kernel cannot run here (input on {x.device}, dtype {x.dtype}, "
            f"kernel {'available' if cpu.kernel() is not None else 'not available'}): unset it or choose 'torch'"
        )
    if wanted == "triton":
        if triton_module() is None:
            raise RuntimeError("SOFTMARGIN_BACKEND=triton, but Triton is not installed: pip install 'softmargin[triton]'")
        if not _triton_runs_on(x):
            raise RuntimeError(
                f"SOFTMARGIN_BACKEND=triton needs CUDA tensors (input is on {x.device}); CPU tensors run through "
                "Triton's interpreter only with TRITON_INTERPRET=1 set before Triton is imported"
            )
    return wanted


def _exact_in(weight: torch.Tensor | None, dtype: torch.dtype) -> bool:
    """Whether ``weight`` read in ``dtype`` (the kernel's compute dtype) is the same weight: a float64 weight beyond
    float32's range (inf) or below its smallest value (0, dropping the element) is not. Only CPU tensors come here."""
    if weight is None or weight.dtype != torch.float64 or dtype == torch.float64:
        return True
    narrow = weight.to(dtype)
    return bool(torch.equal(narrow.isinf(), weight.isinf()) and torch.equal(narrow == 0, weight == 0))


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


def _shaped(grad: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    return None if grad is None else grad.reshape(shape)


def _rows(x: torch.Tensor, y: Any, weight: Any, pos_weight: Any, mask: Any, cdtype: Any) -> Rows:
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
    reshaped: torch.Tensor = per_sample.expand(row_sums.shape[0]).reshape(shape[:-1])
    return reshaped


def _row_sums(t: torch.Tensor) -> torch.Tensor:
    """Each row's sum in float64: the chunked loop's row sums (chunked_loss_rows, redo_overflowed_rows)."""
    return t.sum(dim=1, dtype=torch.float64)


def _ones(num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """A (1, C) row of ones: the kernel's default weight, pos_weight and mask (made per call: a few microseconds;
    a cached tensor could be a fake or functional one left by a trace)."""
    return torch.ones(1, num_classes, dtype=dtype)


def _native(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    options: LossOptions,
    reduction: str,
    need_grad: bool,
) -> tuple[tuple[torch.Tensor, torch.Tensor | None, float], bool]:
    """The compiled kernel: one pass, no temporaries beyond the gradient itself (see kernels/csrc/). Also returns
    whether the kernel saw a target outside [0, 1] (the row functions that look: see ``cpu.fused``)."""
    cdtype = compute_dtype(x.dtype)
    x = x.contiguous()
    if (
        x.dim() == 2 and pos_weight is None and mask is None and options == PLAIN and isinstance(y, torch.Tensor)
        and y.dtype in (x.dtype, torch.uint8, cdtype) and (weight is None or weight.dim() <= 1)
    ):  # fmt: skip
        return _native_plain(x, y.contiguous(), weight, cdtype, reduction, need_grad)
    sparse = y if isinstance(y, SparseTargets) else None
    if sparse is not None:
        sparse_values = None if sparse.values is None else _kernel_target(sparse.values, x).contiguous()
        y_kind = "uint8" if sparse_values is None else _NATIVE_DTYPES[sparse_values.dtype]
    elif y.dtype == torch.bool:
        y = y.contiguous().view(torch.uint8)
    else:
        y = _kernel_target(y, x)
    mask_bytes = None if mask is None else mask.contiguous().view(torch.uint8)  # bool is one byte: no copy
    rows = _rows(x, y if sparse is not None else y.contiguous(), weight, pos_weight, mask_bytes, cdtype)
    divisor, grad_scale, counted = row_bookkeeping(rows, reduction, torch, lambda t: t.to(torch.float64), _count_rows)
    num_rows, num_classes = rows.num_rows, rows.num_classes
    plain = pos_weight is None and mask is None and options == PLAIN
    w = (rows.weight if rows.weight is not None else _ones(num_classes, cdtype)).contiguous()
    pw = rows.pos_weight if rows.pos_weight is not None else (None if plain else _ones(num_classes, cdtype))
    pw = None if pw is None else pw.contiguous()
    m = rows.mask if rows.mask is not None else (None if plain else _ones(num_classes, torch.uint8))
    m = None if m is None else m.contiguous()
    row_scale = None if isinstance(grad_scale, float) else grad_scale.contiguous()
    row_sums = torch.empty(num_rows, dtype=torch.float64)
    grad = torch.empty((num_rows, num_classes), dtype=x.dtype) if need_grad else None

    def pointer(t: torch.Tensor | None) -> tuple[int | None, int]:
        return (None, 0) if t is None else (t.data_ptr(), 0 if t.shape[0] == 1 else num_classes)

    if sparse is None:
        y_kind = "uint8" if rows.y.dtype == torch.uint8 else _NATIVE_DTYPES[rows.y.dtype]
    out_of_range = cpu.fused(
        _NATIVE_DTYPES[x.dtype], y_kind, rows.x.data_ptr(), None if sparse is not None else rows.y.data_ptr(),
        pointer(w), pointer(pw), pointer(m), num_rows, num_classes,
        grad_scale if isinstance(grad_scale, float) else 0.0, None if row_scale is None else row_scale.data_ptr(),
        None if plain else (options.label_smoothing, options.gamma_pos, options.gamma_neg, options.clip),
        row_sums.data_ptr(), None if grad is None else grad.data_ptr(), torch.get_num_threads(),
        None if sparse is None else (sparse.indptr.data_ptr(), sparse.indices.data_ptr(),
                                     None if sparse_values is None else sparse_values.data_ptr()),
    )  # fmt: skip
    if pos_weight is not None and x.dtype != torch.float64:  # pw * softplus(-x) beyond float32: those rows in float64
        redo_overflowed_rows(
            rows, options, row_sums, xp=torch, compute=lambda t: t.to(torch.float64),
            row_sum=_row_sums, chunk_elements=CHUNK_ELEMENTS,
        )  # fmt: skip
    return (_per_sample(row_sums, divisor, mask is not None, x.shape), _shaped(grad, x.shape), counted), out_of_range



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
        w = _ones(num_classes, cdtype)
    elif weight.shape == (num_classes,) and weight.dtype == cdtype and weight.is_contiguous():
        w = weight  # the kernel reads it as it is: no conversion, no copy (small calls notice)
    else:
        w = weight.detach().to(cdtype).reshape(1, -1).expand(1, num_classes).contiguous()
    row_sums = torch.empty(num_rows, dtype=torch.float64)
    grad = torch.empty_like(x) if need_grad else None
    out_of_range = cpu.fused(
        _NATIVE_DTYPES[x.dtype], "uint8" if y.dtype == torch.uint8 else _NATIVE_DTYPES[y.dtype], x.data_ptr(),
        y.data_ptr(), (w.data_ptr(), 0), (None, 0), (None, 0), num_rows, num_classes,
        _scale(reduction, num_rows, num_classes), None, None, row_sums.data_ptr(),
        None if grad is None else grad.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return (row_sums.div_(num_classes), grad, float(num_rows)), out_of_range


def _observed(mask_rows: torch.Tensor, num_rows: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A mask's row bookkeeping, in tensors (nothing read back): each row's observed labels (N,), each row's
    gradient scale 1 / count (0 for a row with none), and the number of rows with an observed label (0-d float64)."""
    count = mask_rows.sum(1, dtype=dtype).expand(num_rows)
    observed = count > 0
    scale = torch.where(observed, 1.0 / torch.where(observed, count, 1.0), 0.0)
    return count.contiguous(), scale.contiguous(), observed.sum(dtype=torch.float64)


def short_path_applies(x: torch.Tensor, pos_weight: torch.Tensor | None, options: LossOptions) -> bool:
    """Whether the torch backend takes its short path (``_fallback``): CPU tensors, no pos_weight, no focusing."""
    return x.device.type == "cpu" and pos_weight is None and not options.focusing


def _chunked(
    x: torch.Tensor,
    y: Any,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    options: LossOptions,
    reduction: str,
    need_grad: bool,
    short_path: bool | None = None,
    check: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Chunked torch operations: any device, any option; one gradient plus one chunk of temporaries.

    On CPU tensors without focusing or pos_weight, the short path (``_fallback.plain_loss_rows``, which reads the
    row sums back to check them: free on the CPU); otherwise, and on every other device, ``_chunks.loss_rows``, which
    reads nothing back (each such read waits for the device): the row bookkeeping stays in tensors, and the number of
    rows in the mean is a 0-d tensor. ``short_path``: force the choice (None: as just said; True only where it
    applies). ``check``: the short path checks the target's range as it reads it (without label smoothing; see
    ``_fallback.plain_loss_rows``)."""
    cdtype = compute_dtype(x.dtype)
    applies = short_path_applies(x, pos_weight, options)
    if short_path and not applies:
        raise ValueError("the short path runs on CPU tensors without focusing or pos_weight")
    short = applies if short_path is None else short_path
    # the short path reads the weight in its own dtype (a float64 weight keeps its precision in the row sums)
    rows = _rows(x, y, weight, pos_weight, mask, None if short else cdtype)
    num_rows, num_classes = rows.num_rows, rows.num_classes
    if rows.mask is None:
        divisor: Any = float(num_classes)
        grad_scale: Any = _scale(reduction, num_rows, num_classes)
        counted = torch.full((), float(num_rows), dtype=torch.float64, device=x.device)
    else:
        divisor, grad_scale, counted = _observed(rows.mask, num_rows, torch.float64)
        if reduction == "mean":
            grad_scale = grad_scale / counted.clamp_min(1.0)
    row_sums = torch.empty(num_rows, dtype=torch.float64, device=x.device)
    grad = torch.empty(rows.x.shape, dtype=x.dtype, device=x.device) if need_grad else None
    if short:  # torch/_fallback.py
        plain_loss_rows(
            rows, options.label_smoothing, grad_scale, need_grad, cdtype, row_sums, grad,
            bad_target=(lambda: check_target_values(y)) if check else None,
        )  # fmt: skip
    else:
        chunked_loss_rows(
            rows, options, grad_scale, need_grad, xp=torch, compute=lambda t: t.to(cdtype),
            row_sum=_row_sums, row_sums_out=row_sums, grad_out=grad,
            chunk_elements=CHUNK_ELEMENTS,
        )  # fmt: skip
        if pos_weight is not None and cdtype != torch.float64 and x.is_cpu:
            # pw * softplus(-x) beyond float32 where the row's mean is not: those rows in float64, as the C kernel's
            # path does (on other devices that would read the row sums back: there the Triton kernel runs)
            redo_overflowed_rows(
                rows, options, row_sums, xp=torch, compute=lambda t: t.to(torch.float64), row_sum=_row_sums,
                chunk_elements=CHUNK_ELEMENTS,
            )  # fmt: skip
    return _per_sample(row_sums, divisor, mask is not None, x.shape), _shaped(grad, x.shape), counted


def _triton(
    x: torch.Tensor,
    y: Any,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    options: LossOptions,
    need_grad: bool,
    check: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The Triton kernel: every option, dense or sparse (CSR on the device) targets, one launch; the row bookkeeping
    in tensors (nothing read back). ``check``: the target's range and the weights' as a device-side assertion (on
    CPU tensors, under the interpreter, the caller checks them with the messages naming the first bad value)."""
    num_rows, num_classes = math.prod(x.shape[:-1]), x.shape[-1]
    sparse = y if isinstance(y, SparseTargets) else None
    cdtype = compute_dtype(x.dtype)
    mask_rows = _weight_rows(mask, x.shape, None)
    if mask_rows is None:
        scale, row_scale, count = 1.0 / num_classes, None, None
        counted = torch.full((), float(num_rows), dtype=torch.float64, device=x.device)
    else:
        count, row_scale, counted = _observed(mask_rows, num_rows, cdtype)
        scale = 1.0
    row_sums, grad = triton_module().fused_rows(
        x.reshape(num_rows, num_classes), None if sparse is not None else y.reshape(num_rows, num_classes),
        weight=_weight_rows(weight, x.shape, None), pos_weight=_weight_rows(pos_weight, x.shape, None), mask=mask_rows,
        label_smoothing=options.label_smoothing, gamma_pos=options.gamma_pos, gamma_neg=options.gamma_neg,
        clip=options.clip, scale=scale, row_scale=row_scale, need_grad=need_grad,
        sparse=None if sparse is None else (sparse.indptr, sparse.indices, sparse.values),
        check_target=check and sparse is None and not x.is_cpu, check_weights=check and not x.is_cpu,
    )  # fmt: skip
    if count is None:
        per_sample = row_sums / num_classes
    else:
        per_sample = torch.where(count > 0, row_sums / torch.where(count > 0, count, 1.0), 0.0)
    return per_sample.reshape(x.shape[:-1]), _shaped(grad, x.shape), counted


def check_target_values(target: torch.Tensor) -> None:
    """Target values in [0, 1]: on the CPU with the message naming the first bad value; elsewhere as an
    assertion on the device (no wait for it; the error surfaces at the next synchronisation)."""
    if target.dtype == torch.bool:
        return
    if target.device.type == "cpu":
        V.check_target_values(target.detach())
    else:
        ok = ((target >= 0) & (target <= 1)).all()
        torch._assert_async(ok, "softmargin: target has values outside [0, 1] (or NaN); expected every target in [0, 1]")


def check_weight_values(name: str, weight: torch.Tensor, positive: bool) -> None:
    """Weights finite and non-negative (``positive``: > 0); on a device as an assertion there (see above)."""
    if weight.device.type == "cpu":
        V.check_weight_values(name, weight.detach(), positive=positive)
    else:
        low_ok = weight > 0 if positive else weight >= 0
        ok = (low_ok & torch.isfinite(weight)).all()
        expected = "(0, inf)" if positive else "[0, inf)"
        torch._assert_async(ok, f"softmargin: {name} has values outside the finite range {expected}")


def loss_rows(
    x: torch.Tensor,
    y: Any,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    options: LossOptions,
    need_grad: bool,
    check: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The operator's computation on real tensors: per-sample losses (shape ``x.shape[:-1]``, in
    :func:`per_sample_dtype`), the gradient of their sum w.r.t. ``x`` (``x``'s dtype, contiguous) or None, and the number
    of samples that count in a batch mean (a 0-d float64 tensor: all of them, or those with an observed label).

    ``y`` is a dense target of ``x``'s shape or :class:`SparseTargets`; ``check`` checks the target's range and the
    weights (the C kernel checks a dense target as it reads it: see ``cpu.fused``).
    """
    sparse = y if isinstance(y, SparseTargets) else None
    values = None if sparse is None else sparse.values
    if sparse is not None and values is not None and values.dtype not in (x.dtype, compute_dtype(x.dtype)):
        # soft values in the input's dtype or in the compute dtype are used as they are (float32 values of bfloat16
        # logits are not rounded to its 8 bits), as a dense target is, on every path; float64 values (a scipy matrix's)
        # of float32 logits are converted once
        y = sparse = dataclasses.replace(sparse, values=values.to(compute_dtype(x.dtype)))
    plain = pos_weight is None and mask is None and options == PLAIN
    backend = choose_backend(x)
    if (backend == "cpu" or (backend == "torch" and x.is_cpu)) and not (
        _exact_in(weight, compute_dtype(x.dtype)) and _exact_in(pos_weight, compute_dtype(x.dtype))
    ):  # the CPU paths would read this float64 weight in float32 (inf, or 0): they run in float64 instead, as
        # torch's loss computes from the weighting on, and the gradient comes back in the input's dtype (a CUDA
        # call is not checked: that would read the weight back to the host)
        wide = loss_rows(x.double(), y, weight, pos_weight, mask, options, need_grad, check)
        return wide[0].to(per_sample_dtype(x, y, weight)), None if wide[1] is None else wide[1].to(x.dtype), wide[2]
    if check and not (backend == "triton" and not x.is_cpu):  # the Triton kernel checks weights as it reads them
        for name, value, positive in (("weight", weight, False), ("pos_weight", pos_weight, True)):
            if value is not None:
                check_weight_values(name, value, positive)
    if backend == "cpu":
        in_kernel = (
            check and sparse is None and (not plain or _NATIVE_DTYPES[x.dtype] in cpu.TARGET_CHECKED)
            and y.dtype in (x.dtype, torch.uint8, torch.bool, compute_dtype(x.dtype))  # read as given, not converted
        )  # fmt: skip
        if check and sparse is None and not in_kernel:
            check_target_values(y)
        (per_sample, grad, counted), out_of_range = _native(x, y, weight, pos_weight, mask, options, "none", need_grad)
        if out_of_range and in_kernel:
            check_target_values(y)  # raises, naming the first bad value
        return per_sample.to(per_sample_dtype(x, y, weight)), grad, torch.tensor(counted, dtype=torch.float64)
    counted_rows: torch.Tensor
    if backend == "triton":
        if check and sparse is None and x.is_cpu:  # the interpreter: checked here, with the first bad value
            check_target_values(y)
        per_sample, grad, counted_rows = _triton(x, y, weight, pos_weight, mask, options, need_grad, check)
    else:
        # the short path without label smoothing checks a dense target as it reads it (see _fallback)
        in_path = short_path_applies(x, pos_weight, options) and not options.label_smoothing
        if check and sparse is None and not in_path:
            check_target_values(y)
        per_sample, grad, counted_rows = _chunked(
            x, y, weight, pos_weight, mask, options, "none", need_grad, check=check and sparse is None
        )
    return per_sample.to(per_sample_dtype(x, y, weight)), grad, counted_rows
