"""The fused GPU kernel in Triton: per-row loss sums and the gradient in one pass over the logits, every option.

Launcher API (the torch backend calls these; nothing here validates user input beyond shapes and dtypes)::

    fused_rows(x, y, *, weight=None, pos_weight=None, mask=None, label_smoothing=0.0, gamma_pos=0.0,
               gamma_neg=0.0, clip=0.0, scale, row_scale=None, need_grad, sparse=None, sparse_origin=(0, 0),
               check_target=False, check_weights=False, grad_out=None, block=None, span=None) -> (row_sums, grad)

    x            (N, C) logits, contiguous; float16, bfloat16, float32 or float64.
    y            (N, C) dense target: x's dtype (any float dtype is read as it is), uint8 or bool; its rows may be
                 strided (``target[r0:r1, c0:c1]``), its columns contiguous. None when ``sparse`` is given.
    weight       None, (C,), (1, C) or (N, C), any float dtype (read and converted in the kernel).
    pos_weight   None, (C,), (1, C) or (N, C): the positive term's weight (``BCEWithLogitsLoss``'s).
    mask         None, (C,), (1, C) or (N, C), bool or uint8: a zero removes the element (a missing label).
    label_smoothing, gamma_pos, gamma_neg, clip
                 Python floats: the options of ``_formula.element_loss_and_grad_options``.
    scale        Python float: the gradient's scale (``1 / (N C)`` for a mean, ``1 / C`` for a sum).
    row_scale    None or (N,) floats: each row's gradient is multiplied by it too (a mask's per-row divisors, the
                 incoming per-sample gradient of ``reduction="none"``).
    need_grad    whether to compute the gradient; without it ``grad`` is None.
    sparse       None or ``(indptr, indices, values_or_None)``: CSR positives on x's device, indices ascending and
                 unique within each row, values of any float dtype, read as they are (None: all ones); replaces
                 ``y``. Read in the kernel.
    sparse_origin
                 (row0, col0): x is rows row0.., columns col0.. of the CSR target (a chunk of the linear head's
                 logits): the chunk needs no slicing of the CSR arrays, hence no host round trip.
    check_target a device-side assertion that every target value lies in [0, 1], NaN failing: the kernel marks
                 each tile's targets as it reads them (one byte per program) and ``torch._assert_async`` checks
                 the marks on the device, without a host synchronisation. On a GPU a failed assertion is fatal
                 to the CUDA context, like torch's own device assertions; on CPU tensors (the interpreter) it
                 raises ``RuntimeError(TARGET_MESSAGE)``. (Not ``tl.device_assert``: Triton compiles it only in
                 debug mode, for the whole kernel, and inductor compiles user kernels without that mode.)
    check_weights
                 the same for the weights, as the kernel reads them: weight in [0, inf), pos_weight in (0, inf)
                 (``WEIGHTS_MESSAGE``); saves the separate checks' kernels (five launches per weight).
    grad_out     None, or an (N, C) contiguous tensor of x's dtype to write the gradient into; it may be x itself
                 (each element is read before it is written), which is how the linear head keeps one chunk.
    block, span  tiling overrides (tests).

    row_sums     (N,): sum_c w * mask * l(x, y), unnormalised; float32 for float16/bfloat16/float32 inputs,
                 float64 for float64. Compensated sums: within a few float32 roundings of the exact sum for any C.
    grad         (N, C) in x's dtype: w * mask * dl/dx * scale (* row_scale[n]), or None.

    linear_logits_chunk(hidden, head_weight, head_bias, y, **fused_rows_keywords) -> (row_sums, grad_logits)
                 One chunk of the fused linear head: the logits ``hidden @ head_weight.T + head_bias`` by cuBLAS, then
                 ``fused_rows`` over them writing the gradient into the logits' own memory.

The kernel is an adapter of ``softmargin/_formula.py`` (see ``_triton_rows.py``); the (N, C) logits are cut into
tiles of one row by ``span`` columns, each program walking its tile in blocks of ``block`` columns. A row cut into
several tiles (wide rows and few of them, where one program per row would leave most of the GPU idle) has its tile
sums added by a second, tiny kernel in a fixed order. The tiling depends only on the shape and the device's
multiprocessor count, so results are bitwise reproducible on a given GPU. Nothing in a launcher looks at a
tensor's values: no host synchronisation, and a launcher can run inside ``torch.library.triton_op`` (while anything
traces, the kernels are launched through ``torch.library.wrap_triton``; on real tensors in eager mode directly) and
under CUDA-graph capture. The kernels run on x's device, whichever CUDA device is current. Tested on the CPU with
``TRITON_INTERPRET=1`` (which has neither bfloat16 nor libdevice: NumPy's functions stand in for libdevice's).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import numpy as np
import torch
import triton

from ._triton_rows import _combine_tiles_kernel, _rows_kernel

#: Triton's interpreter (``TRITON_INTERPRET=1``, the CPU tests) runs the kernel in NumPy, without libdevice.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

#: The target check's message (CPU tensors under the interpreter raise RuntimeError with it).
TARGET_MESSAGE = "softmargin: a target value lies outside [0, 1] or is NaN (check_target)"
WEIGHTS_MESSAGE = (
    "softmargin: a weight is negative, infinite or NaN, or a pos_weight is not positive and finite (check_weights)"
)

_TARGET_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.bool)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # Triton's interpreter: any fixed number
    return torch.cuda.get_device_properties(device).multi_processor_count


def tiling(num_rows: int, num_classes: int, multiprocessors: int, block: int | None = None) -> tuple[int, int, int]:
    """``(block, span, tiles per row)``: enough programs to fill the GPU (about eight per multiprocessor) without
    tiles shorter than four blocks, and at most 1024 tiles per row (one block of the combining kernel)."""
    if block is None:
        block = min(1024, max(16, triton.next_power_of_2(num_classes)))
    blocks_per_row = triton.cdiv(num_classes, block)
    wanted = triton.cdiv(8 * multiprocessors, max(num_rows, 1))
    tiles = max(1, min(wanted, blocks_per_row // 4, 1024))
    span = triton.cdiv(blocks_per_row, tiles) * block
    return block, span, triton.cdiv(num_classes, span)


def _split(value: float) -> tuple[float, float]:
    """A Python float as two float32s whose sum is it to float64 precision (Triton passes floats as float32)."""
    hi = float(np.float32(value))
    return hi, float(np.float32(value - hi))


def _eager(x: torch.Tensor) -> bool:
    """Whether ``x`` is a real tensor and nothing traces (no FakeTensor or FunctionalTensor, no dispatch mode such as
    make_fx's, no dynamo)."""
    return type(x) is torch.Tensor and not torch._C._len_torch_dispatch_stack() and not torch.compiler.is_compiling()


def _launcher(kernel: Any, x: torch.Tensor) -> Any:
    """The kernel itself for real tensors in eager mode; ``wrap_triton(kernel)`` while anything traces, so that the
    launch is recorded as ``triton_kernel_wrapper_*`` and inductor sees the kernel. wrap_triton's operator costs
    about a millisecond of host time per launch in eager mode (measured on the H200 machine), many times the kernel's
    own time."""
    return kernel if _eager(x) else torch.library.wrap_triton(kernel)


def _launch_device(x: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """``torch.cuda.device(x.device)`` around a launch on real CUDA tensors: Triton launches on the *current* device
    and its current stream, not on the tensors' device, so logits on ``cuda:1`` while ``cuda:0`` was current were
    computed by a kernel on the other GPU, through pointers into another device's memory and unordered with the
    stream that wrote them (a crash, or garbage). While anything traces, inductor's generated code guards the device
    itself (and a fake tensor's device must not become the current one)."""
    if x.is_cuda and not torch._C._len_torch_dispatch_stack() and not torch.compiler.is_compiling():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8: the same bytes (a view) in eager mode; a conversion while tracing, because inductor
    cannot lower a bool -> uint8 view (``torch.bool is not supported by torch.iinfo``; it fuses the conversion)."""
    return t.view(torch.uint8) if _eager(t) else t.to(torch.uint8)


def _rows_operand(
    name: str, t: torch.Tensor | None, num_rows: int, num_classes: int
) -> tuple[torch.Tensor | None, int]:
    """A per-class or per-element operand as (tensor whose rows are C contiguous elements, row stride)."""
    if t is None:
        return None, 0
    if t.dim() == 1:
        t = t.reshape(1, -1)
    if t.dim() != 2 or t.shape[1] != num_classes or t.shape[0] not in (1, num_rows):
        raise ValueError(f"{name}.shape == {tuple(t.shape)}, expected ({num_classes},), (1, {num_classes}) or "
                         f"({num_rows}, {num_classes})")  # fmt: skip
    if t.dtype == torch.bool:
        t = _as_bytes(t)
    if t.stride(1) != 1 and t.shape[1] > 1:
        t = t.contiguous()
    return t, (t.stride(0) if t.shape[0] > 1 else 0)


def fused_rows(
    x: torch.Tensor,
    y: torch.Tensor | None,
    *legacy: Any,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    scale: float | None = None,
    row_scale: torch.Tensor | None = None,
    need_grad: bool | None = None,
    sparse: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
    sparse_origin: tuple[int, int] = (0, 0),
    check_target: bool = False,
    check_weights: bool = False,
    grad_out: torch.Tensor | None = None,
    block: int | None = None,
    span: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row weighted loss sums and the gradient of (N, C) logits in one pass (see the module docstring).

    ``legacy``: the former positional form ``fused_rows(x, y, w, num_rows, num_classes, scale, need_grad)`` is still
    accepted (x and y are reshaped to (num_rows, num_classes)); new code passes keywords.

    Example::

        row_sums, grad = fused_rows(x, y, weight=w, scale=1 / x.numel(), need_grad=True)
        loss = row_sums.sum() / x.numel()  # the mean reduction
    """
    if legacy:
        weight, num_rows, num_classes, scale, need_grad = legacy
        x = x.reshape(num_rows, num_classes)
        y = None if y is None else y.reshape(num_rows, num_classes)
    if scale is None or need_grad is None:
        raise TypeError("fused_rows() needs the keyword arguments scale and need_grad")
    if x.dim() != 2:
        raise ValueError(f"x.dim() == {x.dim()}, expected 2: (N, C) logits")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x.dtype == {x.dtype}, expected float16, bfloat16, float32 or float64")
    x = x.contiguous()
    num_rows, num_classes = x.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    if (y is None) == (sparse is None):
        raise ValueError("pass exactly one of a dense target y and sparse=(indptr, indices, values)")
    if y is not None:
        if y.shape != x.shape:
            raise ValueError(f"y.shape == {tuple(y.shape)}, expected x.shape == {tuple(x.shape)}")
        if y.dtype not in _TARGET_DTYPES:
            raise TypeError(f"y.dtype == {y.dtype}, expected a float dtype, uint8 or bool")
        if y.dtype == torch.bool:
            y = _as_bytes(y)
        if y.stride(1) != 1 and num_classes > 1:
            y = y.contiguous()
    w, w_stride = _rows_operand("weight", weight, num_rows, num_classes)
    pw, pw_stride = _rows_operand("pos_weight", pos_weight, num_rows, num_classes)
    m, m_stride = _rows_operand("mask", mask, num_rows, num_classes)
    if row_scale is not None:
        if row_scale.shape != (num_rows,):
            raise ValueError(f"row_scale.shape == {tuple(row_scale.shape)}, expected ({num_rows},)")
        row_scale = row_scale.contiguous()  # the kernel reads row_scale[row] at offset row
    if sparse is not None:
        indptr, indices, values = sparse
        if indptr.dim() != 1 or indptr.shape[0] < sparse_origin[0] + num_rows + 1:
            raise ValueError(
                f"indptr.shape == {tuple(indptr.shape)}, expected at least ({sparse_origin[0] + num_rows + 1},)"
            )

    row_sums = torch.empty(num_rows, dtype=compute, device=x.device)
    grad = None
    if need_grad:
        if grad_out is not None:
            if grad_out.shape != x.shape or grad_out.dtype != x.dtype or not grad_out.is_contiguous():
                raise ValueError("grad_out must be a contiguous tensor of x's shape and dtype")
            grad = grad_out
        else:
            grad = torch.empty_like(x)
    if num_rows == 0 or num_classes == 0:
        return row_sums.zero_(), grad
    if x.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "the Triton kernels run on a GPU, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 set "
            f"before softmargin is imported); x is on {x.device}"
        )

    block, auto_span, _ = tiling(num_rows, num_classes, _multiprocessors(x.device), block)
    span = auto_span if span is None else span
    num_tiles = triton.cdiv(num_classes, span)
    out = row_sums if num_tiles == 1 else torch.empty((num_rows, num_tiles, 2), dtype=compute, device=x.device)
    focus = bool(gamma_pos or gamma_neg or clip)
    any_tensor = x  # stands in for every absent operand (the kernel never reads it: its flag is off)
    indptr_t, indices_t, values_t = sparse if sparse is not None else (any_tensor, any_tensor, None)
    check_weights = check_weights and (w is not None or pw is not None)
    checked = check_target or check_weights
    ok = torch.empty(num_rows * num_tiles, dtype=torch.uint8, device=x.device) if checked else out
    with _launch_device(x):
        _launcher(_rows_kernel, x)[(num_rows, num_tiles)](
            x, y if y is not None else any_tensor, w if w is not None else any_tensor,
            pw if pw is not None else any_tensor, m if m is not None else any_tensor,
            row_scale if row_scale is not None else any_tensor, indptr_t, indices_t,
            values_t if values_t is not None else any_tensor, out, grad if grad is not None else out, ok,
            num_classes, y.stride(0) if y is not None else 0, w_stride, pw_stride, m_stride,
            sparse_origin[0], sparse_origin[1], span, num_tiles,
            *_split(scale), *_split(label_smoothing), *_split(gamma_pos), *_split(gamma_neg), *_split(clip),
            HAS_W=w is not None, HAS_PW=pw is not None, HAS_MASK=m is not None, HAS_ROW_SCALE=row_scale is not None,
            SMOOTH=bool(label_smoothing), FOCUS=focus, CLIP=bool(clip), SPARSE=sparse is not None,
            HAS_VALUES=values_t is not None, HAS_GRAD=grad is not None, CHECK=check_target, CHECK_W=check_weights, SPLIT=num_tiles > 1,
            BLOCK=block, ACCURATE=not INTERPRETED, num_warps=4,
        )  # fmt: skip
        if num_tiles > 1:
            _launcher(_combine_tiles_kernel, x)[(num_rows,)](
                out, row_sums, num_tiles, BLOCK=triton.next_power_of_2(num_tiles)
            )
    if checked:
        # a device-side assertion: on a GPU it fails asynchronously (and ends the CUDA context), never syncs
        message = TARGET_MESSAGE if not check_weights else WEIGHTS_MESSAGE if not check_target else (
            f"{TARGET_MESSAGE}; or {WEIGHTS_MESSAGE.removeprefix('softmargin: ')}"
        )  # fmt: skip
        torch._assert_async(ok.all(), message)
    return row_sums, grad


def linear_logits_chunk(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    y: torch.Tensor | None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk of the fused linear head: ``logits = hidden @ weight.T + bias`` (cuBLAS), then :func:`fused_rows`
    over them, the gradient written over the logits (one chunk of memory in all).

    Args:
        hidden: (n, H) rows of the chunk; head_weight: (c, H) and head_bias: (c,) or None, the chunk's labels.
        y: the (n, c) dense target block (rows may be strided, e.g. ``target[r0:r1, c0:c1]``), or None with
            ``sparse=(indptr, indices, values)`` for the whole CSR target and ``sparse_origin=(r0, c0)``.
        options: :func:`fused_rows`'s keywords (``weight=`` is the class weight; ``scale``, ``need_grad``...).

    Returns:
        (row_sums (n,), d loss / d logits (n, c) in hidden's dtype or None). The caller turns the gradient into the
        gradients of hidden (``grad @ head_weight``), head_weight (``grad.T @ hidden``) and bias (``grad.sum(0)``).
    """
    logits = torch.nn.functional.linear(hidden, head_weight, head_bias)
    grad_out = logits if options.get("need_grad") else None
    return fused_rows(logits, y, grad_out=grad_out, **options)
