"""softmargin: the multi-label soft-margin loss, exact, stable and fast, for NumPy and PyTorch.

Submodules are imported on first use, so ``import softmargin`` never imports torch:

- :mod:`softmargin.numpy` — NumPy API (no torch needed)
- :mod:`softmargin.torch` — drop-in PyTorch functional and ``nn.Module``

and :func:`class_weights` / :func:`pos_weight` compute per-class weights from a label matrix (NumPy only);
:class:`SoftMarginClassifier` is a scikit-learn estimator (torch and scikit-learn needed).
"""

from __future__ import annotations

import importlib
from typing import Any

from ._options import LossOptions
from .weights import class_weights, pos_weight

__version__ = "0.1.0"
__all__ = ["LossOptions", "SoftMarginClassifier", "__version__", "class_weights", "pos_weight"]

_SUBMODULES = ("numpy", "torch", "kernels", "metrics", "weights", "app")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "SoftMarginClassifier":  # needs torch and scikit-learn: imported on first use
        return importlib.import_module(f"{__name__}.app.sklearn").SoftMarginClassifier
    raise AttributeError(f"module 'softmargin' has no attribute {name!r}")
