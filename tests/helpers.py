"""The independent float64 / mpmath references and the one tolerance table, shared by all test modules."""

from __future__ import annotations

import numpy as np

#: Relative tolerances for agreement with torch (the core issue's contract) and with the exact reference.
RTOL = {"float64": 1e-12, "float32": 1e-6, "float16": 1e-3, "bfloat16": 8e-3}


def reference_loss(x, y, weight=None, reduction="mean"):
    """Float64 reference written independently of softmargin's formula, from -log sigmoid(t) = logaddexp(0, -t)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    element = y * np.logaddexp(0.0, -x) + (1 - y) * np.logaddexp(0.0, x)
    if weight is not None:
        element = element * np.asarray(weight, dtype=np.float64)
    per_sample = element.mean(axis=-1)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def reference_grad(x, y, weight=None, reduction="mean"):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    grad = 1.0 / (1.0 + np.exp(-x)) - y
    if weight is not None:
        grad = grad * np.asarray(weight, dtype=np.float64)
    grad = grad / x.shape[-1]
    if reduction == "mean":
        grad = grad / (x.size // x.shape[-1])
    return grad


def exact_element_loss(x: float, y: float) -> float:
    """mpmath, 50 digits: -(y log sigmoid(x) + (1 - y) log sigmoid(-x))."""
    import mpmath

    with mpmath.workdps(50):
        xm, ym = mpmath.mpf(x), mpmath.mpf(y)
        log_sig = lambda t: -mpmath.log1p(mpmath.exp(-t)) if t >= 0 else t - mpmath.log1p(mpmath.exp(t))
        return float(-(ym * log_sig(xm) + (1 - ym) * log_sig(-xm)))


def assert_close(actual, expected, rtol, what="", atol=0.0):
    """|a - e| <= rtol * |e| + rtol * max|e| + atol: relative, with an absolute floor at the array's own scale."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if expected.size == 0:
        return
    scale = np.max(np.abs(expected))
    err = np.abs(actual - expected)
    bound = rtol * np.abs(expected) + rtol * scale + atol
    worst = np.argmax(err - bound)
    assert np.all(err <= bound), (
        f"{what}: max violation at {np.unravel_index(worst, err.shape)}: "
        f"actual {actual.flat[worst]!r} expected {expected.flat[worst]!r} (rtol {rtol})"
    )


SEED_LOGITS = [[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]]
SEED_LABELS = [[1, 0, 1], [0, 1, 0]]
SEED_WEIGHTS = [0.5, 2.0, 1.5]
