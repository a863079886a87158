"""Optional dependencies: the one ``ModuleNotFoundError`` that names the extra to install.

``import softmargin`` and :mod:`softmargin.numpy` need NumPy only; every other entry point imports its framework
inside :func:`needed`, which turns "No module named 'torch'" into "softmargin.torch needs torch, which is not
installed: pip install 'softmargin[torch]'". The error stays a ``ModuleNotFoundError`` (its ``name`` the package to
install, "torch" where "torch.nn" failed), so ``except ImportError`` and ``pytest.importorskip`` treat it as before.
Any other import failure (a module that is installed but broken, a missing module no extra brings) is raised
unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

#: Each extra of pyproject.toml's ``[project.optional-dependencies]`` and the modules its requirements bring, by
#: import name (scikit-learn is ``sklearn``); tests/core/test_extras.py checks the two agree.
EXTRAS = {
    "torch": frozenset({"torch", "mpmath"}),
    "triton": frozenset({"triton"}),
    "app": frozenset({"torch", "mpmath", "scipy", "sklearn", "matplotlib", "safetensors", "tqdm", "river"}),
    "jax": frozenset({"jax", "scipy"}),
    "keras": frozenset({"keras"}),
    "transformers": frozenset({"torch", "mpmath", "transformers", "accelerate"}),
}

#: Keras backends softmargin.keras runs on, and the extra that brings each one's framework.
KERAS_BACKENDS = {"jax": "jax", "torch": "torch"}
#: The frameworks of every Keras backend (keras imports the configured one when it is first imported).
KERAS_BACKEND_MODULES = frozenset({"jax", "jaxlib", "torch", "tensorflow", "openvino"})


def _missing(error: ModuleNotFoundError) -> str:
    """The top-level name of the module that was not found ("" when the error does not say)."""
    return (error.name or "").partition(".")[0]


def message(module: str, extra: str, by: str) -> str:
    """The text of the error: what needs what, and the command that installs it."""
    return f"{by} needs {module}, which is not installed: pip install 'softmargin[{extra}]'"


@contextlib.contextmanager
def needed(*extras: str, by: str) -> Iterator[None]:
    """Imports in this block that fail for a module of one of ``extras`` (the first that brings it is named)
    raise ``ModuleNotFoundError`` saying that ``by`` (the entry point, e.g. "softmargin.torch") needs it, and how
    to install it."""
    try:
        yield
    except ModuleNotFoundError as error:
        module = _missing(error)
        extra = next((name for name in extras if module in EXTRAS[name]), None)
        if extra is None:
            raise
        raise ModuleNotFoundError(message(module, extra, by), name=module) from error


@contextlib.contextmanager
def keras_needed() -> Iterator[None]:
    """``import keras`` for :mod:`softmargin.keras`: keras itself missing, or the framework of the backend keras was
    told to use (``KERAS_BACKEND``, else keras.json's, by default tensorflow) missing, each said with the extras that
    fix it. Keras imports its backend when it is first imported, so both fail here."""
    try:
        yield
    except ModuleNotFoundError as error:
        module = _missing(error)
        if module == "keras":
            raise ModuleNotFoundError(message("keras", "keras", "softmargin.keras"), name=module) from error
        if module not in KERAS_BACKEND_MODULES:
            raise
        chosen = os.environ.get("KERAS_BACKEND")
        if chosen in KERAS_BACKENDS and module in EXTRAS[KERAS_BACKENDS[chosen]]:
            text = message(module, f"keras,{KERAS_BACKENDS[chosen]}", f"softmargin.keras with KERAS_BACKEND={chosen}")
        else:
            setting = f"KERAS_BACKEND={chosen}" if chosen else "KERAS_BACKEND is not set: keras.json's, by default tensorflow"
            options = " or ".join(f"KERAS_BACKEND={name} (pip install 'softmargin[keras,{extra}]')"
                                  for name, extra in KERAS_BACKENDS.items())  # fmt: skip
            text = (f"softmargin.keras: keras could not import its backend ({setting}): {module} is not installed; "
                    f"softmargin's Keras loss runs on the jax or the torch backend: set {options}")  # fmt: skip
        raise ModuleNotFoundError(text, name=module) from error
