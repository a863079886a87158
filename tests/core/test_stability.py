"""Numerical regressions: infinite logits, half precision with many classes, float32 accuracy, extreme values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import RTOL, assert_close, exact_element_loss, reference_loss
from hypothesis import given
from hypothesis import strategies as st_
from hypothesis.extra import numpy as hnp

import softmargin.numpy as snp

torch = pytest.importorskip("torch")
import softmargin.torch as st

INF = math.inf
pytestmark = pytest.mark.usefixtures("torch_path")


def _both(x, y, w=None, reduction="none"):
    """(loss, grad) from the NumPy and the torch backends, as float64 NumPy arrays."""
    out = [snp.multilabel_soft_margin_loss_and_grad(x, y, w, reduction)]
    xt = torch.tensor(x, requires_grad=True)
    loss = st.multilabel_soft_margin_loss(xt, torch.tensor(y), None if w is None else torch.tensor(w), reduction=reduction)
    loss.sum().backward()
    out.append((loss.detach().numpy(), xt.grad.numpy()))
    return [(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) for a, b in out]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinite_logits(dtype):
    x = np.array([[INF, -INF, INF, -INF, INF, 0.0]], dtype=dtype)
    y = np.array([[1.0, 0.0, 0.0, 1.0, 0.5, 1.0]], dtype=dtype)
    for loss, grad in _both(x, y.copy()):
        assert np.isinf(loss).all() and (loss > 0).all()  # the wrong predictions make it +inf
        assert np.isfinite(grad).all()
        np.testing.assert_allclose(grad[0], np.array([0, 0, 1, -1, 0.5, -0.5]) / 6, rtol=1e-7)
    right = x[:, :2], y[:, :2]  # only right predictions at infinity: loss exactly 0, gradient exactly 0
    for loss, grad in _both(*right, reduction="mean"):
        assert loss == 0 and not grad.any()


def test_infinite_logit_with_zero_weight_contributes_nothing():
    x = np.array([[INF, 1.0]])
    y = np.array([[0.0, 1.0]])
    w = np.array([0.0, 2.0])
    for loss, grad in _both(x, y, w, reduction="sum"):
        assert_close(loss, 2 * exact_element_loss(1.0, 1.0) / 2, 1e-15)
        assert grad[0, 0] == 0 and np.isfinite(grad).all()


def test_torch_gives_nan_where_we_do_not():
    # Documents the bug this package exists to fix (if torch fixes it, delete this test).
    x = torch.tensor([[INF]])
    y = torch.tensor([[1.0]])
    assert torch.isnan(torch.nn.functional.multilabel_soft_margin_loss(x, y))
    assert st.multilabel_soft_margin_loss(x, y).item() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_with_100k_classes(dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 100_000, generator=gen) * 4).to(dtype)
    y = (torch.rand(4, 100_000, generator=gen) < 0.01).to(dtype)
    loss = st.multilabel_soft_margin_loss(x, y)
    assert loss.dtype == dtype and torch.isfinite(loss)
    exact = reference_loss(x.double().numpy(), y.double().numpy())  # float64 on the same rounded inputs
    assert abs(loss.double().item() - exact) <= 1e-3 * exact + 2.0 ** -8 * exact * (dtype == torch.bfloat16)
    # the accumulation itself (before rounding the result to half) is good to float32
    per_sample = st.multilabel_soft_margin_loss(x.float(), y.float(), reduction="none")
    assert_close(per_sample.double().numpy(), reference_loss(x.double().numpy(), y.double().numpy(), reduction="none"), 1e-6)


def _float32_cases(rng, num_classes, soft):
    magnitude = 10.0 ** rng.uniform(-6, 4, size=(40, num_classes))  # |x| from 1e-6 to 1e4
    x = (np.sign(rng.standard_normal(magnitude.shape)) * magnitude).astype(np.float32)
    x[:10] = rng.uniform(-1e4, 1e4, size=(10, num_classes))
    x[10:20] = rng.uniform(-30, 30, size=(10, num_classes))
    y = rng.random(x.shape) if soft else (rng.random(x.shape) < 0.5)
    return x, y.astype(np.float32)


@pytest.mark.parametrize("num_classes", [1, 7, 64])
@pytest.mark.parametrize("soft", [False, True])
def test_float32_per_sample_accuracy_against_mpmath(rng, num_classes, soft):
    x, y = _float32_cases(rng, num_classes, soft)
    exact = np.array(
        [math.fsum(exact_element_loss(float(a), float(b)) for a, b in zip(xr, yr)) / num_classes for xr, yr in zip(x, y)]
    )
    tiny = np.finfo(np.float32).tiny  # a true loss below float32's normal range cannot be held to a relative error
    for loss, _ in _both(x, y):
        rel = np.abs(loss - exact) / np.maximum(exact, tiny)
        assert rel.max() <= 2e-7, f"worst relative error {rel.max():.3g} at sample {rel.argmax()}"


finite_or_extreme = st_.one_of(
    st_.floats(-1e4, 1e4, width=32),
    st_.sampled_from([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 1e30, -1e30, 3.4e38, -3.4e38]),
)


@st_.composite
def problems(draw):
    dtype = draw(st_.sampled_from([np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    x = draw(hnp.arrays(dtype, shape, elements=finite_or_extreme))
    y = draw(hnp.arrays(dtype, shape, elements=st_.one_of(st_.sampled_from([0.0, 1.0]), st_.floats(0, 1, width=32))))
    weight = draw(st_.one_of(st_.none(), hnp.arrays(np.float64, (shape[-1],), elements=st_.floats(0, 10))))
    reduction = draw(st_.sampled_from(["none", "mean", "sum"]))
    return x, y, weight, reduction


@given(problems())
def test_property_finite_nonnegative_and_exact(problem):
    x, y, weight, reduction = problem
    expected = reference_loss(x, y, weight, reduction)  # float64 logaddexp: exact enough for float32 inputs
    rtol = RTOL[x.dtype.name] * 4
    # a true loss beyond the result's range is inf: the NumPy backend's result has the input's dtype, torch's (as
    # torch's own loss) that of input, target and weight together
    result_dtypes = (x.dtype, np.result_type(x, y, *([] if weight is None else [weight])))
    for (loss, grad), result_dtype in zip(_both(x, y, weight, reduction), result_dtypes, strict=True):
        overflows = np.asarray(expected) > np.finfo(result_dtype).max
        assert (loss >= 0).all() and np.isfinite(grad).all()
        np.testing.assert_array_equal(np.isinf(loss), overflows)
        tiny = np.finfo(x.dtype).tiny  # below the normal range only absolute accuracy is possible
        assert_close(np.where(overflows, 0, loss), np.where(overflows, 0, expected), rtol, "loss", atol=tiny)


@given(
    hnp.arrays(np.float64, st_.integers(1, 8), elements=st_.sampled_from([INF, -INF, 0.0, 1.0, -40.0, 1e300])),
    st_.data(),
)
def test_property_gradient_finite_and_bounded_for_any_logits(x, data):
    y = data.draw(hnp.arrays(np.float64, x.shape, elements=st_.floats(0, 1)))
    for loss, grad in _both(x[None], y[None], reduction="sum"):
        assert np.isfinite(grad).all() and (np.abs(grad) <= 1.0 / x.size + 1e-15).all()
        assert not np.isnan(loss).any()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_float32_logits_with_a_float64_weight_keep_a_loss_beyond_float32_range(reduction):
    """torch's loss is float64 here (result_type of input and weight): a per-sample loss above float32's maximum
    stays finite, as in torch's own, on every backend (found by hypothesis: it was rounded to float32 per sample)."""
    x = torch.tensor([[-3.4e38, 0.0], [0.0, 0.0]], dtype=torch.float32)
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    w = torch.tensor([3.0, 0.0], dtype=torch.float64)
    theirs = torch.nn.functional.multilabel_soft_margin_loss(x, y, w, reduction=reduction)
    ours = st.multilabel_soft_margin_loss(x, y, w, reduction=reduction)
    assert ours.dtype == theirs.dtype == torch.float64 and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=0)

