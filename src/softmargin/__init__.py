"""softmargin: the multi-label soft-margin loss, exact, stable and fast, for NumPy and PyTorch.

Submodules are imported on first use, so ``import softmargin`` never imports torch:

- :mod:`softmargin.numpy` — NumPy API (no torch needed)
- :mod:`softmargin.torch` — drop-in PyTorch functional and ``nn.Module``
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("numpy", "torch", "ops", "cli")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'softmargin' has no attribute {name!r}")
