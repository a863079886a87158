"""Keras 3 loss: :class:`MultiLabelSoftMarginLoss`, running softmargin's JAX or PyTorch implementation of the active
Keras backend (``KERAS_BACKEND=jax`` or ``torch``), with its class weights, pos_weight, label smoothing and focusing.

Importing this module imports keras (and so its backend); ``import softmargin`` alone does not.
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["MultiLabelSoftMarginLoss"]

_BACKENDS = ("jax", "torch")


def _traced(value: Any) -> bool:
    import jax

    return isinstance(value, jax.core.Tracer)


@keras.saving.register_keras_serializable(package="softmargin")
class MultiLabelSoftMarginLoss(keras.losses.Loss):
    r"""The multi-label soft-margin loss of logits ``y_pred`` against targets ``y_true`` in [0, 1], for ``compile``.

    Each sample's loss is the (weighted) mean over its labels of ``softplus(x) - y * x``; Keras then applies
    ``sample_weight`` and ``reduction`` (default: the mean over the batch, which is torch's
    ``MultiLabelSoftMarginLoss``). Same value as ``keras.losses.BinaryCrossentropy(from_logits=True)`` without
    options, computed in one fused pass that also makes the gradient, exact for infinite logits.

    Args:
        weight: per-class weights, shape ``(C,)`` (e.g. :func:`softmargin.class_weights` of the training labels).
        pos_weight: per-class weights > 0 of the positive term, shape ``(C,)`` (:func:`softmargin.pos_weight`).
        label_smoothing, gamma_pos, gamma_neg, clip: as in :func:`softmargin.numpy.multilabel_soft_margin_loss`.
        reduction, name, dtype: as for any ``keras.losses.Loss``.

    The target range and the weights are checked when the values are concrete (the torch backend; the JAX backend
    with ``run_eagerly=True``); a compiled JAX step skips the value checks (shape and dtype checks always run).

    Example:
        >>> model.compile(optimizer="adam", loss=MultiLabelSoftMarginLoss(weight=softmargin.class_weights(Y)))  # doctest: +SKIP
    """

    def __init__(
        self,
        weight: Any = None,
        *,
        pos_weight: Any = None,
        label_smoothing: float = 0.0,
        gamma_pos: float = 0.0,
        gamma_neg: float = 0.0,
        clip: float = 0.0,
        reduction: str = "sum_over_batch_size",
        name: str = "multilabel_soft_margin_loss",
        dtype: Any = None,
    ) -> None:
        from . import _validation as V

        super().__init__(name=name, reduction=reduction, dtype=dtype)
        V.check_options(label_smoothing, gamma_pos, gamma_neg, clip)
        backend = keras.backend.backend()
        if backend not in _BACKENDS:
            raise ValueError(f"keras backend {backend!r} is not supported: expected one of {_BACKENDS} (set KERAS_BACKEND)")
        self.weight = None if weight is None else [float(v) for v in keras.ops.convert_to_numpy(weight).reshape(-1)]
        self.pos_weight = None if pos_weight is None else [float(v) for v in keras.ops.convert_to_numpy(pos_weight).reshape(-1)]
        self.options: dict[str, Any] = dict(label_smoothing=label_smoothing, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-sample losses, shape ``y_pred.shape[:-1]``."""
        as_tensor = lambda v: None if v is None else keras.ops.convert_to_tensor(v, dtype=y_pred.dtype)
        weight, pos_weight = as_tensor(self.weight), as_tensor(self.pos_weight)
        if keras.backend.backend() == "jax":
            from .jax import multilabel_soft_margin_loss

            validate = not (_traced(y_true) or _traced(y_pred))
        else:
            from .torch import multilabel_soft_margin_loss  # type: ignore[assignment]

            validate = True
        y_true = keras.ops.cast(y_true, y_pred.dtype)
        return multilabel_soft_margin_loss(
            y_pred, y_true, weight, reduction="none", pos_weight=pos_weight, validate=validate, **self.options
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weight": self.weight, "pos_weight": self.pos_weight, **self.options}
