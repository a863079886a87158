"""Second and higher derivatives of softmargin.jax: grad of grad, jax.hessian, jax.jvp of jax.grad, with either
implementation. The callback's forward pass has a custom_jvp whose tangents are XLA's (a host callback has no
derivative of its own), so what "auto" picks by size never decides whether a second derivative works."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import RTOL, assert_close

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import softmargin.numpy as oracle
from softmargin.jax import _ops, multilabel_soft_margin_loss

EPS = 0.1


def _reference(x, y, w, pw, m, reduction):
    """The plain definition with every linear option, in jax.numpy (float64), for JAX to differentiate itself."""
    y = y * (1 - EPS) + EPS / 2
    mf = m.astype(x.dtype)
    per_sample = ((y * pw * jnp.logaddexp(0.0, -x) + (1 - y) * jnp.logaddexp(0.0, x)) * w * mf).sum(-1) / mf.sum(-1)
    return {"none": per_sample, "mean": per_sample.mean(), "sum": per_sample.sum()}[reduction]


def _operands(rng, shape=(3, 5)):
    x, y = jnp.asarray(rng.standard_normal(shape) * 3), jnp.asarray(rng.random(shape))
    w, pw = jnp.asarray(rng.random(shape) + 0.5), jnp.asarray(rng.random(shape[-1]) + 0.5)
    m = jnp.asarray(rng.random(shape) < 0.8).at[:, 0].set(True)
    return x, y, w, pw, m


def _derivatives(f, x, y, w, pw):
    """Grad of grad (w.r.t. every operand, also jitted), the Hessian in x, forward-over-reverse in x and in w."""
    args = (x, y, w, pw)
    grads = lambda *a: jax.grad(f, argnums=(0, 1, 2, 3))(*a)
    return {
        "grad of grad": jax.grad(lambda *a: sum(jnp.sum(jnp.sin(g)) for g in grads(*a)), argnums=(0, 1, 2, 3))(*args),
        "jitted grad of grad": jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(f)(x, y, w, pw) ** 2)))(x),
        "hessian": jax.hessian(f)(*args),
        "jvp of grad (x)": jax.jvp(lambda x: grads(x, y, w, pw), (x,), (jnp.cos(x),))[1],
        "jvp of grad (weight)": jax.jvp(lambda w: grads(x, y, w, pw), (w,), (jnp.cos(w),))[1],
    }


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("impl", ["xla", "callback", "auto"])
def test_second_derivatives_match_an_independent_formula(impl, reduction, rng, monkeypatch):
    """With "auto" the callback threshold is lowered to the test's size: the path large inputs take."""
    x, y, w, pw, m = _operands(rng)
    if impl == "auto":
        monkeypatch.setattr(_ops, "CALLBACK_MIN_ELEMENTS", 1)
        fused = jax.default_backend() == "cpu" and _ops.numpy_backend_is_fused()
        assert _ops.resolve_impl("auto", x) == ("callback" if fused else "xla")
    ours = lambda x, y, w, pw: multilabel_soft_margin_loss(
        x, y, w, reduction, pos_weight=pw, mask=m, label_smoothing=EPS, impl=impl, validate=False
    ).sum()
    theirs = lambda x, y, w, pw: _reference(x, y, w, pw, m, reduction).sum()
    expected = _derivatives(theirs, x, y, w, pw)
    for name, value in _derivatives(ours, x, y, w, pw).items():
        for a, b in zip(jax.tree.leaves(value), jax.tree.leaves(expected[name])):
            assert_close(a, b, 1e-12, name)


@pytest.mark.parametrize(
    "options", [{"gamma_pos": 2.0, "gamma_neg": 2.0}, {"gamma_pos": 1.5, "gamma_neg": 4.0, "clip": 0.05}]
)
def test_focusing_second_derivatives_of_the_callback_equal_xlas(options, rng):
    x, y, w, pw, _ = _operands(rng)
    results = {}
    for impl in ("xla", "callback"):
        f = lambda x: multilabel_soft_margin_loss(x, y, w, pos_weight=pw, impl=impl, validate=False, **options)
        results[impl] = (jax.hessian(f)(x), jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))(x))
    for a, b in zip(results["callback"], results["xla"]):
        assert_close(a, b, 1e-12, f"{options}")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_callback_hessian_in_half_and_single_precision(dtype, rng):
    x, y = (jnp.asarray(a, dtype) for a in (rng.standard_normal((2, 4)), rng.random((2, 4)) < 0.5))
    hessians = [
        jax.hessian(lambda x: multilabel_soft_margin_loss(x, y, impl=impl, validate=False).astype(jnp.float32))(x)
        for impl in ("callback", "xla")
    ]
    assert hessians[0].dtype == x.dtype
    assert_close(np.asarray(hessians[0], np.float64), np.asarray(hessians[1], np.float64), RTOL[dtype])


def test_grad_of_grad_above_the_callback_threshold():
    """The reviewer's case: 64 x 600 float32 logits, where "auto" takes the callback (it crashed in JAX)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 600)), jnp.float32)
    y = jnp.asarray(rng.random((64, 600)) < 0.3, jnp.float32)
    assert x.size >= _ops.CALLBACK_MIN_ELEMENTS
    results = [
        jax.grad(
            lambda x: jnp.sum(jax.grad(lambda x: multilabel_soft_margin_loss(x, y, validate=False, impl=impl))(x) ** 2)
        )(x)
        for impl in ("auto", "xla")
    ]
    assert_close(results[0], results[1], RTOL["float32"], "grad of grad")


@pytest.mark.parametrize("jit", [False, True])
def test_first_order_gradients_stay_with_the_callback(jit, rng, monkeypatch):
    """Only a second derivative brings in XLA's implementation: jax.grad runs the callback alone, once."""
    calls = []
    real = oracle.multilabel_soft_margin_loss_and_grad
    monkeypatch.setattr(
        oracle, "multilabel_soft_margin_loss_and_grad", lambda *a, **k: calls.append(1) or real(*a, **k)
    )

    def no_xla(*args, **kwargs):
        raise AssertionError("first-order use ran the XLA implementation")

    monkeypatch.setattr(_ops, "xla_forward", no_xla)
    x, y = jnp.asarray(rng.standard_normal((4, 6))), jnp.asarray(rng.random((4, 6)) < 0.3, jnp.float64)
    step = jax.value_and_grad(lambda x: multilabel_soft_margin_loss(x, y, impl="callback", validate=False))
    loss, grad = (jax.jit(step) if jit else step)(x)
    expected = oracle.multilabel_soft_margin_loss_and_grad(np.asarray(x), np.asarray(y))
    assert len(calls) == 2  # the step's, then the expected values'
    assert_close(loss, expected[0], RTOL["float64"], "loss")
    assert_close(grad, expected[1], RTOL["float64"], "grad")


@pytest.mark.parametrize("impl", ["xla", "callback"])
@pytest.mark.parametrize(
    "options",
    [{"pos_weight": jnp.asarray([2.0, 0.5, 3.0, 1.0])}, {"gamma_pos": 2.0, "gamma_neg": 2.0}, {"clip": 0.05},
     {"gamma_pos": 1.0, "gamma_neg": 4.0, "clip": 0.05, "label_smoothing": 0.1}],
)  # fmt: skip
def test_grad_of_grad_at_infinite_logits(options, impl):
    """Reverse over reverse at +-inf (right and wrong predictions): the Hessian is diagonal, so grad of the summed
    gradient is its diagonal: 0 at the infinite logits (sigmoid' vanishes there; the unselected branch of the
    0 * inf guard used to give 0 * inf = NaN), central differences of the gradient at the finite ones."""
    x = jnp.asarray([[np.inf, 0.5, -np.inf, 2.0], [-np.inf, -1.0, np.inf, 0.0]])
    y = jnp.asarray([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.3]])
    f = lambda x: multilabel_soft_margin_loss(x, y, impl=impl, validate=False, **options)
    diagonal = np.asarray(jax.grad(lambda x: jax.grad(f)(x).sum())(x))
    finite = np.isfinite(np.asarray(x))
    assert (diagonal[~finite] == 0).all(), diagonal
    step, gradient = 1e-5, jax.grad(f)
    for index in zip(*np.nonzero(finite)):
        fd = (gradient(x.at[index].add(step))[index] - gradient(x.at[index].add(-step))[index]) / (2 * step)
        assert_close(diagonal[index], fd, 1e-6, f"{options} {index}")


def _focal_reference(x, y, w, pw, gamma_pos, gamma_neg, clip):
    """The asymmetric loss of every element, straight from its definition (jax.numpy, float64), mean over all."""
    p = jax.nn.sigmoid(x)
    p_m = jnp.maximum(p - clip, 0.0)
    positive = pw * (1 - p) ** gamma_pos * jnp.logaddexp(0.0, -x)
    negative = p_m**gamma_neg * -jnp.log1p(-p_m)
    return ((y * positive + (1 - y) * negative) * w).mean()


@pytest.mark.parametrize(
    "options",
    [{}, {"gamma_pos": 2.0, "gamma_neg": 2.0}, {"gamma_pos": 1.0, "gamma_neg": 4.0, "clip": 0.05}],
    ids=["pos_weight", "focal", "asymmetric"],
)
@pytest.mark.parametrize("impl", ["xla", "callback"])
def test_second_derivatives_in_a_hard_target(impl, options, rng):
    """Second derivatives through the target where it is exactly 0 or 1 (the usual labels): the element loss is
    linear in y, but its 0 * inf guard used to cut y's derivative there (y * pos_loss at y = 0 counted as the
    constant 0), so d/dy of the loss's own value (the Hessian of loss ** 2 in y) and d/dy of the weights'
    gradients were wrong; the first derivatives, written out, were right."""
    x, _, w, pw, _ = _operands(rng)
    y = jnp.asarray(rng.random(x.shape) < 0.5, x.dtype).at[0, 0].set(0.3)
    full = {"gamma_pos": 0.0, "gamma_neg": 0.0, "clip": 0.0, **options}
    ours = lambda x, y, w, pw: multilabel_soft_margin_loss(x, y, w, pos_weight=pw, impl=impl, **options) ** 2
    theirs = lambda x, y, w, pw: _focal_reference(x, y, w, pw, **full) ** 2
    args = (x, y, w, pw)
    expected = jax.hessian(theirs, argnums=(0, 1, 2, 3))(*args)
    for i, row in enumerate(jax.hessian(ours, argnums=(0, 1, 2, 3))(*args)):
        for j, block in enumerate(row):
            assert_close(block, expected[i][j], 1e-10, f"{options} block {i}, {j}")
