"""NumPy backend: the multi-label soft-margin loss and its gradient, with no torch import.

It computes in float64 whatever the input dtype (float16, float32 or float64), over bounded chunks of rows, so
no temporary is larger than a chunk however large the batch; results come back in the input's dtype. This is the
oracle the other backends are tested against.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _validation as V
from ._formula import element_loss_and_grad

__all__ = ["multilabel_soft_margin_loss", "multilabel_soft_margin_loss_grad"]

Reduction = Literal["none", "mean", "sum"]

#: Elements per chunk: 64 Ki float64 temporaries (512 KiB each) stay in a 2 MiB L2 cache.
CHUNK_ELEMENTS = 1 << 16

_KINDS = {"f": "float", "i": "int", "u": "int", "b": "bool", "c": "complex"}


def _prepare(
    input: ArrayLike, target: ArrayLike, weight: Optional[ArrayLike], reduction: str, validate: bool
) -> tuple[NDArray[Any], NDArray[Any], Optional[NDArray[Any]], str]:
    reduction = V.check_reduction(reduction)
    x = np.asarray(input)
    y = np.asarray(target)
    V.check_input_kind("input", _KINDS.get(x.dtype.kind, "other"), x.dtype)
    V.check_target_kind(_KINDS.get(y.dtype.kind, "other"), y.dtype)
    V.check_input_ndim(x.shape)
    V.check_same_shape("target", y.shape, x.shape)
    w = None
    if weight is not None:
        w = np.asarray(weight)
        V.check_target_kind(_KINDS.get(w.dtype.kind, "other"), w.dtype)
        V.check_broadcastable("weight", w.shape, x.shape)
    if validate:
        V.check_target_values(y)
        if w is not None:
            V.check_weight_values("weight", w)
    return x, y, w, reduction


def _compute(
    x: NDArray[Any], y: NDArray[Any], w: Optional[NDArray[Any]], reduction: str, need_grad: bool
) -> tuple[NDArray[np.float64], Optional[NDArray[Any]]]:
    """Per-sample losses (float64, shape ``x.shape[:-1]``) and, if asked, the gradient (``x.dtype``)."""
    num_classes = x.shape[-1]
    num_rows = math.prod(x.shape[:-1])
    x2 = x.reshape(num_rows, num_classes)
    y2 = y.reshape(num_rows, num_classes)
    w2: Optional[NDArray[Any]] = None
    if w is not None:
        # A per-class weight stays one row; any other broadcastable weight is laid out like the input.
        w2 = w.reshape(1, -1) if w.ndim <= 1 else np.broadcast_to(w, x.shape).reshape(num_rows, num_classes)
        w2 = w2.astype(np.float64, copy=False)
    zero_weights = w2 is not None and not np.all(w2)
    if reduction == "mean":
        scale = 1.0 / (num_classes * num_rows) if num_classes * num_rows else np.nan
    else:
        scale = 1.0 / num_classes if num_classes else np.nan

    row_sums = np.empty(num_rows, dtype=np.float64)
    grad = np.empty_like(x2) if need_grad else None
    step = max(1, CHUNK_ELEMENTS // max(num_classes, 1))
    # 0 * inf is resolved in the formula and a loss beyond the dtype's range is inf: neither deserves a warning
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for start in range(0, num_rows, step):
            rows = slice(start, min(start + step, num_rows))
            loss, g = element_loss_and_grad(
                x2[rows].astype(np.float64), y2[rows].astype(np.float64), np, need_grad=need_grad
            )
            if w2 is not None:
                wc = w2 if w2.shape[0] == 1 else w2[rows]
                loss = loss * wc
                if zero_weights:  # a zero weight removes the element, even where its loss is inf (0 * inf)
                    loss = np.where(wc == 0, 0.0, loss)
                if g is not None:
                    g = g * wc
            row_sums[rows] = loss.sum(axis=1)
            if grad is not None and g is not None:
                grad[rows] = g * scale
        per_sample = (row_sums / num_classes).reshape(x.shape[:-1])
    return per_sample, (grad.reshape(x.shape) if grad is not None else None)


def _reduce(per_sample: NDArray[np.float64], reduction: str, dtype: np.dtype[Any]) -> Any:
    """Reduce in float64, then round once to the input's dtype (an out-of-range loss becomes inf, silently)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if reduction == "sum":
            per_sample = np.asarray(per_sample.sum())
        elif reduction == "mean":  # an empty batch gives NaN, as torch's mean does
            per_sample = np.asarray(per_sample.sum() / per_sample.size)
        return per_sample.astype(dtype)[()]


def multilabel_soft_margin_loss(
    input: ArrayLike,
    target: ArrayLike,
    weight: Optional[ArrayLike] = None,
    reduction: Reduction = "mean",
    *,
    validate: bool = True,
) -> Any:
    r"""Multi-label soft-margin loss of logits against targets in [0, 1].

    .. math::
        \ell_n = \frac{1}{C}\sum_{c=1}^{C} w_{nc}\,\bigl(\operatorname{softplus}(x_{nc}) - y_{nc}\,x_{nc}\bigr)

    Args:
        input: logits of shape ``(C,)`` or ``(N, ..., C)``, floating point (float16, float32 or float64).
        target: targets of the same shape as ``input`` (never broadcast), values in [0, 1]; soft targets allowed.
        weight: non-negative weights broadcastable to ``input``; usually ``(C,)``, one per class.
        reduction: ``"none"`` (per-sample losses of shape ``input.shape[:-1]``), ``"mean"`` or ``"sum"``.
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
    x, y, w, reduction = _prepare(input, target, weight, reduction, validate)
    per_sample, _ = _compute(x, y, w, reduction, need_grad=False)
    return _reduce(per_sample, reduction, x.dtype)


def multilabel_soft_margin_loss_grad(
    input: ArrayLike,
    target: ArrayLike,
    weight: Optional[ArrayLike] = None,
    reduction: Reduction = "mean",
    *,
    validate: bool = True,
) -> NDArray[Any]:
    r"""Gradient of :func:`multilabel_soft_margin_loss` with respect to ``input``.

    .. math::
        \frac{\partial L}{\partial x_{nc}} = \frac{w_{nc}}{C\,N'}\bigl(\sigma(x_{nc}) - y_{nc}\bigr)

    with :math:`N' = N` (the number of samples) for ``"mean"`` and :math:`N' = 1` for ``"sum"`` and ``"none"``
    (for ``"none"`` it is the gradient of the sum of the per-sample losses). Same arguments as the loss; the
    result has ``input``'s shape and dtype and is finite for every finite or infinite logit.
    """
    x, y, w, reduction = _prepare(input, target, weight, reduction, validate)
    _, grad = _compute(x, y, w, reduction, need_grad=True)
    assert grad is not None  # need_grad=True always returns one; not a user-input check
    return grad


def multilabel_soft_margin_loss_and_grad(
    input: ArrayLike,
    target: ArrayLike,
    weight: Optional[ArrayLike] = None,
    reduction: Reduction = "mean",
    *,
    validate: bool = True,
) -> tuple[Any, NDArray[Any]]:
    """Loss and gradient from one pass (what a training loop wants); same arguments as the loss."""
    x, y, w, reduction = _prepare(input, target, weight, reduction, validate)
    per_sample, grad = _compute(x, y, w, reduction, need_grad=True)
    assert grad is not None
    return _reduce(per_sample, reduction, x.dtype), grad
