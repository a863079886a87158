"""softmargin: the multi-label soft-margin loss, exact, stable and fast, for NumPy, PyTorch and JAX.

Submodules are imported on first use, so ``import softmargin`` never imports torch or jax:

- :mod:`softmargin.numpy` — NumPy API (no torch needed)
- :mod:`softmargin.torch` — drop-in PyTorch functional and ``nn.Module``
- :mod:`softmargin.jax` — JAX (``jit``, ``grad``, ``vmap``, ``shard_map``)
- :mod:`softmargin.keras` — a Keras 3 loss; :mod:`softmargin.integrations.transformers` — a Trainer loss

:func:`multilabel_soft_margin_loss` dispatches on the array type to the backend of its framework,
:func:`class_weights` / :func:`pos_weight` compute per-class weights from a label matrix (NumPy only);
:class:`SoftMarginClassifier` is a scikit-learn estimator (torch and scikit-learn needed).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from ._options import LossOptions
from .weights import class_weights, pos_weight

__version__ = "0.1.0"
__all__ = ["LossOptions", "SoftMarginClassifier", "__version__", "class_weights", "multilabel_soft_margin_loss", "pos_weight"]

_SUBMODULES = ("numpy", "torch", "jax", "keras", "integrations", "kernels", "metrics", "weights", "app")


def _backend(array: Any) -> str:
    """The backend for ``array``'s type. A framework is looked at only if it is already imported (einops does the
    same): an array of a framework cannot exist before its module is, and nothing heavy is imported by accident."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(array, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(array, (jax.Array, jax.core.Tracer)):
        return "jax"
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(array, (numpy.ndarray, numpy.generic)):
        return "numpy"
    raise TypeError(
        f"input is a {type(array).__module__}.{type(array).__name__}: expected a NumPy array, a torch.Tensor or a "
        "jax.Array (the backend is chosen from the input's type)"
    )


def multilabel_soft_margin_loss(input: Any, target: Any, weight: Any = None, reduction: str = "mean", **options: Any) -> Any:
    """The multi-label soft-margin loss for NumPy arrays, torch tensors or JAX arrays, in the input's own type.

    Dispatches on ``type(input)`` to :func:`softmargin.numpy.multilabel_soft_margin_loss`,
    :func:`softmargin.torch.multilabel_soft_margin_loss` or :func:`softmargin.jax.multilabel_soft_margin_loss`
    (see them for the arguments and ``options``: pos_weight, mask, label_smoothing, gamma_pos, gamma_neg, clip,
    validate); the result is of the input's type and differentiable by its framework.

    Example:
        >>> import numpy as np, softmargin
        >>> x = np.array([[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]])
        >>> y = np.array([[1, 0, 1], [0, 1, 0]])
        >>> round(float(softmargin.multilabel_soft_margin_loss(x, y, weight=[0.5, 2.0, 1.5])), 5)
        1.18012
    """
    backend = importlib.import_module(f"{__name__}.{_backend(input)}")
    return backend.multilabel_soft_margin_loss(input, target, weight, reduction=reduction, **options)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "SoftMarginClassifier":  # needs torch and scikit-learn: imported on first use
        return importlib.import_module(f"{__name__}.app.sklearn").SoftMarginClassifier
    raise AttributeError(f"module 'softmargin' has no attribute {name!r}")
