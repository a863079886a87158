"""Numerical regressions of softmargin.jax: infinite logits, float16 with 100,000 classes, extreme values."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, exact_element_loss, reference_loss

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from softmargin.jax import multilabel_soft_margin_loss

DTYPES = ["float16", "bfloat16", "float32", "float64"]


@pytest.mark.parametrize("impl", ["xla", "callback"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_infinite_logits_give_no_nan(impl, dtype):
    x = jnp.asarray([[np.inf, -np.inf, np.inf, -np.inf]], dtype)
    right = jnp.asarray([[1.0, 0.0, 1.0, 0.0]], dtype)
    wrong = 1 - right
    f = lambda x, y: multilabel_soft_margin_loss(x, y, impl=impl, validate=False)
    loss, grad = jax.value_and_grad(f)(x, right)
    assert float(loss) == 0.0 and np.all(np.asarray(grad, np.float64) == 0)
    loss, grad = jax.value_and_grad(f)(x, wrong)
    assert float(loss) == np.inf
    # the gradient is finite: sigmoid(x) - y = +-1, over C * N
    assert_close(np.asarray(grad, np.float64), np.asarray(jnp.where(x > 0, 1.0, -1.0), np.float64) / 4, 1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_options_with_infinite_logits_stay_finite(dtype):
    x = jnp.asarray([[np.inf, -np.inf, 30.0, -30.0, 0.0]], dtype)
    y = jnp.asarray([[1.0, 0.0, 1.0, 0.0, 1.0]], dtype)
    f = lambda x: multilabel_soft_margin_loss(x, y, pos_weight=jnp.full(5, 2.0, dtype), gamma_pos=1.0, gamma_neg=4.0, clip=0.05, label_smoothing=0.0)
    loss, grad = jax.value_and_grad(f)(x)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad, np.float64)))


def test_float16_with_100k_classes_is_finite_and_close_to_float64(rng):
    x = rng.standard_normal((4, 100_000)) * 8
    y = (rng.random((4, 100_000)) < 0.01).astype(np.float64)
    x16 = jnp.asarray(x, jnp.float16)
    x_rounded = np.asarray(x16, np.float64)
    for reduction in ("mean", "sum", "none"):
        f = lambda x: multilabel_soft_margin_loss(x, jnp.asarray(y, jnp.float16), reduction=reduction)
        loss, grad = f(x16), jax.grad(lambda x: f(x).sum())(x16)
        expected = reference_loss(x_rounded, y, reduction=reduction)
        assert np.all(np.isfinite(np.asarray(loss, np.float64))) and np.all(np.isfinite(np.asarray(grad, np.float64)))
        assert_close(np.asarray(loss, np.float64), expected, 1e-3, reduction)


@pytest.mark.parametrize("x", [-100.0, -30.0, -17.5, -1e-3, 0.0, 1e-3, 17.5, 30.0, 100.0])
@pytest.mark.parametrize("y", [0.0, 1.0, 0.3])
def test_element_loss_to_the_last_digit(x, y):
    loss = multilabel_soft_margin_loss(jnp.asarray([x], jnp.float64), jnp.asarray([y], jnp.float64))
    exact = exact_element_loss(x, y)
    assert abs(float(loss) - exact) <= 4e-16 * abs(exact) + 1e-300


def test_confident_right_predictions_keep_their_small_gradient():
    """sigmoid(x) - 1 rounds to 0 for x > 17 in float64; the fused gradient keeps -sigmoid(-x)."""
    x = jnp.asarray([20.0, 40.0], jnp.float32)
    grad = jax.grad(lambda x: multilabel_soft_margin_loss(x, jnp.ones(2, jnp.float32), reduction="sum"))(x)
    expected = -1 / (1 + np.exp(np.array([20.0, 40.0]))) / 2
    assert_close(grad, expected, 1e-6)


@pytest.mark.parametrize("impl", ["xla", "callback"])
@pytest.mark.parametrize("dropped", ["zero weight", "masked out"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_dropped_nan_logit(impl, dropped, reduction):
    """An element the loss drops (weight exactly 0, or mask False) leaves the loss finite even at a NaN logit; its
    input gradient stays NaN, as torch's and NumPy's do (a NaN logit is a model gone wrong); the target and
    pos_weight gradients drop it (0); every other gradient is that of the same call with the logit finite."""
    import softmargin.numpy as oracle

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((3, 4)))
    y, pw = jnp.asarray(rng.random((3, 4))), jnp.asarray(rng.random(4) + 0.5)
    if dropped == "zero weight":
        kwargs = {"weight": jnp.asarray(rng.random((3, 4)) + 0.5).at[1, 2].set(0.0)}
    else:
        kwargs = {"mask": jnp.ones((3, 4), bool).at[1, 2].set(False)}
    nan = x.at[1, 2].set(jnp.nan)
    f = lambda x, y, pw: multilabel_soft_margin_loss(
        x, y, reduction=reduction, pos_weight=pw, impl=impl, validate=False, **kwargs
    ).sum()
    loss, grads = jax.value_and_grad(f, argnums=(0, 1, 2))(nan, y, pw)
    expected_loss, expected = jax.value_and_grad(f, argnums=(0, 1, 2))(x, y, pw)
    assert np.isfinite(float(loss)) and float(loss) == pytest.approx(float(expected_loss), rel=1e-15)
    host = {k: np.asarray(v) for k, v in kwargs.items()}
    numpy_grad = oracle.multilabel_soft_margin_loss_and_grad(np.asarray(nan), np.asarray(y), pos_weight=np.asarray(pw), **host)[1]
    assert np.isnan(float(grads[0][1, 2])) and np.isnan(numpy_grad[1, 2])
    assert float(grads[1][1, 2]) == 0.0
    kept = np.ones((3, 4), bool)
    kept[1, 2] = False
    assert_close(np.asarray(grads[0])[kept], np.asarray(expected[0])[kept], 1e-15, "input")
    for name, ours, theirs in zip(("target", "pos_weight"), grads[1:], expected[1:]):
        assert np.all(np.isfinite(np.asarray(ours))), name
        assert_close(ours, theirs, 1e-15, name)


def _float64_loss_and_grad(x, y, w, pw):
    """The definition in float64 (mean over C and N), and its gradient w * (pw * y * (p - 1) + (1 - y) * p) / (C N)."""
    x, y, w, pw = (np.asarray(a, np.float64) for a in (x, y, w, pw))
    element = pw * y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)
    p = 1 / (1 + np.exp(-x))
    return (w * element).mean(-1).mean(), w * (pw * y * (p - 1) + (1 - y) * p) / x.size


@pytest.mark.parametrize("impl", ["xla", "callback"])
@pytest.mark.parametrize("case", ["float32 weight", "no weight", "float64 weight", "float64 pos_weight"])
def test_weighted_loss_beyond_float32_is_finite(impl, case):
    """float32 logits: the weighted element loss (or the row sum) beyond float32's range where the mean over the
    labels is within it (XLA formed sum_c(l * w) in float32 before dividing by C: inf); a float64 weight (x64)
    beyond float32's range, which XLA narrowed to inf, is used as given, as the NumPy backend does."""
    x, y = np.zeros((2, 100), np.float32), np.zeros((2, 100), np.float32)
    w, pw = np.ones(100, np.float32), np.ones(100, np.float32)
    if case == "float32 weight":
        x[0, 0], w[:] = 3e38, 10.0
    elif case == "no weight":
        x[0, :2] = 3e38
    elif case == "float64 weight":
        w = w.astype(np.float64)
        w[0] = 1e39
    else:
        y[:, 0], pw = 1.0, pw.astype(np.float64)
        pw[0] = 1e39
    expected_loss, expected_grad = _float64_loss_and_grad(x, y, w, pw)
    kwargs = {} if case == "no weight" else {"weight": jnp.asarray(w)}
    if case == "float64 pos_weight":
        kwargs["pos_weight"] = jnp.asarray(pw)
    loss, grad = jax.value_and_grad(lambda x: multilabel_soft_margin_loss(x, jnp.asarray(y), impl=impl, **kwargs))(jnp.asarray(x))
    assert loss.dtype == grad.dtype == jnp.float32
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
    assert_close(float(loss), expected_loss, 1e-6, "loss")
    np.testing.assert_allclose(np.asarray(grad, np.float64), expected_grad, rtol=2e-6)
    if case.startswith("float64"):  # and the weight's cotangent, in the weight's dtype
        name = "pos_weight" if case == "float64 pos_weight" else "weight"
        other = jax.grad(lambda v: multilabel_soft_margin_loss(jnp.asarray(x), jnp.asarray(y), impl=impl, **{**kwargs, name: v}))(kwargs[name])
        assert other.dtype == jnp.float64 and np.all(np.isfinite(np.asarray(other)))
