"""softmargin.numpy against the independent float64 reference, torch-free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import RTOL, SEED_LABELS, SEED_LOGITS, SEED_WEIGHTS, assert_close, reference_grad, reference_loss

from softmargin.numpy import (
    multilabel_soft_margin_loss,
    multilabel_soft_margin_loss_and_grad,
    multilabel_soft_margin_loss_grad,
)

SHAPES = [(3,), (1, 1), (5, 7), (2, 3, 4), (4, 1, 3, 2), (300, 257)]


def test_seed_example():
    x = np.array(SEED_LOGITS, dtype=np.float32)
    y = np.array(SEED_LABELS, dtype=np.float32)
    assert abs(float(multilabel_soft_margin_loss(x, y, weight=SEED_WEIGHTS)) - 1.18012) < 1e-5
    # and to 1e-6 of the exact value the seed's 1.18012 rounds
    assert abs(float(multilabel_soft_margin_loss(x.astype(np.float64), y, SEED_WEIGHTS)) - 1.1801210) < 1e-6


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [None, "class", "full"])
def test_matches_reference(shape, reduction, dtype, weighted, rng):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    y = (rng.random(shape) < 0.3).astype(dtype)
    w = None
    if weighted == "class":
        w = rng.random(shape[-1]) * 2
    elif weighted == "full":
        w = rng.random(shape) * 2
    rtol = RTOL[np.dtype(dtype).name]
    loss = multilabel_soft_margin_loss(x, y, w, reduction)
    grad = multilabel_soft_margin_loss_grad(x, y, w, reduction)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype and grad.shape == x.shape
    assert np.shape(loss) == (shape[:-1] if reduction == "none" else ())
    assert_close(loss, reference_loss(x, y, w, reduction), rtol, "loss")
    assert_close(grad, reference_grad(x, y, w, reduction), rtol, "grad")
    both = multilabel_soft_margin_loss_and_grad(x, y, w, reduction)
    np.testing.assert_array_equal(both[0], loss)
    np.testing.assert_array_equal(both[1], grad)


def test_gradient_matches_finite_differences(rng):
    x = rng.standard_normal((3, 5))
    y = rng.random((3, 5))
    w = rng.random(5) + 0.5
    grad = multilabel_soft_margin_loss_grad(x, y, w)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        numeric[i] = (multilabel_soft_margin_loss(x + step, y, w) - multilabel_soft_margin_loss(x - step, y, w)) / (2 * eps)
    assert_close(grad, numeric, 1e-7, "finite differences")


def test_chunking_is_invisible_and_deterministic(rng, monkeypatch):
    import softmargin.numpy as snp

    x = rng.standard_normal((1000, 37))
    y = rng.random((1000, 37))
    whole = multilabel_soft_margin_loss_and_grad(x, y, reduction="none")
    monkeypatch.setattr(snp, "CHUNK_ELEMENTS", 100)  # 2 rows a chunk
    chunked = multilabel_soft_margin_loss_and_grad(x, y, reduction="none")
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])
    again = multilabel_soft_margin_loss_and_grad(x, y, reduction="none")
    np.testing.assert_array_equal(chunked[1], again[1])


def test_empty_batch_like_torch():
    x = np.zeros((0, 3), dtype=np.float32)
    assert np.isnan(multilabel_soft_margin_loss(x, x))
    assert multilabel_soft_margin_loss(x, x, reduction="sum") == 0
    assert multilabel_soft_margin_loss(x, x, reduction="none").shape == (0,)
    assert multilabel_soft_margin_loss_grad(x, x).shape == (0, 3)


def test_nan_logit_propagates():
    x = np.array([[np.nan, 0.0]], dtype=np.float32)
    y = np.array([[1.0, 0.0]], dtype=np.float32)
    assert np.isnan(multilabel_soft_margin_loss(x, y))
    assert np.isnan(multilabel_soft_margin_loss_grad(x, y)[0, 0])


def test_accepts_lists_and_int_targets():
    loss = multilabel_soft_margin_loss(SEED_LOGITS, SEED_LABELS, SEED_WEIGHTS)
    assert abs(float(loss) - 1.1801210) < 1e-6


def test_numpy_path_never_imports_torch():
    code = (
        "import sys, softmargin, softmargin.numpy as s; "
        "s.multilabel_soft_margin_loss([[1.0, 2.0]], [[0, 1]]); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------------------------
# out=: the results written into the caller's arrays


@pytest.fixture(params=["native", "chunked"])
def numpy_path(request, monkeypatch):
    """The fused kernel (where built) and the chunked NumPy code (the kernel monkeypatched away)."""
    from softmargin.kernels import cpu

    if request.param == "chunked":
        monkeypatch.setattr(cpu, "kernel", lambda: None)
    elif cpu.kernel() is None:
        pytest.skip("no CPU kernel built here")
    return request.param


def _distilled(target_dtype, seed=0):
    """float16 student logits near a teacher's, the teacher's sigmoid as the soft target (float32 or float64): where
    sigmoid(x) is near y the gradient sigmoid(x) - y is small, and y rounded to float16's 11 bits moves it by more
    than itself."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((32, 520)) * 4  # a block of 512 and a tail
    x = (teacher + 0.3 * rng.standard_normal(teacher.shape)).astype(np.float16)
    return x, (1 / (1 + np.exp(-teacher))).astype(target_dtype)


@pytest.mark.parametrize("target_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_float16_logits_read_a_finer_soft_target_unrounded(numpy_path, target_dtype, reduction):
    """A float32 or float64 soft target with float16 logits is not rounded to float16 first (the kernel reads
    float32): each gradient element within one unit in its last place of the float64 reference plus float32's own
    rounding of sigmoid(x) - y (rounded to float16 first, most were more than one unit off); the float16 loss within
    one unit of its last place (its own rounding, 5e-4, hides the target's, 1e-4)."""
    x, y = _distilled(target_dtype)
    out = (np.empty(32 if reduction == "none" else (), np.float16), np.empty_like(x))
    loss, grad = multilabel_soft_margin_loss_and_grad(x, y, reduction=reduction, out=out)
    assert loss.dtype == grad.dtype == np.float16
    exact_loss, exact_grad = reference_loss(x, y, None, reduction), reference_grad(x, y, None, reduction)
    eps = np.finfo(np.float16).eps
    assert np.all(np.abs(loss - exact_loss) <= eps * np.abs(exact_loss))
    bound = eps * np.abs(exact_grad) + 16 * 2.0**-24 * np.abs(exact_grad).max() + eps * np.finfo(np.float16).tiny
    excess = np.abs(grad - exact_grad) / bound
    assert excess.max() <= 1, f"gradient {excess.max():.3g} times its bound"
    assert np.array_equal(multilabel_soft_margin_loss_and_grad(x, y, reduction=reduction)[1], grad)  # out= or not


@pytest.mark.parametrize("target_dtype", [np.float32, np.float64])
def test_float16_logits_with_a_hard_finer_target_give_the_float16_targets_bits(numpy_path, target_dtype):
    x, soft = _distilled(target_dtype)
    y = (soft > 0.5).astype(target_dtype)
    for kwargs in ({}, {"pos_weight": np.full(520, 2.0)}, {"label_smoothing": 0.1, "reduction": "none"}):
        ours, theirs = (multilabel_soft_margin_loss_and_grad(x, t, **kwargs) for t in (y, y.astype(np.float16)))
        assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])


@pytest.mark.parametrize(("shape", "reduction"), [((5, 7), "mean"), ((2, 3, 4), "none"), ((300, 257), "sum"), ((0, 3), "sum")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_receives_loss_and_gradient(numpy_path, shape, reduction, dtype, rng):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    y = (rng.random(shape) < 0.3).astype(dtype)
    w = rng.random(shape[-1]) * 2
    loss_out = np.full(shape[:-1] if reduction == "none" else (), np.nan, dtype)
    grad_out = np.full(shape, np.nan, dtype)
    loss, grad = multilabel_soft_margin_loss_and_grad(x, y, w, reduction, out=(loss_out, grad_out))
    assert loss is loss_out and grad is grad_out
    rtol = RTOL[np.dtype(dtype).name]
    assert_close(loss_out, reference_loss(x, y, w, reduction), rtol, "loss")
    assert_close(grad_out, reference_grad(x, y, w, reduction), rtol, "grad")
    expected = multilabel_soft_margin_loss_and_grad(x, y, w, reduction)  # bitwise what the call without out= gives
    np.testing.assert_array_equal(loss_out, expected[0])
    np.testing.assert_array_equal(grad_out, expected[1])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pos_weight": "class", "label_smoothing": 0.1},
        {"mask": "full", "reduction": "none"},
        {"gamma_pos": 1.0, "gamma_neg": 4.0, "clip": 0.05},
        {"sparse": True},
    ],
)
def test_out_with_options_and_sparse_targets(numpy_path, kwargs, rng):
    kwargs = dict(kwargs)
    x = rng.standard_normal((6, 9)).astype(np.float32)
    y: object = (rng.random((6, 9)) < 0.3).astype(np.float32)
    if kwargs.pop("sparse", False):
        dense = np.asarray(y)
        y = (np.concatenate([[0], np.cumsum(dense.sum(1))]).astype(np.int64), np.nonzero(dense)[1])
    if kwargs.get("pos_weight") == "class":
        kwargs["pos_weight"] = rng.random(9) + 0.5
    if kwargs.get("mask") == "full":
        kwargs["mask"] = rng.random((6, 9)) < 0.7
    expected = multilabel_soft_margin_loss_and_grad(x, y, **kwargs)
    grad_out = np.empty_like(x)
    loss, grad = multilabel_soft_margin_loss_and_grad(x, y, **kwargs, out=(None, grad_out))
    assert grad is grad_out
    np.testing.assert_array_equal(loss, expected[0])
    np.testing.assert_array_equal(grad_out, expected[1])


def test_out_loss_only_and_grad_function(numpy_path, rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    y = (rng.random((4, 5)) < 0.5).astype(np.float32)
    loss_out = np.empty((), np.float32)
    loss, grad = multilabel_soft_margin_loss_and_grad(x, y, out=(loss_out, None))
    assert loss is loss_out and grad.shape == x.shape
    assert_close(loss_out, reference_loss(x, y), RTOL["float32"], "loss")
    grad_out = np.empty_like(x)
    assert multilabel_soft_margin_loss_grad(x, y, out=grad_out) is grad_out
    assert_close(grad_out, reference_grad(x, y), RTOL["float32"], "grad")


def _bad_outs(x, y, w):
    """(out, exception, message) for each way out= can be wrong."""
    grad = np.empty_like(x)
    return [
        (grad, TypeError, r"out is a ndarray: expected a tuple \(loss, gradient\)"),
        ((grad,), TypeError, r"out is a tuple of length 1: expected a tuple \(loss, gradient\)"),
        ((None, grad.tolist()), TypeError, r"out\[1\] \(the gradient\) is a list: expected a NumPy array"),
        ((None, grad.astype(np.float64)), TypeError, r"out\[1\] \(the gradient\).dtype == float64, expected float32"),
        ((np.empty((), np.float16), None), TypeError, r"out\[0\] \(the loss\).dtype == float16, expected float32"),
        ((None, np.empty((4, 6), np.float32)), ValueError, r"out\[1\] \(the gradient\).shape == \(4, 6\), expected \(4, 5\)"),
        ((np.empty((4,), np.float32), None), ValueError, r"out\[0\] \(the loss\).shape == \(4,\), expected \(\)"),
        ((None, np.broadcast_to(np.float32(0), x.shape)), ValueError, r"out\[1\] \(the gradient\) is read-only"),
        ((None, np.empty((5, 4), np.float32).T), ValueError, r"out\[1\] \(the gradient\) is not C-contiguous"),
        ((None, np.empty((4, 10), np.float32)[:, ::2]), ValueError, r"not C-contiguous"),
        ((None, x), ValueError, r"out\[1\] \(the gradient\) shares memory with input"),
        ((None, y), ValueError, r"out\[1\] \(the gradient\) shares memory with target"),
        ((w.reshape(()) if w.size == 1 else w[:1].reshape(()), None), ValueError, r"out\[0\] \(the loss\) shares memory with weight"),
        ((grad[0, 0], grad), TypeError, r"out\[0\] \(the loss\) is a float32: expected a NumPy array"),
        ((grad[0, :1].reshape(()), grad), ValueError, r"out\[1\] \(the gradient\) shares memory with out\[0\] \(the loss\)"),
    ]


@pytest.mark.parametrize("case", range(15))
def test_bad_out_is_refused_before_anything_is_written(numpy_path, case, rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    y = (rng.random((4, 5)) < 0.5).astype(np.float32)
    w = (rng.random(5) + 0.5).astype(np.float32)
    cases = _bad_outs(x, y, w)
    assert len(cases) == 15
    out, error, message = cases[case]
    before = [None if a is None else np.array(a, copy=True) for a in (out if isinstance(out, tuple) else (out,))]
    snapshot = (x.copy(), y.copy(), w.copy())
    with pytest.raises(error, match=message):
        multilabel_soft_margin_loss_and_grad(x, y, w, out=out)
    after = [None if a is None else np.asarray(a) for a in (out if isinstance(out, tuple) else (out,))]
    for b, a in zip(before, after):
        if b is not None and isinstance(a, np.ndarray) and a.shape == b.shape:
            np.testing.assert_array_equal(a, b)  # nothing written
    for original, now in zip(snapshot, (x, y, w)):
        np.testing.assert_array_equal(original, now)


def test_bad_out_of_the_gradient_function_names_out(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"out\[1\] \(the gradient\).shape == \(3, 2\), expected \(2, 3\)"):
        multilabel_soft_margin_loss_grad(x, np.zeros_like(x), out=np.empty((3, 2), np.float32))


@pytest.mark.parametrize("dtype", ["f2", "f4", "f8"])
def test_big_endian_arrays_are_read_as_numbers(dtype, rng):
    """Big-endian logits (from a file written on another machine, FITS, some HDF5) went to the kernel as raw bytes:
    a loss of 7.5e36 where the value is 0.72. Every operand in a non-native byte order is now read in native order
    (one copy); the results equal those of the native arrays, and the gradient comes back native."""
    x = rng.standard_normal((6, 9)).astype(dtype)
    y = (rng.random((6, 9)) < 0.4).astype(dtype)
    w, pw = rng.random(9) + 0.5, rng.random(9) + 0.5
    swapped = lambda a: a.astype(a.dtype.newbyteorder(">" if np.little_endian else "<"))
    expected = multilabel_soft_margin_loss_and_grad(x, y, weight=w, pos_weight=pw)
    loss, grad = multilabel_soft_margin_loss_and_grad(swapped(x), swapped(y), weight=swapped(w), pos_weight=swapped(pw))
    assert not swapped(x).dtype.isnative and grad.dtype.isnative and grad.dtype == x.dtype
    assert loss == expected[0]
    np.testing.assert_array_equal(grad, expected[1])
    # and against the independent float64 reference (no pos_weight there)
    assert_close(multilabel_soft_margin_loss(swapped(x), swapped(y), weight=swapped(w)), reference_loss(x, y, w), RTOL[x.dtype.name])


# --- from a hostile review (session 14) ----------------------------------------------------------------------------


def test_a_masked_array_is_refused_not_read_without_its_mask():
    x = np.ma.masked_array([[0.5, -1.0, 3.0]], mask=[[False, True, False]])
    y = np.array([[1.0, 0.0, 1.0]])
    with pytest.raises(TypeError, match=r"input is a NumPy masked array: its mask would be ignored.*mask="):
        multilabel_soft_margin_loss(x, y)
    with pytest.raises(TypeError, match=r"target is a NumPy masked array"):
        multilabel_soft_margin_loss(x.data, np.ma.masked_array(y, mask=x.mask))


def test_an_array_option_is_named():
    x, y = np.zeros((2, 3)), np.ones((2, 3))
    with pytest.raises(TypeError, match=r"gamma_neg=array\(\[1\., 2\.\]\) is a ndarray: expected a float"):
        multilabel_soft_margin_loss(x, y, gamma_neg=np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"gamma_neg=array\(2\.\) is a ndarray: expected a float"):  # 0-d: as before
        multilabel_soft_margin_loss(x, y, gamma_neg=np.array(2.0))


def test_bfloat16_from_ml_dtypes_is_named():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.zeros((2, 3)).astype(ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match=r"input has dtype bfloat16 \(ml_dtypes\).*astype\(np\.float32\)"):
        multilabel_soft_margin_loss(x, np.ones((2, 3)))


@pytest.mark.parametrize("name", ["weight", "pos_weight"])
def test_a_float64_weight_in_float32s_subnormal_range_is_not_rounded(name):
    """The kernel reads a weight in float32 for float32 input: 1e-44 became 9.8e-45 (2 % off); such weights go to
    the float64 path, as those beyond float32's range already did."""
    x, y = np.array([[-1e30]], np.float32), np.array([[1.0]], np.float32)
    for value in (1e-44, 1e-42, 1e-40):
        loss = multilabel_soft_margin_loss(x, y, **{name: np.array([value])})
        np.testing.assert_allclose(float(loss), value * 1e30, rtol=1e-6)


def test_the_and_grad_function_is_exported():
    import softmargin.numpy as snp

    assert "multilabel_soft_margin_loss_and_grad" in snp.__all__



@pytest.mark.parametrize(("target", "error", "message"), [
    # the imaginary parts were dropped (the real parts used as the target): a dense complex target is refused
    ("scipy complex", TypeError, r"sparse target has values of dtype complex128: expected a real"),
    ((np.array([0, 1, 2]), np.array([2, 3]), np.array([0.5, 0.25 + 1j])), TypeError,
     r"sparse target has values of dtype complex128: expected a real"),
    ((np.array([0, 1, 2]), np.array([2, 3]), np.array(["a", "b"])), TypeError,
     r"sparse target has values of dtype <U1: expected a real"),
    # an (nnz, 1) column of values: the kernel read it as the values, the chunked path failed in NumPy's indexing
    ((np.array([0, 1, 2]), np.array([2, 3]), np.array([[0.5], [0.25]])), ValueError,
     r"sparse target: values has shape \(2, 1\): expected one dimension"),
    ((np.array([0, 1, 2]), np.array([[2], [3]])), ValueError, r"sparse target: indices has shape \(2, 1\): expected one dimension"),
])  # fmt: skip
def test_a_sparse_target_of_complex_or_non_1d_values_is_refused(numpy_path, target, error, message):
    if isinstance(target, str):
        sparse = pytest.importorskip("scipy.sparse")
        target = sparse.csr_matrix(np.array([[0, 0, 0.5 + 0.5j, 0, 0], [0, 0, 0, 0.25, 0]]))
    x = np.linspace(-2, 2, 10).reshape(2, 5)
    with pytest.raises(error, match=message):
        multilabel_soft_margin_loss_and_grad(x, target)
