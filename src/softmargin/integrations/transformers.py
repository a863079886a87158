"""Hugging Face ``Trainer`` hook: a ``compute_loss_func`` with class weights, pos_weight, masks and focusing.

``problem_type="multi_label_classification"`` in transformers computes a bare ``BCEWithLogitsLoss()``: no class
weights, no pos_weight (transformers issues #15450, #35061). :func:`loss_function` returns the function that
``Trainer(compute_loss_func=...)`` calls with the model's outputs and the labels. It needs torch, not transformers:
this module imports without either, and :func:`loss_function` without torch raises ``ModuleNotFoundError`` naming
the extra (``pip install 'softmargin[transformers]'``, which brings torch, transformers and accelerate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["loss_function"]


def loss_function(
    train_labels: Any = None,
    *,
    class_weight: str | Any | None = None,
    pos_weight: bool | Any | None = None,
    pos_weight_max: float | None = 10.0,
    label_smoothing: float = 0.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    missing_label: float | None = None,
    validate: bool = True,
) -> Callable[..., Any]:
    """A ``compute_loss_func`` for ``transformers.Trainer``: softmargin's multi-label loss on ``outputs.logits``.

    Args:
        train_labels: the training label matrix (N, C) in [0, 1] (NumPy, torch or scipy.sparse), needed when the
            weights are to be computed from it.
        class_weight: a method of :func:`softmargin.class_weights` (``"inverse"``, ``"sqrt_inverse"``,
            ``"effective_number"``) computed from ``train_labels``, or the (C,) weights themselves, or None.
        pos_weight: True for :func:`softmargin.pos_weight` of ``train_labels`` (capped at ``pos_weight_max``), or
            the (C,) weights themselves, or None.
        label_smoothing, gamma_pos, gamma_neg, clip: as in :func:`softmargin.torch.multilabel_soft_margin_loss`.
        missing_label: a label value meaning "not observed" (e.g. -100, or NaN): such entries are masked out, and
            each sample's loss is the mean over its observed labels. In ``train_labels`` they count at their column's
            observed rate of positives when the weights are computed.
        validate: check the labels' range and the weights.

    Returns:
        ``compute_loss_func(outputs, labels, num_items_in_batch=None) -> loss``: the batch mean, float32 for
        half-precision logits (as the model's own loss is under autocast; float64 for float64 logits). With a
        ``compute_loss_func`` the Trainer does not divide the loss by the gradient accumulation steps; it passes
        ``num_items_in_batch``, its count of label entries other than -100 over all the accumulated micro-batches,
        instead. The batch mean is then scaled by this micro-batch's share of that count, so that the accumulated
        gradient is that of the whole batch's mean (exactly, without missing labels; with missing labels each
        micro-batch's mean weighs by its observed labels), and a single micro-batch keeps its plain mean. Under
        ``torch.nn.DataParallel`` the per-GPU counts the Trainer passes are summed.

    Example:
        >>> from transformers import Trainer
        >>> from softmargin.integrations.transformers import loss_function
        >>> trainer = Trainer(model=model, args=args, train_dataset=train,  # doctest: +SKIP
        ...                   compute_loss_func=loss_function(train_labels, class_weight="inverse", pos_weight=True))
    """
    from .. import weights as W
    from .._extras import needed
    from .._validation import check_options

    with needed("transformers", by="softmargin.integrations.transformers.loss_function"):
        import torch

        from ..torch import multilabel_soft_margin_loss

    check_options(label_smoothing, gamma_pos, gamma_neg, clip)
    if isinstance(class_weight, str) or pos_weight is True:
        if train_labels is None:
            raise ValueError(
                "train_labels is None: class_weight given as a method name or pos_weight=True computes the weights "
                "from the training labels; pass train_labels=(N, C) label matrix"
            )
    if missing_label is not None and (isinstance(class_weight, str) or pos_weight is True):
        train_labels = _impute_missing(train_labels, missing_label)
    if isinstance(class_weight, str):
        class_weight = W.class_weights(train_labels, class_weight)  # type: ignore[arg-type]  # checked there
    if pos_weight is True:
        pos_weight = W.pos_weight(train_labels, max_weight=pos_weight_max)
    elif pos_weight is False:
        pos_weight = None
    classes = getattr(train_labels, "shape", (None,))[-1]
    class_weight = _checked_weights("class_weight", class_weight, classes, validate)
    pos_weight = _checked_weights("pos_weight", pos_weight, classes, validate)

    def compute_loss_func(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits if hasattr(outputs, "logits") else outputs[0]
        if labels is None:
            raise ValueError("labels is None: the batch has no 'labels'; a multi-label model needs an (N, C) label matrix")
        labels = original = labels.to(logits.device)
        mask = None
        if missing_label is not None:
            mask = ~torch.isnan(labels) if math.isnan(missing_label) else labels != missing_label
            labels = torch.where(mask, labels, torch.zeros((), dtype=labels.dtype, device=labels.device))
        # labels and weights float32 (float64 for float64 logits), as the Keras loss keeps the weights: float16 logits'
        # dtype made a weight of 1e5 inf (refused as if the user had given inf) and one of 1e-8 zero (its label
        # dropped, silently); and float32 labels make the loss float32, as the model's own BCEWithLogitsLoss is under
        # autocast: a half-precision loss was 2e-3 off it (bfloat16), and a float16 one made GradScaler's first
        # backward inf (65536 overflows float16), so that step was skipped
        wide = torch.float64 if logits.dtype == torch.float64 else torch.float32
        move = lambda t: None if t is None else t.to(device=logits.device, dtype=wide)
        loss = multilabel_soft_margin_loss(
            logits, labels.to(wide), move(class_weight), pos_weight=move(pos_weight), mask=mask,
            label_smoothing=label_smoothing, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, validate=validate,
        )  # fmt: skip
        if num_items_in_batch is not None:  # this micro-batch's share of the Trainer's count (see Returns)
            counted = (original != -100).sum()
            # under torch.nn.DataParallel the Trainer hands over one count per GPU, shape (n_gpu, 1), and multiplies
            # the loss by n_gpu: each replica's count is the whole batch's (or its n_gpu-th without
            # average_tokens_across_devices), while this function sees the gathered logits; summing them makes the
            # loss a scalar whose update is the whole batch's in both cases (it came out n_gpu times too large)
            total = torch.as_tensor(num_items_in_batch, device=loss.device, dtype=torch.float64).sum()
            loss = loss * (counted.to(torch.float64) / total).to(loss.dtype)
        return loss

    return compute_loss_func


def _checked_weights(name: str, value: Any, classes: int | None, validate: bool) -> Any:
    """``class_weight`` / ``pos_weight`` as a float64 tensor (each call casts it to float32, or float64 for float64
    logits: made float32 here, a float64 model's weights lost their float64 digits), checked when the hook is made
    (as the Keras loss checks its weights), not at the first training step, and named as the caller passed them:
    shape ``(C,)`` (C from ``train_labels`` when given) or a scalar; finite and >= 0 (``pos_weight`` > 0) unless
    ``validate`` is False."""
    import torch

    from .._validation import check_per_class_shape, check_weight_values

    if value is None:
        return None
    weights = torch.as_tensor(value, dtype=torch.float64)
    check_per_class_shape(name, weights.shape)
    if weights.ndim == 1 and classes is not None and len(weights) != classes:
        raise ValueError(
            f"{name}.shape == ({len(weights)},): expected ({classes},), one {name} per column of train_labels"
        )
    if validate:
        check_weight_values(name, weights.numpy(), positive=name == "pos_weight")
    return weights


def _impute_missing(train_labels: Any, missing_label: float) -> Any:
    """``train_labels`` with each ``missing_label`` entry replaced by its column's rate of positives among the
    observed entries (a soft label): the weights computed from it are then those of the observed rates (``pos_weight``
    = observed negatives / observed positives; ``"inverse"`` = 1 / (C x observed rate), as if every row were
    observed). A column with nothing observed gets rate 0 (the weights' "no positive example" warning says so)."""
    import numpy as np

    dense = train_labels.toarray() if hasattr(train_labels, "toarray") else train_labels
    if type(dense).__module__.split(".")[0] == "torch":
        dense = dense.detach().cpu().numpy()
    labels = np.array(dense, dtype=np.float64)  # a copy: the caller's matrix is not changed
    if labels.ndim != 2:
        raise ValueError(f"train_labels.shape == {labels.shape}: expected a 2-D label matrix (N, C)")
    missing = np.isnan(labels) if math.isnan(missing_label) else labels == missing_label
    observed = (~missing).sum(0)
    rate = np.where(missing, 0.0, labels).sum(0) / np.maximum(observed, 1)
    return np.where(missing, rate, labels)
