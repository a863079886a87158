"""NumPy backend: the multi-label soft-margin loss and its gradient, with no torch import.

It computes in float64 whatever the input dtype (float16, float32 or float64), over bounded chunks of rows, so
no temporary is larger than a chunk however large the batch; results come back in the input's dtype. This is the
oracle the other backends are tested against.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _validation as V
from ._chunks import Options, Rows, loss_rows, row_bookkeeping
from ._sparse import SparseTargets, as_sparse_targets, is_sparse_target

__all__ = ["multilabel_soft_margin_loss", "multilabel_soft_margin_loss_grad"]

Reduction = Literal["none", "mean", "sum"]

#: Elements per chunk: 64 Ki float64 temporaries (512 KiB each) stay in a 2 MiB L2 cache.
CHUNK_ELEMENTS = 1 << 16

_KINDS = {"f": "float", "i": "int", "u": "int", "b": "bool", "c": "complex"}


def _array(name: str, value: ArrayLike | None, shape: tuple[int, ...]) -> NDArray[Any] | None:
    if value is None:
        return None
    array = np.asarray(value)
    if name == "mask":
        V.check_mask_kind(_KINDS.get(array.dtype.kind, "other"), array.dtype)
    else:
        V.check_target_kind(_KINDS.get(array.dtype.kind, "other"), array.dtype)
    V.check_broadcastable(name, array.shape, shape)
    return array


def _rows(array: NDArray[Any] | None, shape: tuple[int, ...], num_rows: int) -> NDArray[Any] | None:
    """None, a (1, C) row (for an array of at most one dimension) or the array laid out as (N, C)."""
    if array is None:
        return None
    if array.ndim <= 1:
        return np.broadcast_to(array.reshape(1, -1), (1, shape[-1]))
    return np.broadcast_to(array, shape).reshape(num_rows, shape[-1])


def _prepare(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    reduction: str,
    validate: bool,
    pos_weight: ArrayLike | None,
    mask: ArrayLike | None,
    options: Options,
) -> tuple[Rows, tuple[int, ...], str]:
    reduction = V.check_reduction(reduction)
    V.check_options(options.label_smoothing, options.gamma_pos, options.gamma_neg, options.clip)
    x = np.asarray(input)
    V.check_input_kind("input", _KINDS.get(x.dtype.kind, "other"), x.dtype)
    V.check_input_ndim(x.shape)
    n = math.prod(x.shape[:-1])
    y: Any
    if is_sparse_target(target, lists=False):
        y = as_sparse_targets(target, (n, x.shape[-1]), np)
    else:
        y = np.asarray(target)
        V.check_target_kind(_KINDS.get(y.dtype.kind, "other"), y.dtype)
        V.check_same_shape("target", y.shape, x.shape)
    w = _array("weight", weight, x.shape)
    pw = _array("pos_weight", pos_weight, x.shape)
    m = _array("mask", mask, x.shape)
    if validate:
        if isinstance(y, SparseTargets):
            V.check_sparse_target_values(y)
        else:
            V.check_target_values(y)
        if w is not None:
            V.check_weight_values("weight", w)
        if pw is not None:
            V.check_weight_values("pos_weight", pw, positive=True)
    rows = Rows(
        x.reshape(n, x.shape[-1]), y if isinstance(y, SparseTargets) else y.reshape(n, x.shape[-1]), _rows(w, x.shape, n), _rows(pw, x.shape, n), _rows(m, x.shape, n)
    )
    return rows, x.shape, reduction


def _as_float64(array: NDArray[Any]) -> NDArray[np.float64]:
    return array.astype(np.float64, copy=False)


def _compute(
    rows: Rows, shape: tuple[int, ...], reduction: str, options: Options, need_grad: bool
) -> tuple[NDArray[np.float64], NDArray[Any] | None, float]:
    """Per-sample losses (float64, shape ``shape[:-1]``), the gradient (input dtype) if asked, rows in the mean."""
    divisor, grad_scale, counted = row_bookkeeping(rows, reduction, np, _as_float64)
    row_sums = np.empty(rows.num_rows, dtype=np.float64)
    grad = np.empty(rows.x.shape, dtype=rows.x.dtype) if need_grad else None
    # 0 * inf is resolved in the formula and a loss beyond the dtype's range is inf: neither deserves a warning
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        loss_rows(
            rows, options, grad_scale, need_grad, xp=np, compute=_as_float64, row_sum=lambda a: a.sum(axis=1),
            row_sums_out=row_sums, grad_out=grad, chunk_elements=CHUNK_ELEMENTS,
        )  # fmt: skip
        per_sample = row_sums / divisor
        if rows.mask is not None:  # a sample with no observed label contributes 0
            per_sample = np.where(np.asarray(divisor) > 0, per_sample, 0.0)
    per_sample = np.broadcast_to(per_sample, (rows.num_rows,)).reshape(shape[:-1])
    return per_sample, (grad.reshape(shape) if grad is not None else None), counted


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
            log term too. ``gamma_pos = gamma_neg = g, clip = 0`` is the focal loss. See docs/imbalance.md."""


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
        The loss in ``input``'s dtype: a scalar for ``"mean"``/``"sum"``, an array for ``"none"``. It is finite
        for infinite logits (0 for a right prediction at infinity, ``inf`` for a wrong one); NaN logits give NaN.

    Example:
        >>> import numpy as np
        >>> from softmargin.numpy import multilabel_soft_margin_loss
        >>> x = np.array([[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]], dtype=np.float32)
        >>> y = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32)
        >>> round(float(multilabel_soft_margin_loss(x, y, weight=[0.5, 2.0, 1.5])), 5)
        1.18012
    """
    options = Options(label_smoothing, gamma_pos, gamma_neg, clip)
    rows, shape, reduction = _prepare(input, target, weight, reduction, validate, pos_weight, mask, options)
    per_sample, _, counted = _compute(rows, shape, reduction, options, need_grad=False)
    return _reduce(per_sample, reduction, counted, rows.x.dtype)


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
    validate: bool = True,
) -> NDArray[Any]:
    r"""Gradient of :func:`multilabel_soft_margin_loss` with respect to ``input``.

    .. math::
        \frac{\partial L}{\partial x_{nc}} = \frac{w_{nc}}{C\,N'}\bigl(\sigma(x_{nc}) - y_{nc}\bigr)

    with :math:`N' = N` (the number of samples) for ``"mean"`` and :math:`N' = 1` for ``"sum"`` and ``"none"``
    (for ``"none"`` it is the gradient of the sum of the per-sample losses). Same arguments as the loss; the
    result has ``input``'s shape and dtype and is finite for every finite or infinite logit.
    """
    _, grad = multilabel_soft_margin_loss_and_grad(
        input, target, weight, reduction, pos_weight=pos_weight, mask=mask, label_smoothing=label_smoothing,
        gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, validate=validate,
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
    validate: bool = True,
) -> tuple[Any, NDArray[Any]]:
    """Loss and gradient from one pass (what a training loop wants); same arguments as the loss."""
    options = Options(label_smoothing, gamma_pos, gamma_neg, clip)
    rows, shape, reduction = _prepare(input, target, weight, reduction, validate, pos_weight, mask, options)
    per_sample, grad, counted = _compute(rows, shape, reduction, options, need_grad=True)
    assert grad is not None  # need_grad=True always returns one; not a user-input check
    return _reduce(per_sample, reduction, counted, rows.x.dtype), grad


multilabel_soft_margin_loss.__doc__ = (multilabel_soft_margin_loss.__doc__ or "").replace("{options}", _OPTIONS_DOC)
