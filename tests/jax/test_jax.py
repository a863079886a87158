"""softmargin.jax against the NumPy backend (the oracle), the float64 reference in helpers.py and optax."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import RTOL, SEED_LABELS, SEED_LOGITS, SEED_WEIGHTS, assert_close, reference_grad, reference_loss

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import softmargin.numpy as oracle
from softmargin.jax import multilabel_soft_margin_loss

IMPLS = ["xla", "callback"]
OPTIONS = {
    "plain": {},
    "weight": {"weight": "class"},
    "pos_weight": {"pos_weight": "class"},
    "mask": {"mask": "full"},
    "label_smoothing": {"label_smoothing": 0.1},
    "focal": {"gamma_pos": 2.0, "gamma_neg": 2.0},
    "asymmetric": {"gamma_neg": 4.0, "clip": 0.05},
    "everything": {"weight": "full", "pos_weight": "class", "mask": "class", "label_smoothing": 0.05, "gamma_pos": 1.0, "gamma_neg": 3.0, "clip": 0.02},
}


def _options(case, shape, rng):
    kwargs = {}
    for key, value in OPTIONS[case].items():
        if key == "mask":
            kwargs[key] = rng.random(shape if value == "full" else shape[-1]) < 0.7
        elif value == "class":
            kwargs[key] = (rng.random(shape[-1]) + 0.5).astype(np.float32)
        elif value == "full":
            kwargs[key] = (rng.random(shape) * 2).astype(np.float32)
        else:
            kwargs[key] = value
    return kwargs


def _jax(kwargs):
    return {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}


def _value_and_grad(x, y, reduction="mean", **kwargs):
    """The loss and d(sum of the loss)/dx, through jax.grad."""
    f = lambda x: multilabel_soft_margin_loss(x, y, reduction=reduction, **kwargs)
    return f(x), jax.grad(lambda x: f(x).sum())(x)


def test_seed_example():
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    loss = multilabel_soft_margin_loss(f32(SEED_LOGITS), f32(SEED_LABELS), f32(SEED_WEIGHTS))
    assert loss.dtype == jnp.float32
    assert abs(float(loss) - 1.18012) < 1e-5


@pytest.mark.parametrize("case", list(OPTIONS))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("impl", "shape"), [("xla", (7,)), ("xla", (2, 3, 4)), ("callback", (5, 11))])
def test_matches_numpy_backend(impl, case, reduction, shape, rng):
    x = (rng.standard_normal(shape) * 4).astype(np.float64)
    y = (rng.random(shape) < 0.3).astype(np.float64)
    kwargs = _options(case, shape, rng)
    loss, grad = _value_and_grad(jnp.asarray(x), jnp.asarray(y), reduction, impl=impl, **_jax(kwargs))
    expected, expected_grad = oracle.multilabel_soft_margin_loss_and_grad(x, y, reduction=reduction, **kwargs)
    assert_close(loss, expected, RTOL["float64"], f"{case} loss")
    assert_close(grad, expected_grad, RTOL["float64"], f"{case} grad")


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_reference(dtype, reduction, rng):
    x = rng.standard_normal((6, 33)) * 3
    y = (rng.random((6, 33)) < 0.2).astype(np.float64)
    w = rng.random(33) + 0.5
    xj = jnp.asarray(x).astype(dtype)
    x_rounded = np.asarray(xj.astype(jnp.float64))  # compare at the input's own precision
    loss, grad = _value_and_grad(xj, jnp.asarray(y).astype(dtype), reduction, weight=jnp.asarray(w).astype(dtype))
    assert loss.dtype == xj.dtype and grad.dtype == xj.dtype
    w_rounded = np.asarray(jnp.asarray(w).astype(dtype).astype(jnp.float64))
    assert_close(loss, reference_loss(x_rounded, y, w_rounded, reduction), RTOL[dtype], "loss")
    assert_close(grad, reference_grad(x_rounded, y, w_rounded, "sum" if reduction == "none" else reduction), RTOL[dtype], "grad")


def test_matches_optax(rng):
    optax = pytest.importorskip("optax")
    x = jnp.asarray(rng.standard_normal((64, 50)), jnp.float32)
    y = jnp.asarray(rng.random((64, 50)) < 0.1, jnp.float32)
    ours = jax.jit(jax.value_and_grad(lambda x: multilabel_soft_margin_loss(x, y, validate=False)))(x)
    theirs = jax.jit(jax.value_and_grad(lambda x: optax.sigmoid_binary_cross_entropy(x, y).mean(-1).mean()))(x)
    assert_close(ours[0], theirs[0], RTOL["float32"], "loss")
    assert_close(ours[1], theirs[1], RTOL["float32"], "grad")


def _reference_jax(x, y, w, pw, m, eps):
    """The plain definition with every linear option, differentiated by JAX itself (float64)."""
    y = y * (1 - eps) + eps / 2
    element = (y * pw * jnp.logaddexp(0.0, -x) + (1 - y) * jnp.logaddexp(0.0, x)) * w * m
    return (element.sum(-1) / m.sum(-1)).mean()


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_of_target_weight_and_pos_weight(impl, rng):
    shape = (4, 6)
    x, y = jnp.asarray(rng.standard_normal(shape) * 3), jnp.asarray(rng.random(shape))
    w, pw = jnp.asarray(rng.random(shape) + 0.5), jnp.asarray(rng.random(6) + 0.5)
    m = jnp.asarray(rng.random(shape) < 0.8).at[:, 0].set(True)
    ours = jax.grad(
        lambda x, y, w, pw: multilabel_soft_margin_loss(x, y, w, pos_weight=pw, mask=m, label_smoothing=0.1, impl=impl),
        argnums=(0, 1, 2, 3),
    )(x, y, w, pw)
    theirs = jax.grad(lambda x, y, w, pw: _reference_jax(x, y, w, pw, m.astype(x.dtype), 0.1), argnums=(0, 1, 2, 3))(x, y, w, pw)
    for name, a, b in zip(("input", "target", "weight", "pos_weight"), ours, theirs):
        assert_close(a, b, 1e-12, name)


def test_focusing_gradients_of_target_match_finite_differences(rng):
    x, y = jnp.asarray(rng.standard_normal((3, 5))), jnp.asarray(rng.random((3, 5)))
    f = lambda y: multilabel_soft_margin_loss(x, y, gamma_pos=1.5, gamma_neg=2.0, clip=0.05, validate=False)
    grad = jax.grad(f)(y)
    step = 1e-6
    numeric = np.zeros((3, 5))
    for i in np.ndindex(3, 5):
        numeric[i] = (float(f(y.at[i].add(step))) - float(f(y.at[i].add(-step)))) / (2 * step)
    assert_close(grad, numeric, 1e-7, "d loss / d target")


def test_second_call_reuses_compilation_and_mask_rules(rng):
    x = jnp.asarray(rng.standard_normal((3, 4)))
    y = jnp.zeros((3, 4))
    nothing = jnp.zeros((3, 4), bool)
    assert float(multilabel_soft_margin_loss(x, y, mask=nothing)) == 0.0
    assert np.all(np.asarray(multilabel_soft_margin_loss(x, y, mask=nothing, reduction="none")) == 0)
    assert np.isnan(float(multilabel_soft_margin_loss(jnp.zeros((0, 4)), jnp.zeros((0, 4)))))


def test_loss_options_value_equals_the_keywords(rng):
    from softmargin import LossOptions

    x, y = jnp.asarray(rng.standard_normal((3, 4))), jnp.asarray(rng.random((3, 4)))
    a = multilabel_soft_margin_loss(x, y, options=LossOptions(gamma_neg=2.0, clip=0.05))
    b = multilabel_soft_margin_loss(x, y, gamma_neg=2.0, clip=0.05)
    assert float(a) == float(b)
    with pytest.raises(ValueError, match="options= and label_smoothing/gamma_pos/gamma_neg/clip were both given"):
        multilabel_soft_margin_loss(x, y, options=LossOptions(), gamma_neg=1.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_logits_read_a_float32_soft_target_unrounded(impl, dtype):
    """A float32 soft target of half-precision logits keeps its precision on both implementations (the callback's
    float16 logits go to the NumPy backend's kernel with the target as float32): each gradient element within one
    unit in its last place of the float64 formula's plus float32's rounding of sigmoid(x) - y. Rounded to float16
    first (the callback did), 59 % of them were more than one unit off, for a student near its teacher."""
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((64, 520)) * 4
    x = jnp.asarray(teacher + 0.3 * rng.standard_normal(teacher.shape), dtype=dtype)
    y = (1 / (1 + np.exp(-teacher))).astype(np.float32)
    grad = jax.grad(lambda a: multilabel_soft_margin_loss(a, jnp.asarray(y), reduction="sum", impl=impl))(x)
    exact = reference_grad(np.asarray(x, dtype=np.float64), y, None, "sum")
    eps, tiny = float(jnp.finfo(dtype).eps), float(jnp.finfo(dtype).tiny)
    bound = eps * np.abs(exact) + 16 * 2.0**-24 * np.abs(exact).max() + eps * tiny
    excess = np.abs(np.asarray(grad, dtype=np.float64) - exact) / bound
    assert excess.max() <= 1, f"gradient {excess.max():.3g} times its bound"


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "bfloat16"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_callback_writes_the_gradient_into_xlas_result_buffer(dtype, reduction, rng, monkeypatch):
    """The NumPy backend writes the gradient straight into XLA's result buffer (``out=``): the jitted step returns
    the very buffer the kernel wrote. bfloat16, which NumPy's backend does not take, is computed in float32 and
    converted."""
    seen = []
    real = oracle.multilabel_soft_margin_loss_and_grad

    def spy(*args, **kwargs):
        out = kwargs.get("out")
        seen.append(None if out is None else (out[0].shape, out[1].dtype.name, out[1].ctypes.data))
        return real(*args, **kwargs)

    monkeypatch.setattr(oracle, "multilabel_soft_margin_loss_and_grad", spy)
    x = rng.standard_normal((6, 33)) * 3
    y = (rng.random((6, 33)) < 0.2).astype(np.float64)
    xj = jnp.asarray(x).astype(dtype)
    step = jax.jit(jax.value_and_grad(lambda a: multilabel_soft_margin_loss(a, jnp.asarray(y).astype(dtype), reduction=reduction, impl="callback", validate=False).sum()))
    loss, grad = step(xj)
    assert len(seen) == 1 and seen[0][0] == ((6,) if reduction == "none" else ())
    if dtype == "bfloat16":  # into float32 arrays, then converted into XLA's buffers
        assert seen[0][1] == "float32" and seen[0][2] != grad.unsafe_buffer_pointer()
    else:
        assert seen[0][1:] == (dtype, grad.unsafe_buffer_pointer())  # no copy after the kernel
    x_rounded = np.asarray(xj.astype(jnp.float64))
    assert_close(loss, reference_loss(x_rounded, y, None, reduction).sum(), RTOL[dtype], "loss")
    assert_close(grad, reference_grad(x_rounded, y, None, "sum" if reduction == "none" else reduction), RTOL[dtype], "grad")


def test_auto_takes_the_callback_for_large_cpu_calls_only():
    from softmargin.jax import _ops

    large = jnp.zeros((4, _ops.CALLBACK_MIN_ELEMENTS // 4), jnp.float32)
    small = jnp.zeros((4, _ops.CALLBACK_MIN_ELEMENTS // 4 - 1), jnp.float32)
    fused = jax.default_backend() == "cpu" and _ops.numpy_backend_is_fused()
    assert _ops.resolve_impl("auto", large) == ("callback" if fused else "xla")
    assert _ops.resolve_impl("auto", small) == "xla"
    assert _ops.resolve_impl("auto", large.astype(jnp.bfloat16)) == "xla"
    assert _ops.resolve_impl("callback", small) == "callback" and _ops.resolve_impl("xla", large) == "xla"


@pytest.mark.parametrize("name", ["weight", "pos_weight"])
def test_gradient_with_respect_to_a_python_float_weight(name):
    """jax.grad(lambda w: loss(x, y, w))(2.0) raised AttributeError ('TypedFloat' has no 'astype'): the custom_vjp
    got the bare Python scalar. It is now read as an array; the gradient equals a central difference."""
    x = jnp.asarray([[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]])
    y = jnp.asarray([[1.0, 0, 1], [0, 1, 0]])
    f = lambda w: multilabel_soft_margin_loss(x, y, validate=False, **{name: w})
    step = 1e-6
    expected = (f(jnp.asarray(2.0 + step)) - f(jnp.asarray(2.0 - step))) / (2 * step)
    for grad in (jax.grad(f), jax.jit(jax.grad(f))):
        assert float(grad(2.0)) == pytest.approx(float(expected), rel=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(0, 3), (2, 0)])
def test_empty_batches_and_no_classes_give_torchs_values(shape, reduction, impl):
    """With no class the XLA path gave 0 (an empty sum times 1/0) where torch's loss, NumPy's and the callback give
    NaN (0 / 0); an empty batch's mean is NaN and its sum 0 everywhere."""
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.multilabel_soft_margin_loss(torch.zeros(shape), torch.zeros(shape), reduction=reduction)
    got = multilabel_soft_margin_loss(jnp.zeros(shape), jnp.zeros(shape), reduction=reduction, impl=impl)
    np.testing.assert_array_equal(np.asarray(got), expected.numpy())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("mask_shape", [(0, 3), (3,)])
def test_an_empty_batch_with_a_mask_gives_torchs_values(mask_shape, reduction, impl):
    """An empty batch with a mask: XLA's mean was 0 (the "nothing observed" rule) where the callback, the NumPy and
    torch backends give torch's NaN for the mean over no sample. A mask observing every label changes nothing."""
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.multilabel_soft_margin_loss(torch.zeros(0, 3), torch.zeros(0, 3), reduction=reduction)
    mask = jnp.ones(mask_shape, bool)
    got = multilabel_soft_margin_loss(jnp.zeros((0, 3)), jnp.zeros((0, 3)), reduction=reduction, mask=mask, impl=impl)
    np.testing.assert_array_equal(np.asarray(got), expected.numpy())
