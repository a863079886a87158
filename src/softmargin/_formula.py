r"""The multi-label soft-margin loss, written once, for any array namespace.

Every backend (NumPy, PyTorch) and every kernel is an adapter around the two functions here and is tested
against them; nothing else in the package restates the formula.

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


def element_loss_and_grad(x: Any, y: Any, xp: Any, *, need_grad: bool = True) -> tuple[Any, Any]:
    """Element-wise loss ``l(x, y)`` and derivative ``dl/dx`` (``None`` unless ``need_grad``).

    ``xp`` is ``numpy`` or ``torch`` (both spell these functions alike); ``x`` and ``y`` have one floating dtype.
    NaN in ``x`` propagates to both outputs.
    """
    z = xp.exp(-xp.abs(x))  # in [0, 1]: the argument is never positive, so exp cannot overflow
    margin = (1 - y) * xp.where(x > 0, x, 0) + y * xp.where(x < 0, -x, 0)
    # 0 * inf (a right prediction at infinity) is NaN in IEEE arithmetic; its limit is 0. A NaN logit still
    # propagates through log1p(z) below, so this cannot hide one.
    margin = xp.nan_to_num(margin, nan=0.0, posinf=float("inf"))
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
