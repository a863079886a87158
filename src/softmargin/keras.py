"""Keras 3 loss: :class:`MultiLabelSoftMarginLoss`, running softmargin's JAX or PyTorch implementation of the active
Keras backend (``KERAS_BACKEND=jax`` or ``torch``), with its class weights, pos_weight, label smoothing and focusing.

Importing this module imports keras (and so its backend); ``import softmargin`` alone does not. Without keras, or
without the framework of Keras's backend, it raises ``ModuleNotFoundError`` naming the extras to install
(``pip install 'softmargin[keras,jax]'`` or ``'softmargin[keras,torch]'``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._extras import keras_needed

with keras_needed():
    import keras

__all__ = ["MultiLabelSoftMarginLoss"]

_BACKENDS = ("jax", "torch")


def _traced(value: Any) -> bool:
    import jax

    return isinstance(value, jax.core.Tracer)


def _class_weights(name: str, value: Any) -> float | list[float] | None:
    """``weight`` / ``pos_weight`` as JSON for ``get_config``: a list of per-class floats (shape ``(C,)``) or one
    float (a scalar, which the backends broadcast); their values checked at once (they are concrete here)."""
    from . import _validation as V

    if value is None:
        return None
    array = np.asarray(keras.ops.convert_to_numpy(value))
    V.check_per_class_shape(name, array.shape)
    kind = {"b": "bool", "f": "float", "i": "int", "u": "int", "c": "complex"}.get(array.dtype.kind, "other")
    V.check_target_kind(kind, array.dtype, name)
    array = array.astype(np.float64)
    V.check_weight_values(name, array, positive=name == "pos_weight")
    return float(array) if array.ndim == 0 else [float(v) for v in array]


def _check_target(y_true: Any) -> None:
    """The target range check (``ValueError`` naming the first bad value) of a concrete ``y_true``."""
    from . import _validation as V

    target = np.asarray(keras.ops.convert_to_numpy(y_true))
    if target.dtype.name == "bfloat16":
        target = target.astype(np.float32)
    V.check_target_values(target)


@keras.saving.register_keras_serializable(package="softmargin")
class MultiLabelSoftMarginLoss(keras.losses.Loss):
    r"""The multi-label soft-margin loss of logits ``y_pred`` against targets ``y_true`` in [0, 1], for ``compile``.

    Each sample's loss is the (weighted) mean over its labels of ``softplus(x) - y * x``; Keras then applies
    ``sample_weight`` and ``reduction`` (default: the mean over the batch, which is torch's
    ``MultiLabelSoftMarginLoss``). Same value as ``keras.losses.BinaryCrossentropy(from_logits=True)`` without
    options, computed in one fused pass that also makes the gradient, exact for infinite logits.

    Args:
        weight: per-class weights, finite and >= 0, shape ``(C,)`` (e.g. :func:`softmargin.class_weights` of the
            training labels), or a scalar for every class.
        pos_weight: per-class weights > 0 (and finite) of the positive term, shape ``(C,)``
            (:func:`softmargin.pos_weight`), or a scalar.
        label_smoothing, gamma_pos, gamma_neg, clip: as in :func:`softmargin.numpy.multilabel_soft_margin_loss`.
        reduction, name, dtype: as for any ``keras.losses.Loss``.

    ``weight`` and ``pos_weight`` are checked here, when the loss is made (``ValueError`` for another shape or a
    value out of range). The targets (``y_true`` in [0, 1], NaN refused) are checked in every call where they are
    concrete: always on the torch backend; on the JAX backend with ``run_eagerly=True`` (``fit``, ``evaluate``)
    or when the loss is called directly on arrays. A compiled JAX step (the default, ``run_eagerly=False``) traces
    ``y_true`` and skips the target check; shape and dtype checks always run.

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
        # kept for get_config only when given (keras.losses.Loss drops it, so a float64 loss reloaded in float32); a
        # loss built without one follows the global dtype policy wherever it is loaded
        self._given_dtype = None if dtype is None else dtype if isinstance(dtype, str) else self._dtype_policy.name
        V.check_options(label_smoothing, gamma_pos, gamma_neg, clip)
        backend = keras.backend.backend()
        if backend not in _BACKENDS:
            raise ValueError(f"keras backend {backend!r} is not supported: expected one of {_BACKENDS} (set KERAS_BACKEND)")
        self.weight = _class_weights("weight", weight)
        self.pos_weight = _class_weights("pos_weight", pos_weight)
        self.options: dict[str, Any] = {
            name: float(value)  # a NumPy scalar becomes a Python float (get_config is JSON)
            for name, value in (("label_smoothing", label_smoothing), ("gamma_pos", gamma_pos), ("gamma_neg", gamma_neg), ("clip", clip))
        }  # fmt: skip

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-sample losses, shape ``y_pred.shape[:-1]``."""
        # the weights in float32 (float64 for float64 logits), never narrowed to a half-precision y_pred: the
        # backends compute half precision in float32, and a weight of 1e5 (inf in float16) or 1e-8 (0) stays as given
        wide = "float64" if keras.backend.standardize_dtype(y_pred.dtype) == "float64" else "float32"
        as_tensor = lambda v: None if v is None else keras.ops.convert_to_tensor(v, dtype=wide)
        weight, pos_weight = as_tensor(self.weight), as_tensor(self.pos_weight)
        if keras.backend.backend() == "jax":
            from .jax import multilabel_soft_margin_loss

            # fit differentiates (y_pred traced) even with run_eagerly=True, while y_true is still concrete: its
            # values are checked here then; the weights were checked in __init__
            validate = not (_traced(y_true) or _traced(y_pred))
            if not validate and not _traced(y_true):
                _check_target(y_true)
        else:
            from .torch import multilabel_soft_margin_loss  # type: ignore[assignment]

            validate = True
        y_true = keras.ops.cast(y_true, y_pred.dtype)
        return multilabel_soft_margin_loss(
            y_pred, y_true, weight, reduction="none", pos_weight=pos_weight, validate=validate, **self.options
        )

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "weight": self.weight, "pos_weight": self.pos_weight, **self.options}
        return config if self._given_dtype is None else {**config, "dtype": self._given_dtype}
