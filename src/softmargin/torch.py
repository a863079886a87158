"""PyTorch API: drop-in replacements for ``torch.nn.functional.multilabel_soft_margin_loss`` and
``torch.nn.MultiLabelSoftMarginLoss`` with the same signatures, exact where torch is right and right where it is
not (infinite logits, float16 with many classes). The work happens in :mod:`softmargin.ops`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn import _reduction as _legacy_reduction
from torch.nn.modules.loss import _WeightedLoss

from . import _validation as V
from ._chunks import PLAIN, Options
from ._sparse import SparseTargets, as_sparse_targets, is_sparse_target
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


def _check(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    reduction: str,
    validate: bool,
    pos_weight: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    options: Options = PLAIN,
) -> None:
    V.check_reduction(reduction)
    V.check_options(options.label_smoothing, options.gamma_pos, options.gamma_neg, options.clip)
    named = (("input", input), ("weight", weight), ("pos_weight", pos_weight), ("mask", mask))
    if not isinstance(target, SparseTargets):
        named += (("target", target),)
    for name, value in named:
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{name} is a {type(value).__name__}: expected a torch.Tensor")
    V.check_input_kind("input", _kind(input.dtype), input.dtype)
    V.check_input_ndim(input.shape)
    if not isinstance(target, SparseTargets):
        V.check_target_kind(_kind(target.dtype), target.dtype)
        V.check_same_shape("target", target.shape, input.shape)
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is not None:
            V.check_target_kind(_kind(value.dtype), value.dtype)
            V.check_broadcastable(name, value.shape, input.shape)
    if mask is not None:
        V.check_mask_kind(_kind(mask.dtype), mask.dtype)
        V.check_broadcastable("mask", mask.shape, input.shape)
    plain = pos_weight is None and mask is None and options == PLAIN
    if not plain:
        for name, value in (("target", target), ("weight", weight), ("pos_weight", pos_weight)):
            if isinstance(value, Tensor) and value.requires_grad:
                raise ValueError(
                    f"{name} requires grad, but with pos_weight, mask, label_smoothing or asymmetric focusing only "
                    f"input is differentiable; pass {name}.detach()"
                )
    if validate:
        if isinstance(target, SparseTargets):
            low, high = target.value_range()
            if not (0 <= low and high <= 1):
                raise ValueError(f"sparse target has values in [{low}, {high}]: expected every target value in [0, 1]")
        else:
            V.check_target_values(target.detach())
        if weight is not None:
            V.check_weight_values("weight", weight.detach())
        if pos_weight is not None:
            V.check_weight_values("pos_weight", pos_weight.detach(), positive=True)


def multilabel_soft_margin_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    *,
    pos_weight: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    label_smoothing: float = 0.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    validate: bool = True,
) -> Tensor:
    r"""Multi-label soft-margin loss, a drop-in for ``torch.nn.functional.multilabel_soft_margin_loss``.

    .. math::
        \ell_n = \frac{1}{C}\sum_{c=1}^{C} w_{nc}\,\bigl(\operatorname{softplus}(x_{nc}) - y_{nc}\,x_{nc}\bigr)

    Args:
        input: logits of shape ``(C,)`` or ``(N, ..., C)``; float16, bfloat16, float32 or float64, any device.
        target: same shape as ``input`` (never broadcast), values in [0, 1] (soft targets allowed); or sparse, as
            the positives only: a sparse CSR/COO tensor, a scipy.sparse matrix, ``(indptr, indices[, values])`` or a
            list of label-index lists, one per sample (rows = ``input.shape[:-1]`` flattened). A sparse target is
            never made dense as a whole; it is not differentiable.
        weight: non-negative weights broadcastable to ``input``, usually one per class, shape ``(C,)``.
        size_average, reduce: deprecated, as in torch (use ``reduction``).
        reduction: ``"none"`` (shape ``input.shape[:-1]``), ``"mean"`` or ``"sum"``.
        pos_weight: weights > 0 of the positive term, broadcastable to ``input`` (``BCEWithLogitsLoss``'s).
        mask: boolean, broadcastable to ``input``: True where a label is observed. Missing labels contribute
            nothing; each sample's loss is the mean over its observed labels; samples with none are left out of
            the batch mean (their ``"none"`` loss is 0; a batch with nothing observed has loss 0).
        label_smoothing: ``eps`` in [0, 1): targets become ``y * (1 - eps) + eps / 2``.
        gamma_pos, gamma_neg, clip: asymmetric focusing (Ridnik et al., ICCV 2021): a positive's term is weighted
            by ``(1 - p)^gamma_pos``, a negative's by ``p_m^gamma_neg`` with ``p_m = max(p - clip, 0)`` used in its
            log term too; ``gamma_pos = gamma_neg = g, clip = 0`` is the focal loss. See docs/imbalance.md.
        validate: check the target range and the weights (a min/max pass each, and a device sync on GPU);
            ``False`` skips these value checks in hot loops. Shape and dtype checks always run.

    Returns:
        The loss in ``input``'s dtype. Half-precision inputs are accumulated in float32. Infinite logits give 0
        for a right prediction and ``inf`` for a wrong one, with finite gradients; NaN logits give NaN.

    The gradient w.r.t. ``input`` is computed in the same pass as the loss; for the plain loss ``target`` and
    ``weight`` get gradients too when they require them, and second derivatives are available.

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
    options = Options(label_smoothing, gamma_pos, gamma_neg, clip)
    if is_sparse_target(target, lists=True):
        rows = math.prod(input.shape[:-1]) if isinstance(input, Tensor) and input.dim() else 0
        num_classes = input.shape[-1] if isinstance(input, Tensor) and input.dim() else 0
        target = as_sparse_targets(target, (rows, num_classes), torch, device=input.device)
    _check(input, target, weight, reduction, validate, pos_weight, mask, options)
    return MultiLabelSoftMarginLossFunction.apply(input, target, weight, reduction, pos_weight, mask, options)


class MultiLabelSoftMarginLoss(_WeightedLoss):
    r"""Drop-in for ``torch.nn.MultiLabelSoftMarginLoss``; see :func:`multilabel_soft_margin_loss`.

    ``weight`` (shape ``(C,)`` or broadcastable to the input) and ``pos_weight`` are registered buffers: they move
    with ``.to()`` and appear in ``state_dict``, as in torch. A mask, which changes with every batch, is an argument
    of ``forward``.

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
        pos_weight: Optional[Tensor] = None,
        label_smoothing: float = 0.0,
        gamma_pos: float = 0.0,
        gamma_neg: float = 0.0,
        clip: float = 0.0,
        validate: bool = True,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        V.check_reduction(self.reduction)
        V.check_options(label_smoothing, gamma_pos, gamma_neg, clip)
        self.pos_weight: Optional[Tensor]
        if pos_weight is not None:
            self.register_buffer("pos_weight", pos_weight)
        else:
            self.pos_weight = None
        self.label_smoothing = label_smoothing
        self.gamma_pos = gamma_pos
        self.gamma_neg = gamma_neg
        self.clip = clip
        self.validate = validate

    def forward(self, input: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return multilabel_soft_margin_loss(
            input, target, weight=self.weight, reduction=self.reduction, pos_weight=self.pos_weight, mask=mask,
            label_smoothing=self.label_smoothing, gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg,
            clip=self.clip, validate=self.validate,
        )  # fmt: skip
