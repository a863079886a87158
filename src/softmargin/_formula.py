r"""The multi-label soft-margin loss, written once, for any array namespace.

The NumPy, torch and JAX backends call the two functions here; the kernels (C in ``kernels/csrc``, Triton in
``kernels/_triton_rows.py``) restate them in their own languages, term by term, and each is tested against them.
The derivation lives here only.

Definition
----------
For logits :math:`x`, targets :math:`y \in [0, 1]` and weights :math:`w \ge 0`, all of shape ``(*, C)``::

    loss[n] = (1/C) * sum_c w[n, c] * l(x[n, c], y[n, c])
    l(x, y) = -( y * log sigmoid(x) + (1 - y) * log sigmoid(-x) )
            = softplus(x) - y * x

Stable form
-----------
``softplus(x) - y * x`` cancels catastrophically (``x = 15, y = 1``: both terms are 15, the answer 3e-7) and gives
``inf - inf = nan`` at ``x = +inf``. With ``softplus(x) = relu(x) + log1p(exp(-|x|))`` and
``relu(x) - y * x = (1 - y) * relu(x) + y * relu(-x)`` the element loss becomes a sum of three non-negative terms::

    l(x, y) = log1p(exp(-|x|)) + (1 - y) * relu(x) + y * relu(-x)

No term can overflow (``exp`` only sees non-positive arguments) and no subtraction cancels, so each element is
accurate to about one rounding. The only undefined product is ``0 * inf`` (a right prediction at infinity: ``y = 1,
x = +inf`` or ``y = 0, x = -inf``), whose limit is 0.

Gradient
--------
``dl/dx = sigmoid(x) - y = (1 - y) * sigmoid(x) - y * sigmoid(-x)``. The right-hand form is exact for hard labels
(for ``y = 1`` it is ``-sigmoid(-x)``, which ``sigmoid(x) - 1`` would round to 0 for ``x > 17``) and is finite
for every ``x``, infinite ones included. With ``z = exp(-|x|)``, ``sigmoid(|x|) = 1 / (1 + z)`` and
``sigmoid(-|x|) = z / (1 + z)``, so loss and gradient share one ``exp``.

For ``reduction="mean"`` the gradient of the batch loss is ``w * (sigmoid(x) - y) / (C * N)``, for ``"sum"`` and
``"none"`` (the gradient of the sum of the per-sample losses) ``w * (sigmoid(x) - y) / C``: the gradient is known
as soon as the loss is, which is what lets the fused backends compute both in one pass.
"""

from __future__ import annotations

from typing import Any


def _exp_minus_abs(x: Any, xp: Any) -> Any:
    """``exp(-|x|)``, written so that automatic differentiation of every expression below is right at ``x = 0``.

    The expressions here pick a branch with ``x >= 0`` (``x`` for ``x >= 0`` in ``relu``, ``sigmoid(|x|)`` for
    ``sigmoid(x)``). Autodiff takes ``d|x|/dx = 0`` and ``d relu(x)/dx = 0`` at 0, which mixes the two branches'
    one-sided derivatives: the second derivative of the loss (the derivative of this module's gradient) came out 0
    there instead of ``sigmoid'(0) = 1/4``. ``-|x|`` written as ``where(x < 0, x, -x)`` (and ``relu`` as
    ``where(x >= 0, x, 0)``) has the derivative of the ``x >= 0`` branch at 0. The values are the same bits.
    """
    return xp.exp(xp.where(x < 0, x, -x))


def element_loss_and_grad(x: Any, y: Any, xp: Any, *, need_grad: bool = True) -> tuple[Any, Any]:
    """Element-wise loss ``l(x, y)`` and derivative ``dl/dx`` (``None`` unless ``need_grad``).

    ``xp`` is ``numpy`` or ``torch`` (both spell these functions alike); ``x`` and ``y`` have one floating dtype.
    NaN in ``x`` propagates to both outputs.
    """
    z = _exp_minus_abs(x, xp)  # in [0, 1]: the argument is never positive, so exp cannot overflow
    # 0 * inf (a right prediction at infinity) is NaN in IEEE arithmetic; its limit is 0: each term is 0 where its
    # factor in y is (the Triton kernel's form). A NaN target stays NaN, as in torch's loss (nan_to_num of the sum
    # turned it into 0: the loss of a NaN target was log1p(exp(-|x|)), silently, with validate=False); a NaN logit
    # propagates through log1p(z) below.
    margin = xp.where(y == 1, 0.0, (1 - y) * xp.where(x >= 0, x, 0)) + xp.where(y == 0, 0.0, y * xp.where(x < 0, -x, 0))
    loss = xp.log1p(z) + margin
    if not need_grad:
        return loss, None
    sig_abs = 1 / (1 + z)  # sigmoid(|x|)
    sig_neg_abs = z * sig_abs  # sigmoid(-|x|), without the cancellation of 1 - sigmoid(|x|)
    nonneg = x >= 0
    sig_pos = xp.where(nonneg, sig_abs, sig_neg_abs)  # sigmoid(x)
    sig_neg = xp.where(nonneg, sig_neg_abs, sig_abs)  # sigmoid(-x)
    grad = (1 - y) * sig_pos - y * sig_neg
    return loss, grad


def _times(a: Any, b: Any, xp: Any) -> Any:
    """a * b with 0 * inf taken as 0: the limit wherever a vanishes as b diverges (a right prediction at infinity).

    ``b`` is also replaced by 0 where ``a == 0`` before the product (the "double where"): the values are the same
    bits, but reverse-mode autodiff differentiates the unselected product too, and there ``d(a * b)/da = b = inf``
    times a zero cotangent gave NaN (grad of grad at infinite logits with pos_weight, focusing or clip)."""
    vanishes = a == 0
    return xp.where(vanishes, 0.0, a * xp.where(vanishes, 0.0, b))


def _linear(y: Any, b: Any, xp: Any) -> Any:
    """``y * b`` with 0 * inf (and 0 * NaN) taken as 0, as :func:`_times`, for a term linear in the target ``y``:
    only a non-finite ``b`` is guarded, so the derivative in ``y`` stays ``b`` at ``y = 0`` (``_times`` cut it there:
    the loss of a hard label counted as a constant in its target, and second derivatives through ``y`` came out
    wrong). The values are the same bits; ``b`` here is a loss term, never negative, so no -0 appears."""
    vanishes = (y == 0) & ~xp.isfinite(b)
    return xp.where(vanishes, 0.0, y * xp.where(vanishes, 0.0, b))


def element_loss_and_grad_options(
    x: Any,
    y: Any,
    xp: Any,
    *,
    pos_weight: Any = None,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    need_grad: bool = True,
) -> tuple[Any, Any]:
    r"""Element loss and ``dl/dx`` with the imbalance options (label smoothing is applied to ``y`` by the caller).

    With :math:`p = \sigma(x)`, :math:`p_m = \max(p - \text{clip}, 0)` and positive weight :math:`\omega`::

        l = y * omega * (1 - p)^gamma_pos * (-log p) + (1 - y) * p_m^gamma_neg * (-log(1 - p_m))

    (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021; ``gamma_pos = gamma_neg = g`` and
    ``clip = 0`` is the focal loss of Lin et al., ICCV 2017; ``pos_weight`` is ``BCEWithLogitsLoss``'s). With every
    option at its default this is :func:`element_loss_and_grad`'s loss. Stable pieces:
    ``-log p = softplus(-x)``, ``-log(1 - p) = softplus(x)``, ``(1 - p)^g = exp(-g * softplus(x))`` and
    ``p^g = exp(-g * softplus(-x))``, none of which overflows. Derivatives (``s = p``, ``q = 1 - p``)::

        d/dx[(1 - p)^g+ (-log p)]     = -(1 - p)^g+ * (g+ * p * (-log p) + q)
        d/dx[p^g- (-log(1 - p))]      = p^g- * (g- * q * (-log(1 - p)) + p)                       (clip = 0)
        d/dx[p_m^g- (-log(1 - p_m))]  = p q p_m^g- * (g- * (-log(1 - p_m)) / p_m + 1 / (1 - p_m))  (p > clip, else 0)
    """
    z = _exp_minus_abs(x, xp)
    tail = xp.log1p(z)
    softplus_pos = tail + xp.where(x >= 0, x, 0)  # -log(1 - p)
    softplus_neg = tail + xp.where(x < 0, -x, 0)  # -log p
    sig_abs = 1 / (1 + z)
    nonneg = x >= 0
    p = xp.where(nonneg, sig_abs, z * sig_abs)
    q = xp.where(nonneg, z * sig_abs, sig_abs)  # 1 - p, without cancellation

    focus_pos = xp.exp(-gamma_pos * softplus_pos) if gamma_pos else None  # (1 - p)^gamma_pos
    pos_loss = softplus_neg if focus_pos is None else focus_pos * softplus_neg
    if clip:
        p_m = xp.where(p > clip, p - clip, 0.0)
        # -log(1 - p_m), 1 - p_m = q + clip formed without cancellation: -log1p(-p_m) lost clip in p_m as p rounded
        # to 1 (inf at x = 20, clip = 1e-8, float32); -log(q + clip) itself where 1 - p_m <= 1/2, finite: >= clip
        neg_term = xp.where(p_m < 0.5, -xp.log1p(-xp.where(p_m < 0.5, p_m, 0.0)), -xp.log(q + clip))
        focus_neg = p_m**gamma_neg if gamma_neg else None
    else:
        p_m = p
        neg_term = softplus_pos
        focus_neg = xp.exp(-gamma_neg * softplus_neg) if gamma_neg else None  # p^gamma_neg
    neg_loss = neg_term if focus_neg is None else _times(focus_neg, neg_term, xp)
    if pos_weight is not None:
        pos_loss = pos_loss * pos_weight
    loss = _linear(y, pos_loss, xp) + _linear(1 - y, neg_loss, xp)
    if not need_grad:
        return loss, None

    pos_grad = -(gamma_pos * _times(p, softplus_neg, xp) + q)
    if focus_pos is not None:
        pos_grad = focus_pos * pos_grad
    if pos_weight is not None:
        pos_grad = pos_grad * pos_weight
    if clip:
        ratio = xp.where(p_m > 0, neg_term / xp.where(p_m > 0, p_m, 1.0), 1.0)  # -log(1 - p_m) / p_m -> 1
        focus = 1.0 if focus_neg is None else focus_neg
        # p q (gamma_neg ratio + 1 / (1 - p_m)), 1 - p_m = q + clip: q / (q + clip) <= 1, where 1 / (q + clip) would
        # overflow float32 for a subnormal clip
        q_share = xp.where(q > 0, q / xp.where(q > 0, q + clip, 1.0), 0.0)
        neg_grad = xp.where(p_m > 0, p * focus * (gamma_neg * q * ratio + q_share), 0.0)
    else:
        neg_grad = gamma_neg * _times(q, neg_term, xp) + p
        if focus_neg is not None:
            neg_grad = focus_neg * neg_grad
    grad = y * pos_grad + (1 - y) * neg_grad
    return loss, grad
