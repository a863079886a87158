"""PyTorch API: drop-in replacements for ``torch.nn.functional.multilabel_soft_margin_loss`` and
``torch.nn.MultiLabelSoftMarginLoss`` with the same signatures, exact where torch is right and right where it is
not (infinite logits, float16 with many classes). The work happens in :mod:`softmargin.ops`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import _reduction as _legacy_reduction
from torch.nn.modules.loss import _WeightedLoss

from . import _validation as V
from .ops.torch_ops import MultiLabelSoftMarginLossFunction

__all__ = ["multilabel_soft_margin_loss", "MultiLabelSoftMarginLoss"]


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    return "int"


def _check(input: Tensor, target: Tensor, weight: Optional[Tensor], reduction: str, validate: bool) -> None:
    V.check_reduction(reduction)
    for name, value in (("input", input), ("target", target), ("weight", weight)):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{name} is a {type(value).__name__}: expected a torch.Tensor")
    V.check_input_kind("input", _kind(input.dtype), input.dtype)
    V.check_target_kind(_kind(target.dtype), target.dtype)
    V.check_input_ndim(input.shape)
    V.check_same_shape("target", target.shape, input.shape)
    if weight is not None:
        V.check_target_kind(_kind(weight.dtype), weight.dtype)
        V.check_broadcastable("weight", weight.shape, input.shape)
    if validate:
        V.check_target_values(target.detach())
        if weight is not None:
            V.check_weight_values("weight", weight.detach())


def multilabel_soft_margin_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    *,
    validate: bool = True,
) -> Tensor:
    r"""Multi-label soft-margin loss, a drop-in for ``torch.nn.functional.multilabel_soft_margin_loss``.

    .. math::
        \ell_n = \frac{1}{C}\sum_{c=1}^{C} w_{nc}\,\bigl(\operatorname{softplus}(x_{nc}) - y_{nc}\,x_{nc}\bigr)

    Args:
        input: logits of shape ``(C,)`` or ``(N, ..., C)``; float16, bfloat16, float32 or float64, any device.
        target: same shape as ``input`` (never broadcast), values in [0, 1] (soft targets allowed).
        weight: non-negative weights broadcastable to ``input``, usually one per class, shape ``(C,)``.
        size_average, reduce: deprecated, as in torch (use ``reduction``).
        reduction: ``"none"`` (shape ``input.shape[:-1]``), ``"mean"`` or ``"sum"``.
        validate: check the target range and the weights (a min/max pass each, and a device sync on GPU);
            ``False`` skips these value checks in hot loops. Shape and dtype checks always run.

    Returns:
        The loss in ``input``'s dtype. Half-precision inputs are accumulated in float32. Infinite logits give 0
        for a right prediction and ``inf`` for a wrong one, with finite gradients; NaN logits give NaN.

    The gradient w.r.t. ``input`` is computed in the same pass as the loss; ``target`` and ``weight`` get
    gradients too when they require them. Double backward is not supported.

    Example:
        >>> import torch
        >>> from softmargin.torch import multilabel_soft_margin_loss
        >>> x = torch.tensor([[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]])
        >>> y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> round(multilabel_soft_margin_loss(x, y, weight=torch.tensor([0.5, 2.0, 1.5])).item(), 5)
        1.18012
    """
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction.legacy_get_string(size_average, reduce)
    _check(input, target, weight, reduction, validate)
    return MultiLabelSoftMarginLossFunction.apply(input, target, weight, reduction)


class MultiLabelSoftMarginLoss(_WeightedLoss):
    r"""Drop-in for ``torch.nn.MultiLabelSoftMarginLoss``; see :func:`multilabel_soft_margin_loss`.

    ``weight`` (shape ``(C,)`` or broadcastable to the input) is a registered buffer: it moves with ``.to()`` and
    appears in ``state_dict``, as in torch.

    Example:
        >>> import torch
        >>> from softmargin.torch import MultiLabelSoftMarginLoss
        >>> loss_fn = MultiLabelSoftMarginLoss(weight=torch.tensor([0.5, 2.0, 1.5]))
        >>> x = torch.tensor([[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]], requires_grad=True)
        >>> loss = loss_fn(x, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
        >>> loss.backward()
    """

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        size_average: Optional[bool] = None,
        reduce: Optional[bool] = None,
        reduction: str = "mean",
        *,
        validate: bool = True,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        V.check_reduction(self.reduction)
        self.validate = validate

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return multilabel_soft_margin_loss(
            input, target, weight=self.weight, reduction=self.reduction, validate=self.validate
        )
