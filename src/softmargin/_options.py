"""The scalar loss options as one value: :class:`LossOptions`, accepted wherever the four option arguments are."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from . import _validation as V


@dataclass(frozen=True)
class LossOptions:
    """The scalar options of the loss; every default leaves the plain (torch-identical) loss.

    Args:
        label_smoothing: ``eps`` in [0, 1): targets become ``y * (1 - eps) + eps / 2``.
        gamma_pos, gamma_neg: focusing exponents >= 0 of the positive and negative terms (asymmetric loss, Ridnik et
            al., ICCV 2021; ``gamma_pos == gamma_neg`` with ``clip == 0`` is the focal loss of Lin et al., ICCV 2017).
        clip: probability margin in [0, 1) shifted off the negatives' probabilities (``p_m = max(p - clip, 0)``).

    The values are checked when the object is made (``ValueError``/``TypeError`` naming the field), so a
    ``LossOptions`` is valid wherever it travels.

    Example:
        >>> from softmargin import LossOptions
        >>> LossOptions(gamma_neg=4.0, clip=0.05).focusing
        True
    """

    label_smoothing: float = 0.0
    gamma_pos: float = 0.0
    gamma_neg: float = 0.0
    clip: float = 0.0

    def __post_init__(self) -> None:
        V.check_options(self.label_smoothing, self.gamma_pos, self.gamma_neg, self.clip)
        for field in ("label_smoothing", "gamma_pos", "gamma_neg", "clip"):  # a NumPy scalar becomes a Python float
            object.__setattr__(self, field, float(getattr(self, field)))

    @property
    def focusing(self) -> bool:
        """Whether asymmetric focusing is on (any gamma or clip)."""
        return bool(self.gamma_pos or self.gamma_neg or self.clip)

    @property
    def plain(self) -> bool:
        """Whether every option is at its default."""
        return self == PLAIN


PLAIN = LossOptions()

#: what each API tells a caller who gave an array for an option (the JAX advice, jax.jit's static_argnums, reached
#: torch users too)
_ARRAY_OPTION_ADVICE = {
    "numpy": "expected a Python float (an option decides which formula is computed): pass a number, e.g. float(a) "
    "for a one-element array a",
    "torch": "expected a Python float (an option decides which formula is computed and is not differentiated): pass "
    "a number, e.g. t.item() for a 0-d tensor t",
    "jax": "expected a static Python float (an option decides which formula is computed: under jax.jit mark it static "
    "with static_argnums or static_argnames, and do not vmap over it)",
}


def resolve(
    options: LossOptions | None,
    label_smoothing: float,
    gamma_pos: float,
    gamma_neg: float,
    clip: float,
    api: str = "numpy",
) -> LossOptions:
    """One :class:`LossOptions` from an ``options=`` argument or the four keyword arguments (not both); ``api``
    (``"numpy"``, ``"torch"`` or ``"jax"``) is the caller's, for the advice in the error messages."""
    keywords = (label_smoothing, gamma_pos, gamma_neg, clip)
    for name, value in zip(("label_smoothing", "gamma_pos", "gamma_neg", "clip"), keywords):
        # an array, or a JAX tracer (an option passed through jax.jit or jax.vmap): refused here, before a comparison
        # would ask it for a bool (JAX's TracerBoolConversionError, naming nothing)
        # (a Python number first: under torch.compile(dynamic=True) a float is symbolic, and dynamo cannot trace
        # hasattr on it)
        if isinstance(value, (int, float)) or isinstance(value, (numbers.Real, np.generic)):
            continue
        if isinstance(value, np.ndarray):  # (before the comparison below, which a multi-element array fails unclearly)
            raise TypeError(f"{name}={value!r} is a ndarray: expected a float")
        if hasattr(value, "shape"):
            raise TypeError(
                f"{name} is a {type(value).__name__} of shape {tuple(value.shape)}: {_ARRAY_OPTION_ADVICE[api]}"
            )
    if options is None:
        return PLAIN if keywords == (0.0, 0.0, 0.0, 0.0) else LossOptions(*keywords)
    if not isinstance(options, LossOptions):
        raise TypeError(f"options is a {type(options).__name__}: expected softmargin.LossOptions or None")
    if any(keywords):
        raise ValueError(
            "options= and label_smoothing/gamma_pos/gamma_neg/clip were both given: pass the options one way"
        )
    return options
