"""NumPy backend: the multi-label soft-margin loss and its gradient, with no torch import.

Two paths, chosen per call, with the same results up to the accuracy contract (float32 per-sample losses within
2e-7 relative of the exact value for the plain loss, class weights, pos_weight and label smoothing, and within 3e-6
with focusing (gamma_pos, gamma_neg) — except, with ``clip``, where a negative's probability is within float32's
rounding of ``clip``: there ``p - clip`` cancels, and the element's loss, tiny, is right only to its absolute size
(measured: 5e-4 relative at ``gamma_neg=4, clip=0.05``); float64 within 1e-12):

- **The fused C kernel** (``softmargin.kernels.cpu``, built at install time; the one the torch backend runs on the
  CPU) for float16, float32 and float64 inputs, dense or sparse targets and every option: loss and gradient in one
  pass, in float32 for float16/float32 inputs and float64 for float64, no temporary beyond the gradient. A target in
  another dtype than the input's (bool, uint8 and, for float16 inputs, float32 excepted: those are read as they
  are) is converted once to the compute dtype, as the torch backend does: a soft float32 or float64 target of
  float16 logits keeps float32's precision. It
  runs on ``SOFTMARGIN_NUM_THREADS`` threads (default: torch's thread count where torch is already imported, else
  the CPUs this process may use); every row is summed by one thread in a fixed order, so results are bitwise the
  same for any thread count.
- **Chunked NumPy** otherwise (no kernel built here, ``SOFTMARGIN_NATIVE=0``, empty inputs): float64 whatever the
  input dtype, over bounded chunks of rows, so no temporary is larger than a chunk however large the batch. This is
  the oracle the other backends are tested against.

Results come back in the input's dtype.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _validation as V
from ._chunks import Options, Rows, loss_rows, redo_overflowed_rows, row_bookkeeping
from ._options import PLAIN, LossOptions, resolve
from ._sparse import SparseTargets, as_sparse_targets, is_sparse_target
from .kernels import cpu

__all__ = ["multilabel_soft_margin_loss", "multilabel_soft_margin_loss_and_grad", "multilabel_soft_margin_loss_grad"]

Reduction = Literal["none", "mean", "sum"]

#: Elements per chunk: 64 Ki float64 temporaries (512 KiB each) stay in a 2 MiB L2 cache.
CHUNK_ELEMENTS = 1 << 16

_KINDS = {"f": "float", "i": "int", "u": "int", "b": "bool", "c": "complex"}

#: Input dtypes the fused kernel takes (NumPy has no bfloat16), each with its name, looked up by the dtype itself:
#: ``dtype.name`` costs about 2 microseconds a call, a tenth of a small call's time. Every float dtype of one of these
#: names is here (a long double of 64 bits is "float64" where the platform has one).
_NATIVE_DTYPES: dict[np.dtype[Any], str] = {
    np.dtype(code): np.dtype(code).name for code in np.typecodes["Float"]
    if np.dtype(code).name in ("float16", "float32", "float64")
}  # fmt: skip
_FLOAT64, _FLOAT32, _UINT8, _BOOL = np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.uint8), np.dtype(np.bool_)
#: The kernel's names of the dtypes it reads: the inputs' and uint8 (a target's).
_KERNEL_DTYPE_NAMES: dict[np.dtype[Any], str] = {**_NATIVE_DTYPES, _UINT8: "uint8"}


def _kernel_dtype_name(dtype: np.dtype[Any]) -> str:
    """``dtype.name``, from :data:`_KERNEL_DTYPE_NAMES` for the dtypes the kernel reads."""
    return _KERNEL_DTYPE_NAMES.get(dtype) or dtype.name


def num_threads() -> int:
    """Threads the fused kernel uses: ``$SOFTMARGIN_NUM_THREADS``, else torch's thread count where torch is already
    imported (not importing it), else the CPUs this process may run on."""
    setting = os.environ.get("SOFTMARGIN_NUM_THREADS", "").strip()
    if setting:
        try:
            value = int(setting)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"SOFTMARGIN_NUM_THREADS={setting!r}: expected a positive integer, the kernel's threads")
        return value
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return int(torch.get_num_threads())
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _as_array(name: str, value: Any) -> NDArray[Any]:
    """``np.asarray(value)``, with NumPy's error for a value it cannot read (a ragged nested list) naming ``name``."""
    if isinstance(value, np.ma.MaskedArray):  # np.asarray would drop its mask, and the masked values would count
        raise TypeError(f"{name} is a NumPy masked array: its mask would be ignored; pass {name}.data, and the "
                        "observed labels as mask= (True where observed: ~array.mask)")  # fmt: skip
    try:
        array = np.asarray(value)
    except ValueError as error:
        raise ValueError(f"{name} could not be read as an array ({error}): expected an array or a rectangular nested list") from None
    # ml_dtypes' (dtype kind 'V'): NumPy itself has no bfloat16 arithmetic (NumPy's own dtypes, isbuiltin 1, are
    # never named so: their name is not looked up)
    if array.dtype.isbuiltin != 1 and array.dtype.name == "bfloat16":
        raise TypeError(f"{name} has dtype bfloat16 (ml_dtypes): the NumPy API takes float16, float32 and float64; "
                        f"convert with {name}.astype(np.float32) (torch and JAX compute bfloat16 in float32 too)")  # fmt: skip
    if not array.dtype.isnative:  # big-endian data on this machine: the kernel reads native numbers (one copy)
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _array(name: str, value: ArrayLike | None, shape: tuple[int, ...]) -> NDArray[Any] | None:
    if value is None:
        return None
    array = _as_array(name, value)
    if name == "mask":
        V.check_mask_kind(_KINDS.get(array.dtype.kind, "other"), array.dtype)
    else:
        V.check_target_kind(_KINDS.get(array.dtype.kind, "other"), array.dtype, name)
    V.check_broadcastable(name, array.shape, shape)
    return array


def _rows(array: NDArray[Any] | None, shape: tuple[int, ...], num_rows: int) -> NDArray[Any] | None:
    """None, a (1, C) row (for an array of at most one dimension) or the array laid out as (N, C)."""
    if array is None:
        return None
    if array.ndim <= 1:
        row = array.reshape(1, -1)
        return row if row.shape[1] == shape[-1] else np.broadcast_to(row, (1, shape[-1]))
    if array.shape == shape:  # nothing to broadcast (np.broadcast_to costs microseconds)
        return array.reshape(num_rows, shape[-1])
    return np.broadcast_to(array, shape).reshape(num_rows, shape[-1])


def _check_out(
    name: str, out: Any, shape: tuple[int, ...], dtype: np.dtype[Any], inputs: list[Any], contiguous: bool
) -> None:
    """An output array the caller passed: a writeable NumPy array of exactly ``shape`` and ``dtype`` (C-contiguous
    where ``contiguous``, as the kernel writes the gradient row after row), sharing no memory with any input."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} is a {type(out).__name__}: expected a NumPy array (or None)")
    if out.dtype != dtype:
        raise TypeError(f"{name}.dtype == {out.dtype}, expected {dtype} (the input's dtype)")
    if out.shape != shape:
        raise ValueError(f"{name}.shape == {out.shape}, expected {shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only: expected a writeable array")
    if contiguous and not out.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous: expected a C-contiguous array (np.ascontiguousarray)")
    for other_name, other in inputs:
        if isinstance(other, np.ndarray) and np.may_share_memory(out, other):
            raise ValueError(f"{name} shares memory with {other_name}: expected a separate array for the result")


def _prepare(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    reduction: str,
    validate: bool,
    pos_weight: ArrayLike | None,
    mask: ArrayLike | None,
    options: Options,
    out: tuple[Any, Any] | None = None,
    report_target: bool = False,
) -> tuple[Rows, tuple[int, ...], str, bool, bool, bool]:
    """The problem as rows, the input's shape, the reduction, whether the fused kernel runs, whether the dense
    target's range is left for the kernel to check as it reads it (then, should it see a bad value, the caller runs
    the check that names it, or reports it: ``report_target``, with ``validate=False``), and whether the loss is the
    plain one (no pos_weight, no mask, every option at its default). ``out`` = (loss, gradient) output arrays, either
    None, checked here before the values."""
    reduction = V.check_reduction(reduction)
    V.check_options(options.label_smoothing, options.gamma_pos, options.gamma_neg, options.clip)
    x = _as_array("input", input)
    V.check_input_kind("input", _KINDS.get(x.dtype.kind, "other"), x.dtype)
    V.check_input_ndim(x.shape)
    n = math.prod(x.shape[:-1])
    y: Any
    if type(target) is not np.ndarray and is_sparse_target(target, lists=False):  # (a plain array never is)
        y = as_sparse_targets(target, (n, x.shape[-1]), np)
    else:
        y = _as_array("target", target)
        V.check_target_kind(_KINDS.get(y.dtype.kind, "other"), y.dtype)
        V.check_same_shape("target", y.shape, x.shape)
    w = _array("weight", weight, x.shape)
    pw = _array("pos_weight", pos_weight, x.shape)
    m = _array("mask", mask, x.shape)
    if out is not None:
        _check_outs(out, x, y, w, pw, m, reduction)
    native = (
        x.size > 0 and x.dtype in _NATIVE_DTYPES and cpu.kernel() is not None
        and _exact_in_kernel(w, x.dtype) and _exact_in_kernel(pw, x.dtype)
    )  # fmt: skip
    plain = pos_weight is None and mask is None and options == PLAIN
    kernel_checks = (
        (validate or report_target) and native and not isinstance(y, SparseTargets)
        and y.dtype in (x.dtype, _UINT8, _BOOL, _FLOAT64 if x.dtype == _FLOAT64 else _FLOAT32)  # read as is
        and (not plain or _NATIVE_DTYPES[x.dtype] in cpu.TARGET_CHECKED)
    )  # fmt: skip
    if validate:
        if isinstance(y, SparseTargets):
            V.check_sparse_target_values(y)
        elif not kernel_checks:
            V.check_target_values(y)
        if w is not None:
            V.check_weight_values("weight", w)
        if pw is not None:
            V.check_weight_values("pos_weight", pw, positive=True)
    rows = Rows(
        x.reshape(n, x.shape[-1]), y if isinstance(y, SparseTargets) else y.reshape(n, x.shape[-1]), _rows(w, x.shape, n), _rows(pw, x.shape, n), _rows(m, x.shape, n)
    )
    return rows, x.shape, reduction, native, kernel_checks, plain


def _check_outs(out: Any, x: Any, y: Any, w: Any, pw: Any, m: Any, reduction: str) -> None:
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(
            f"out is a {type(out).__name__}{f' of length {len(out)}' if isinstance(out, tuple) else ''}: "
            "expected a tuple (loss, gradient) of NumPy arrays, either None"
        )
    inputs = [("input", x), ("weight", w), ("pos_weight", pw), ("mask", m)]
    if isinstance(y, SparseTargets):
        inputs += [("target", y.indptr), ("target", y.indices), ("target", y.values)]
    else:
        inputs.append(("target", y))
    loss_out, grad_out = out
    if loss_out is not None:
        loss_shape = x.shape[:-1] if reduction == "none" else ()
        _check_out("out[0] (the loss)", loss_out, loss_shape, x.dtype, inputs, contiguous=False)
    if grad_out is not None:
        others = inputs if loss_out is None else [*inputs, ("out[0] (the loss)", loss_out)]
        _check_out("out[1] (the gradient)", grad_out, x.shape, x.dtype, others, contiguous=True)


def _as_float64(array: NDArray[Any]) -> NDArray[np.float64]:
    return array.astype(np.float64, copy=False)


def _exact_in_kernel(a: NDArray[Any] | None, dtype: np.dtype[Any]) -> bool:
    """Whether the kernel, which reads a weight in float32 for a float16/float32 input, sees the same weight: a float64
    weight beyond float32's range (it would become inf), below its smallest value (0, dropping the element) or in its
    subnormal range (rounded by up to 2 %: 1e-44 became 9.8e-45) is left to the chunked path, which computes in
    float64."""
    if a is None or dtype == _FLOAT64 or a.dtype.kind != "f" or a.dtype.itemsize <= 4:
        return True
    with np.errstate(over="ignore", under="ignore"):
        narrow = a.astype(np.float32)
    tiny = np.finfo(np.float32).tiny
    return bool(np.array_equal(np.isinf(narrow), np.isinf(a)) and not ((a != 0) & (np.abs(a) < tiny)).any())


def _kernel_rows(rows: Rows, plain: bool) -> tuple[Rows, str, str]:
    """The rows as the fused kernel reads them (contiguous; weights in the compute dtype, the mask as bytes, the
    default operands as rows of ones), and the kernel dtypes of the input and of the target."""
    x = np.ascontiguousarray(rows.x)
    xtype = _NATIVE_DTYPES[x.dtype]
    cdtype = _FLOAT64 if x.dtype == _FLOAT64 else _FLOAT32

    def target(a: NDArray[Any]) -> NDArray[Any]:
        """A target (or sparse values) as the kernel reads it: in the input's dtype, uint8 or the compute dtype as it
        is (float16 logits take a float32 target, not rounded to their 11 bits: see kernels/csrc/kernel.c), another
        converted once to the compute dtype."""
        return np.ascontiguousarray(a, dtype=a.dtype if a.dtype in (x.dtype, _UINT8, cdtype) else cdtype)

    num_classes = x.shape[1]
    y: Any
    if isinstance(rows.y, SparseTargets):
        values = None if rows.y.values is None else target(rows.y.values)
        y = SparseTargets(
            np.ascontiguousarray(rows.y.indptr, dtype=np.int64), np.ascontiguousarray(rows.y.indices, dtype=np.int64),
            values, rows.y.shape, np,
        )  # fmt: skip
        ytype = "uint8" if values is None else _kernel_dtype_name(values.dtype)
    else:
        y = rows.y
        y = np.ascontiguousarray(y).view(np.uint8) if y.dtype == _BOOL else target(y)  # bool: one byte, no copy
        ytype = _kernel_dtype_name(y.dtype)

    def operand(a: NDArray[Any] | None, dtype: Any, default: bool) -> NDArray[Any] | None:
        if a is None:
            return np.ones((1, num_classes), dtype=dtype) if default else None
        return np.ascontiguousarray(a, dtype=dtype)

    mask = None if rows.mask is None else np.ascontiguousarray(rows.mask).view(np.uint8)
    return Rows(
        x, y, operand(rows.weight, cdtype, True), operand(rows.pos_weight, cdtype, not plain),
        operand(mask, np.uint8, not plain),
    ), xtype, ytype  # fmt: skip


def _native(
    rows: Rows, reduction: str, options: Options, need_grad: bool, plain: bool, grad_out: NDArray[Any] | None = None
) -> tuple[NDArray[np.float64], NDArray[Any] | None, Any, float, bool]:
    """The fused kernel: (row sums, gradient or None, divisor, rows in the mean, whether a target was out of range).
    The gradient goes into ``grad_out`` (checked: (N, C), C-contiguous, the input's dtype) where given."""
    weight, row_weight = _compact(rows.weight, per_row=True)
    mask, row_mask = _compact(rows.mask, per_row=True)
    pos_weight, _ = _compact(rows.pos_weight, per_row=False)
    # the bookkeeping counts a per-row mask's labels on its broadcast view (no copy)
    divisor, grad_scale, counted = row_bookkeeping(
        Rows(rows.x, rows.y, weight, pos_weight, rows.mask if row_mask is not None else mask), reduction, np, _as_float64
    )  # fmt: skip
    k, xtype, ytype = _kernel_rows(Rows(rows.x, rows.y, weight, pos_weight, mask), plain)
    num_rows, num_classes = k.num_rows, k.num_classes
    factor = None  # a per-row weight (and mask): the kernel runs unweighted, each row's sum and gradient scaled
    if row_weight is not None or row_mask is not None:
        factor = np.ones(num_rows) if row_weight is None else row_weight.astype(np.float64)
        if row_mask is not None:
            factor = np.where(row_mask, factor, 0.0)
        grad_scale = grad_scale * factor
    row_scale = None if isinstance(grad_scale, float) else np.ascontiguousarray(grad_scale, dtype=np.float64)
    row_sums = np.empty(num_rows, dtype=np.float64)
    grad = grad_out if grad_out is not None else np.empty((num_rows, num_classes), k.x.dtype) if need_grad else None

    def pointer(a: NDArray[Any] | None) -> tuple[int | None, int]:
        return (None, 0) if a is None else (a.ctypes.data, 0 if a.shape[0] == 1 else num_classes)

    sparse = k.y if isinstance(k.y, SparseTargets) else None
    out_of_range = cpu.fused(
        xtype, ytype, k.x.ctypes.data, None if sparse is not None else k.y.ctypes.data,
        pointer(k.weight), pointer(k.pos_weight), pointer(k.mask), num_rows, num_classes,
        grad_scale if row_scale is None else 0.0, None if row_scale is None else row_scale.ctypes.data,
        None if plain else (options.label_smoothing, options.gamma_pos, options.gamma_neg, options.clip),
        row_sums.ctypes.data, None if grad is None else grad.ctypes.data, num_threads(),
        None if sparse is None else (sparse.indptr.ctypes.data, sparse.indices.ctypes.data,
                                     None if sparse.values is None else sparse.values.ctypes.data),
    )  # fmt: skip
    if factor is not None:  # a zero weight (or a missing label) removes the row's elements, even where inf or NaN
        with np.errstate(invalid="ignore", over="ignore"):
            row_sums = np.where(factor == 0, 0.0, row_sums * factor)
    return row_sums, grad, divisor, counted, out_of_range


def _compact(a: NDArray[Any] | None, per_row: bool) -> tuple[NDArray[Any] | None, NDArray[Any] | None]:
    """An (N, C) operand the kernel reads without making it dense: (operand, None), the operand a (1, C) row where
    it is one row broadcast (a (C,) weight through ``np.broadcast_to``: row stride 0); or, with ``per_row``,
    (None, its (N,) column) where it is one value per row broadcast over the labels (an (N, 1) weight or mask: label
    stride 0), for the caller to fold into each row's scale. The kernel takes row steps 0 or C only, so either
    would otherwise be copied whole (a logits-sized weight, or N x C mask bytes)."""
    if a is None or a.shape[0] == 1:
        return a, None
    if a.strides[0] == 0:
        return a[:1], None
    if per_row and a.shape[1] > 1 and a.strides[1] == 0:
        return None, a[:, 0]
    return a, None


def _compute(
    rows: Rows, shape: tuple[int, ...], reduction: str, options: Options, need_grad: bool, native: bool = False,
    kernel_checks: bool = False, plain: bool = True, grad_out: NDArray[Any] | None = None,
) -> tuple[NDArray[np.float64], NDArray[Any] | None, float, bool]:
    """Per-sample losses (float64, shape ``shape[:-1]``), the gradient (input dtype) if asked, rows in the mean,
    and whether the kernel saw a target outside [0, 1] (raised instead where ``kernel_checks``). The gradient is
    written into ``grad_out`` (already checked by :func:`_check_out`) where given."""
    grad_rows = None if grad_out is None else grad_out.reshape(rows.x.shape)  # a view: grad_out is contiguous
    out_of_range = False
    if native:
        row_sums, grad, divisor, counted, out_of_range = _native(rows, reduction, options, need_grad, plain, grad_rows)
        if out_of_range and kernel_checks:
            V.check_target_values(rows.y)  # raises, naming the first bad value
        if rows.pos_weight is not None and rows.x.dtype != np.float64:
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                redo_overflowed_rows(
                    rows, options, row_sums, xp=np, compute=_as_float64, row_sum=lambda a: a.sum(axis=1),
                    chunk_elements=CHUNK_ELEMENTS,
                )  # fmt: skip
    else:
        divisor, grad_scale, counted = row_bookkeeping(rows, reduction, np, _as_float64)
        row_sums = np.empty(rows.num_rows, dtype=np.float64)
        grad = grad_rows if grad_rows is not None else np.empty(rows.x.shape, rows.x.dtype) if need_grad else None
        # 0 * inf is resolved in the formula and a loss beyond the dtype's range is inf: neither deserves a warning
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            loss_rows(
                rows, options, grad_scale, need_grad, xp=np, compute=_as_float64, row_sum=lambda a: a.sum(axis=1),
                row_sums_out=row_sums, grad_out=grad, chunk_elements=CHUNK_ELEMENTS,
            )  # fmt: skip
    if rows.mask is None and divisor >= 1:  # by C >= 1: a division that cannot warn (np.errstate costs a microsecond)
        per_sample = row_sums / divisor
    else:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            per_sample = row_sums / divisor
            if rows.mask is not None:  # a sample with no observed label contributes 0
                per_sample = np.where(np.asarray(divisor) > 0, per_sample, 0.0)
    per_sample = per_sample.reshape(shape[:-1])  # (N,) like row_sums
    if grad_out is not None:
        return per_sample, grad_out, counted, out_of_range
    return per_sample, (grad.reshape(shape) if grad is not None else None), counted, out_of_range


def _reduce(per_sample: NDArray[np.float64], reduction: str, counted: float, dtype: np.dtype[Any]) -> Any:
    """Reduce in float64, then round once to the input's dtype (an out-of-range loss becomes inf, silently)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if reduction == "sum":
            per_sample = np.asarray(per_sample.sum())
        elif reduction == "mean":  # an empty batch gives NaN, as torch's mean does (0 if all labels are missing)
            empty = np.nan if per_sample.size == 0 else 0.0  # only a mask leaves a non-empty batch uncounted
            per_sample = np.asarray(per_sample.sum() / counted if counted else empty)
        return per_sample.astype(dtype)[()]


_OPTIONS_DOC = """
        pos_weight: weights > 0 of the positive term, broadcastable to ``input`` (``BCEWithLogitsLoss``'s).
        mask: boolean, broadcastable to ``input``: True where a label is observed. Missing labels contribute
            nothing; each sample's loss is the mean over its observed labels; samples with none are left out of
            the batch mean (their ``"none"`` loss is 0; a batch with nothing observed has loss 0).
        label_smoothing: ``eps`` in [0, 1): targets become ``y * (1 - eps) + eps / 2``.
        gamma_pos, gamma_neg, clip: asymmetric focusing (Ridnik et al., ICCV 2021): a positive's term is weighted by
            ``(1 - p)^gamma_pos``, a negative's by ``p_m^gamma_neg`` with ``p_m = max(p - clip, 0)`` used in its
            log term too. ``gamma_pos = gamma_neg = g, clip = 0`` is the focal loss. See docs/imbalance.md.
        options: the four options above as one :class:`softmargin.LossOptions` (then leave them at their defaults)."""


def multilabel_soft_margin_loss(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    reduction: Reduction = "mean",
    *,
    pos_weight: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    options: LossOptions | None = None,
    validate: bool = True,
) -> Any:
    r"""Multi-label soft-margin loss of logits against targets in [0, 1].

    .. math::
        \ell_n = \frac{1}{C}\sum_{c=1}^{C} w_{nc}\,\bigl(\operatorname{softplus}(x_{nc}) - y_{nc}\,x_{nc}\bigr)

    Args:
        input: logits of shape ``(C,)`` or ``(N, ..., C)``, floating point (float16, float32 or float64).
        target: targets of the same shape as ``input`` (never broadcast), values in [0, 1]; soft targets allowed.
            Or the positives only: a scipy.sparse matrix or ``(indptr, indices[, values])`` (rows = the input's
            samples), never made dense as a whole.
        weight: non-negative weights broadcastable to ``input``; usually ``(C,)``, one per class.
        reduction: ``"none"`` (per-sample losses of shape ``input.shape[:-1]``), ``"mean"`` or ``"sum"``.{options}
        validate: check the target range and the weights (one min/max pass each); ``False`` for hot loops.

    Returns:
        The loss in ``input``'s dtype: a scalar for ``"mean"``/``"sum"``, an array for ``"none"``. It is exact
        for infinite logits: 0 for a right prediction at infinity, ``inf`` for a wrong one (with ``clip > 0`` a
        negative at ``+inf`` has probability margin ``1 - clip``, so a finite loss and gradient 0). NaN logits give
        NaN; an element with weight 0 or masked out is left out of the loss even there, but its gradient stays NaN
        (as torch's does): a NaN logit is a model gone wrong, and the gradient says so.

    Example:
        >>> import numpy as np
        >>> from softmargin.numpy import multilabel_soft_margin_loss
        >>> x = np.array([[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]], dtype=np.float32)
        >>> y = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32)
        >>> round(float(multilabel_soft_margin_loss(x, y, weight=[0.5, 2.0, 1.5])), 5)
        1.18012
    """
    options = resolve(options, label_smoothing, gamma_pos, gamma_neg, clip)
    rows, shape, checked, native, kernel_checks, plain = _prepare(
        input, target, weight, reduction, validate, pos_weight, mask, options
    )
    per_sample, _, counted, _ = _compute(rows, shape, checked, options, False, native, kernel_checks, plain)
    return _reduce(per_sample, checked, counted, rows.x.dtype)


def multilabel_soft_margin_loss_grad(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    reduction: Reduction = "mean",
    *,
    pos_weight: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    options: LossOptions | None = None,
    validate: bool = True,
    out: NDArray[Any] | None = None,
) -> NDArray[Any]:
    r"""Gradient of :func:`multilabel_soft_margin_loss` with respect to ``input``.

    .. math::
        \frac{\partial L}{\partial x_{nc}} = \frac{w_{nc}}{C\,N'}\bigl(\sigma(x_{nc}) - y_{nc}\bigr)

    with :math:`N' = N` (the number of samples) for ``"mean"`` and :math:`N' = 1` for ``"sum"`` and ``"none"``
    (for ``"none"`` it is the gradient of the sum of the per-sample losses). Same arguments as the loss, and
    ``out``: an array to write the gradient into, as ``out[1]`` of :func:`multilabel_soft_margin_loss_and_grad`.
    The result has ``input``'s shape and dtype (it is ``out`` where given) and is finite for every finite or
    infinite logit.
    """
    _, grad = multilabel_soft_margin_loss_and_grad(
        input, target, weight, reduction, pos_weight=pos_weight, mask=mask, label_smoothing=label_smoothing,
        gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, options=options, validate=validate,
        out=None if out is None else (None, out),
    )  # fmt: skip
    return grad


def multilabel_soft_margin_loss_and_grad(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    reduction: Reduction = "mean",
    *,
    pos_weight: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    options: LossOptions | None = None,
    validate: bool = True,
    out: tuple[NDArray[Any] | None, NDArray[Any] | None] | None = None,
) -> tuple[Any, NDArray[Any]]:
    """Loss and gradient from one pass (what a training loop wants); same arguments as the loss, and ``out``.

    Args:
        out: ``(loss, gradient)`` arrays to write the results into (either may be None), NumPy's ``out=``: the loss
            of shape ``input.shape[:-1]`` for ``"none"``, ``()`` otherwise; the gradient of ``input``'s shape,
            C-contiguous (the fused kernel writes it in place: no temporary, no copy). Both in ``input``'s dtype,
            writeable, sharing no memory with an input or with each other (``TypeError`` for a wrong type or dtype,
            ``ValueError`` otherwise, before anything is computed). Where a check of the values fails, their
            contents are unspecified.

    Returns:
        ``(loss, gradient)``: the loss in ``input``'s dtype (a scalar for ``"mean"``/``"sum"``), the gradient of
        :func:`multilabel_soft_margin_loss_grad`; each is the array from ``out`` where one was given.

    Example:
        >>> import numpy as np
        >>> from softmargin.numpy import multilabel_soft_margin_loss_and_grad
        >>> x = np.array([[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]], dtype=np.float32)
        >>> y = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32)
        >>> grad = np.empty_like(x)
        >>> loss, g = multilabel_soft_margin_loss_and_grad(x, y, out=(None, grad))
        >>> g is grad, round(float(loss), 5)
        (True, 0.8929)
    """
    options = resolve(options, label_smoothing, gamma_pos, gamma_neg, clip)
    rows, shape, checked, native, kernel_checks, plain = _prepare(
        input, target, weight, reduction, validate, pos_weight, mask, options, out
    )
    loss_out, grad_out = out if out is not None else (None, None)
    per_sample, grad, counted, _ = _compute(rows, shape, checked, options, True, native, kernel_checks, plain, grad_out)
    assert grad is not None  # need_grad=True always returns one; not a user-input check
    loss = _reduce(per_sample, checked, counted, rows.x.dtype)
    if loss_out is not None:
        loss_out[...] = loss
        loss = loss_out
    return loss, grad


def loss_and_grad_reporting_target(
    input: NDArray[Any],
    target: NDArray[Any],
    weight: NDArray[Any] | None,
    reduction: Reduction,
    *,
    pos_weight: NDArray[Any] | None,
    mask: NDArray[Any] | None,
    options: LossOptions,
    need_grad: bool,
    out: tuple[NDArray[Any], NDArray[Any] | None],
) -> bool:
    """For the JAX backend's host callback (its ``checkify`` check of the target): the loss (and the gradient where
    ``need_grad``) into ``out``, with no value check but the dense target's range, reported rather than raised.
    The fused kernel looks at the target as it reads it where it can (no extra pass); elsewhere one min/max pass
    here. Shapes and dtypes are checked as in :func:`multilabel_soft_margin_loss_and_grad`.

    Returns:
        True when a target lies outside [0, 1] or is NaN (then the results are those of the bad values).
    """
    rows, shape, checked, native, kernel_checks, plain = _prepare(
        input, target, weight, reduction, False, pos_weight, mask, options, out, report_target=True
    )
    bad = False
    if not kernel_checks:  # the kernel does not look here (float64's plain loss, the chunked path, a sparse target)
        values = rows.y.values if isinstance(rows.y, SparseTargets) else rows.y
        bad = values is not None and values.size > 0 and not (values.min() >= 0 and values.max() <= 1)
    per_sample, _, counted, flagged = _compute(rows, shape, checked, options, need_grad, native, False, plain, out[1])
    out[0][...] = _reduce(per_sample, checked, counted, rows.x.dtype)
    return bool(bad or (kernel_checks and flagged))


multilabel_soft_margin_loss.__doc__ = (multilabel_soft_margin_loss.__doc__ or "").replace("{options}", _OPTIONS_DOC)
