"""softmargin.numpy on the fused C kernel: against the chunked NumPy code (the kernel monkeypatched away) and the
float64/mpmath references, for every dtype, option and target form; thread counts; the arrays NumPy users pass."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_close, exact_element_loss, reference_loss

import softmargin.numpy as snp
from softmargin.kernels import cpu

pytestmark = pytest.mark.skipif(cpu.kernel() is None, reason="no CPU kernel built here")


def _both(monkeypatch, *args, **kwargs):
    """(loss, grad) from the kernel and from the chunked NumPy code."""
    native = snp.multilabel_soft_margin_loss_and_grad(*args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(cpu, "kernel", lambda: None)
        chunked = snp.multilabel_soft_margin_loss_and_grad(*args, **kwargs)
    return native, chunked


def test_the_kernel_runs(monkeypatch):
    calls = []
    real = cpu.fused
    monkeypatch.setattr(cpu, "fused", lambda *a, **k: calls.append(a[:2]) or real(*a, **k))
    snp.multilabel_soft_margin_loss(np.zeros((2, 3), np.float16), np.zeros((2, 3), bool))
    assert calls == [("float16", "uint8")]


OPTIONS = [
    {},
    {"weight": "class"},
    {"weight": "full", "reduction": "sum"},
    {"pos_weight": "class"},
    {"mask": "full"},
    {"mask": "class", "reduction": "none"},
    {"label_smoothing": 0.1},
    {"gamma_pos": 2.0, "gamma_neg": 2.0},
    {"gamma_pos": 1.0, "gamma_neg": 4.0, "clip": 0.05, "pos_weight": "full", "mask": "full"},
]
TOLERANCE = {"float16": (1e-3, 2**-10), "float32": (1e-6, 1e-6), "float64": (1e-12, 1e-12)}  # loss, gradient


def _problem(dtype, case, target, shape=(37, 530), seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 6).astype(dtype)
    x[0, :2] = [np.inf, -np.inf]
    probabilities = rng.random(shape)
    probabilities[0, :2] = [1.0, 0.0]  # right predictions at infinity: loss 0 (a wrong one is inf)
    hard = probabilities > 0.7
    y = {"soft": probabilities.astype(dtype), "same": hard.astype(dtype), "bool": hard, "uint8": hard.astype(np.uint8),
         "int64": hard.astype(np.int64), "other float": hard.astype(np.float32 if dtype == np.float64 else np.float64),
         "label lists": tuple(np.flatnonzero(row) for row in hard)}[target]  # fmt: skip
    if target == "label lists":  # (indptr, indices): the CSR form of the NumPy API
        y = (np.concatenate([[0], np.cumsum([len(r) for r in y])]), np.concatenate(y))
    kwargs = dict(case)
    for name in ("weight", "pos_weight"):
        if name in kwargs:
            kwargs[name] = rng.random(shape[-1] if kwargs[name] == "class" else shape) + 0.25
    if "mask" in kwargs:
        kwargs["mask"] = rng.random(shape[-1] if kwargs["mask"] == "class" else shape) < 0.8
        if kwargs["mask"].ndim == 2:
            kwargs["mask"][1] = False  # a sample with nothing observed
    return x, y, kwargs


@pytest.mark.parametrize("case", range(len(OPTIONS)))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("target", ["same", "soft", "bool", "uint8", "int64", "other float", "label lists"])
def test_kernel_matches_chunked_numpy(monkeypatch, case, dtype, target):
    x, y, kwargs = _problem(dtype, OPTIONS[case], target)
    kwargs.setdefault("reduction", "mean")
    (loss, grad), (ref_loss, ref_grad) = _both(monkeypatch, x, y, **kwargs)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype and grad.shape == x.shape
    loss_rtol, grad_rtol = TOLERANCE[np.dtype(dtype).name]
    _close(loss, ref_loss, loss_rtol, "loss")
    _close(grad, ref_grad, grad_rtol, "grad", atol=np.finfo(dtype).smallest_subnormal if dtype == np.float16 else 0.0)


def _close(actual, expected, rtol, what, atol=0.0):
    """Infinities and NaNs at the same places (a wrong prediction at infinity costs inf), the rest within rtol."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected), err_msg=what)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=what)
    finite = np.isfinite(expected)
    assert_close(actual[finite], expected[finite], rtol, what, atol=atol)


def test_scipy_sparse_targets_with_values(monkeypatch):
    sparse = pytest.importorskip("scipy.sparse")
    x, y, _ = _problem(np.float32, {}, "soft")
    y[y < 0.7] = 0
    (loss, grad), (ref_loss, ref_grad) = _both(monkeypatch, x, sparse.csr_matrix(y), reduction="none", label_smoothing=0.1)
    _close(loss, ref_loss, 1e-6, "loss")
    _close(grad, ref_grad, 1e-6, "grad")
    dense = snp.multilabel_soft_margin_loss(x, y, reduction="none", label_smoothing=0.1)
    np.testing.assert_array_equal(loss, dense)  # the same kernel rows, dense or sparse


def test_float32_per_sample_loss_within_2e7_of_mpmath():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal((6, 40)) * 3, rng.standard_normal((2, 40)) * 30]).astype(np.float32)
    y = (rng.random(x.shape) < 0.5).astype(np.float32)
    loss = snp.multilabel_soft_margin_loss(x, y, reduction="none")
    exact = np.array([np.mean([exact_element_loss(float(a), float(b)) for a, b in zip(xr, yr)]) for xr, yr in zip(x, y)])
    rel = np.abs(loss.astype(np.float64) - exact) / exact
    # the result is rounded to float32 (2^-24 = 6e-8) after the kernel's float64 row sum
    assert rel.max() <= 2e-7, rel.max()


def _exact_focused(x, y, gamma_pos, gamma_neg):
    """mpmath, 40 digits: -(y (1 - p)^gp log p + (1 - y) p^gn log(1 - p)), p = sigmoid(x), hard y."""
    mpmath = pytest.importorskip("mpmath")

    with mpmath.workdps(40):
        p = 1 / (1 + mpmath.exp(-mpmath.mpf(float(x))))
        return float(-((1 - p) ** gamma_pos * mpmath.log(p) if y else p**gamma_neg * mpmath.log(1 - p)))


@pytest.mark.parametrize(("gamma_pos", "gamma_neg"), [(2.0, 2.0), (4.0, 0.0), (1.0, 4.0)])
def test_float32_focused_element_loss_within_3e6_of_mpmath(gamma_pos, gamma_neg):
    # the documented bound with focusing (no clip); one element per row, so the row's loss is the element's
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(300) * 8, rng.uniform(-30, 30, 300)]).astype(np.float32)[:, None]
    y = (rng.random(x.shape) < 0.5).astype(np.float32)
    loss = snp.multilabel_soft_margin_loss(x, y, gamma_pos=gamma_pos, gamma_neg=gamma_neg, reduction="none")
    exact = np.array([_exact_focused(a, b, gamma_pos, gamma_neg) for a, b in zip(x[:, 0], y[:, 0])])
    keep = exact > 1e-30  # below, float32 underflows by design
    rel = np.abs(loss.astype(np.float64)[keep] - exact[keep]) / exact[keep]
    assert rel.max() <= 3e-6, rel.max()


def test_float64_matches_the_float64_reference():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 300)) * 8
    y = rng.random((50, 300))
    w = rng.random(300)
    assert_close(snp.multilabel_soft_margin_loss(x, y, w, "none"), reference_loss(x, y, w, "none"), 1e-12, "loss")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("options", [{}, {"gamma_neg": 2.0, "mask": True}])
def test_bitwise_the_same_for_1_2_3_threads(monkeypatch, dtype, options):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 2000)).astype(dtype)
    y = rng.random((300, 2000)).astype(dtype)
    if options.get("mask"):
        options = dict(options, mask=rng.random((300, 2000)) < 0.9)
    results = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("SOFTMARGIN_NUM_THREADS", threads)
        results.append(snp.multilabel_soft_margin_loss_and_grad(x, y, reduction="none", **options))
    for loss, grad in results[1:]:
        np.testing.assert_array_equal(loss, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])


def test_num_threads_setting(monkeypatch):
    monkeypatch.setenv("SOFTMARGIN_NUM_THREADS", "3")
    assert snp.num_threads() == 3
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv("SOFTMARGIN_NUM_THREADS", bad)
        with pytest.raises(ValueError, match="SOFTMARGIN_NUM_THREADS.*positive integer"):
            snp.num_threads()
    monkeypatch.delenv("SOFTMARGIN_NUM_THREADS")
    assert snp.num_threads() >= 1


_FORKED_POOL = """
import multiprocessing, sys
import numpy as np
import softmargin.numpy as snp
rng = np.random.default_rng(9)
dtypes = (np.float32, np.float16, np.float64)
problems = [(rng.standard_normal((400, 300)).astype(dtype), rng.random((400, 300)) < 0.3) for dtype in dtypes]
options = [{}, {"pos_weight": np.full(300, 2.0)}, {"mask": rng.random((400, 300)) < 0.8}]
def loss_and_grad(i):
    x, y = problems[i % 3]
    loss, grad = snp.multilabel_soft_margin_loss_and_grad(x, y, reduction="none", **options[i // 3])
    return loss.tobytes() + grad.tobytes()
if __name__ == "__main__":
    expected = [loss_and_grad(i) for i in range(9)]  # on 2 threads: the parent's thread pool exists now
    with multiprocessing.get_context("fork").Pool(2) as pool:
        try:
            found = pool.map_async(loss_and_grad, range(9)).get(timeout=30)
        except multiprocessing.TimeoutError:
            sys.exit("the forked children hung (no result in 30 s)")
    sys.exit(0 if found == expected else "the forked children's results differ")
"""


def test_a_forked_child_computes_without_hanging(tmp_path):
    """A process forked after the kernel ran on several threads (``multiprocessing``'s fork start method, Linux's
    default up to Python 3.14) inherits a libgomp thread pool whose threads it does not have: each child hung in its
    first kernel call (the pool's map timed out). The kernel runs there on threads of its own, bitwise the same."""
    script = tmp_path / "forked_pool.py"
    script.write_text(_FORKED_POOL)
    env = {**os.environ, "SOFTMARGIN_NUM_THREADS": "2"}  # 400 x 300 elements: 2 threads (csrc/threads.h)
    done = subprocess.run([sys.executable, str(script)], env=env, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_arrays_numpy_users_pass(tmp_path):
    """Fortran-ordered, strided, read-only and memory-mapped arrays, float16 and Python lists: the same results as
    the contiguous arrays (the kernel reads a contiguous copy where it must, never writes an input)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((40, 70)).astype(np.float32)
    y = (rng.random((40, 70)) < 0.4).astype(np.float32)
    w = rng.random(70).astype(np.float32)
    expected = snp.multilabel_soft_margin_loss_and_grad(x, y, w, "none")

    def same(xa, ya, wa=w):
        loss, grad = snp.multilabel_soft_margin_loss_and_grad(xa, ya, wa, "none")
        np.testing.assert_array_equal(loss, expected[0])
        np.testing.assert_array_equal(grad, expected[1])

    same(np.asfortranarray(x), np.asfortranarray(y))
    wide_x, wide_y = np.zeros((40, 140), np.float32), np.zeros((80, 70), np.float32)
    wide_x[:, ::2], wide_y[::2] = x, y
    same(wide_x[:, ::2], wide_y[::2], np.repeat(w, 2)[::2])
    read_only = [a.copy() for a in (x, y, w)]
    for a in read_only:
        a.setflags(write=False)
    same(*read_only)
    files = []
    for name, a in (("x", x), ("y", y)):
        mm = np.memmap(tmp_path / name, dtype=a.dtype, mode="w+", shape=a.shape)
        mm[:] = a
        mm.flush()
        files.append(np.memmap(tmp_path / name, dtype=a.dtype, mode="r", shape=a.shape))
    same(*files)
    # Python lists become float64 arrays: the float64 kernel, to the float64 reference
    loss = snp.multilabel_soft_margin_loss(x.astype(np.float64).tolist(), y.tolist(), w.tolist(), "none")
    assert_close(loss, reference_loss(x, y, w, "none"), 1e-12, "lists (float64)")
    half = snp.multilabel_soft_margin_loss(x.astype(np.float16), y, w, "none")
    assert half.dtype == np.float16
    assert_close(half.astype(np.float64), reference_loss(x.astype(np.float16), y, w, "none"), 1e-3, "float16")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("options", [{}, {"pos_weight": np.ones(600)}])
@pytest.mark.parametrize("bad", [1.5, -0.25, np.nan])
def test_bad_target_same_message_on_both_paths(monkeypatch, dtype, options, bad):
    x = np.zeros((6, 600), dtype)
    y = np.zeros((6, 600), dtype)
    y[4, 550] = bad
    messages = []
    for kernel in (cpu.kernel, lambda: None):
        monkeypatch.setattr(cpu, "kernel", kernel)
        with pytest.raises(ValueError, match=r"target.*\(4, 550\)") as info:
            snp.multilabel_soft_margin_loss(x, y, **options)
        messages.append(str(info.value))
        snp.multilabel_soft_margin_loss(x, y, validate=False, **options)  # no check, no error
    assert messages[0] == messages[1]


def test_numpy_kernel_path_never_imports_torch():
    code = (
        "import sys, numpy as np, softmargin.numpy as s; from softmargin.kernels import cpu; "
        "assert cpu.kernel() is not None; "
        "s.multilabel_soft_margin_loss_and_grad(np.zeros((3, 4), np.float32), np.zeros((3, 4)), gamma_neg=2.0); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["weight", "pos_weight"])
@pytest.mark.parametrize("value", [1e39, 1e-50])
def test_a_float64_weight_beyond_float32_is_not_rounded_by_the_kernel(monkeypatch, name, value):
    # the kernel reads weights in float32 for a float32 input: 1e39 would become inf, 1e-50 would become 0
    x = np.array([[0.5, -1.0, 3.0, 0.0]], np.float32)
    y = np.array([[1, 0, 1, 0]], np.float32)
    weights = np.array([1.0, value, 1.0, 1.0])
    loss, grad = snp.multilabel_soft_margin_loss_and_grad(x, y, reduction="sum", **{name: weights})
    element = np.vectorize(exact_element_loss)(x.astype(np.float64), y.astype(np.float64))  # mpmath, per element
    if name == "pos_weight":
        element = np.where(y == 1, weights * element, element)
    else:
        element = weights * element
    assert np.isfinite(loss) and loss == pytest.approx(element.sum() / 4, rel=1e-6)
    (native_loss, native_grad), (chunked_loss, chunked_grad) = _both(monkeypatch, x, y, reduction="sum", **{name: weights})
    assert native_loss == chunked_loss and np.array_equal(native_grad, chunked_grad)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("options", [{}, {"gamma_pos": 1.0, "gamma_neg": 2.0}, {"mask": "full"}, {"weight": 2.0}])
def test_pos_weight_times_the_positive_term_beyond_float32(options):
    """The kernel forms y * pw * softplus(-x) in float32: beyond float32's range (x = -3e38, pw = 10) it was inf where
    the sample's loss, a mean over the labels, is not (3e37); the rows it overflows are redone in float64. Rows with
    an infinite logit keep their true inf, the gradient is finite, and the other rows are untouched."""
    xmin, pw_value = -3e38, 10.0
    x = np.zeros((4, 100), np.float32)
    y = np.zeros((4, 100), np.float32)
    x[1, 0], x[3, 0], x[2, 5] = xmin, xmin, -np.inf
    y[1, 0], y[3, 0], y[2, 5] = 1.0, 1.0, 1.0
    pw = np.full(100, pw_value, np.float32)
    kwargs = {k: v for k, v in options.items() if k not in ("mask", "weight")}
    mask = np.ones((4, 100), bool)
    if "mask" in options:
        mask[1, 50:] = False
        kwargs["mask"] = mask
    weight = options.get("weight", 1.0)
    if "weight" in options:
        kwargs["weight"] = np.full(100, weight, np.float32)
    loss, grad = snp.multilabel_soft_margin_loss_and_grad(x, y, reduction="none", pos_weight=pw, **kwargs)
    # the float64 reference, per element; with focusing (1 - p)^g+ = 1 at x -> -inf and p^g- = 2^-g- at x = 0
    x64 = x.astype(np.float64)
    gp, gn = options.get("gamma_pos", 0.0), options.get("gamma_neg", 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        p = 1 / (1 + np.exp(-x64))
        element = np.where(y == 1, pw * (1 - p) ** gp * np.logaddexp(0, -x64), p**gn * np.logaddexp(0, x64))
    expected = (weight * element * mask).sum(1) / mask.sum(1)
    assert np.isinf(loss[2]) and np.all(np.isfinite(loss[[0, 1, 3]])), loss
    assert_close(loss[[0, 1, 3]], expected[[0, 1, 3]], 1e-6, "loss")
    assert np.all(np.isfinite(grad))


PER_ROW = {
    "(N, 1) weight": lambda n, c, r: dict(weight=(r.random((n, 1)) + 0.5).astype(np.float32)),
    "(N, 1) weight with zeros": lambda n, c, r: dict(weight=np.where(np.arange(n)[:, None] % 3 == 0, 0.0, r.random((n, 1))).astype(np.float32)),
    "broadcast (C,) weight": lambda n, c, r: dict(weight=np.broadcast_to((r.random(c) + 0.5).astype(np.float32), (n, c))),
    "(N, 1) mask": lambda n, c, r: dict(mask=r.random((n, 1)) < 0.6),
    "(N, 1) mask, (N, 1) weight, options": lambda n, c, r: dict(
        mask=r.random((n, 1)) < 0.6, weight=(r.random((n, 1)) + 0.5).astype(np.float32), gamma_neg=2.0,
        pos_weight=np.float32(3.0), label_smoothing=0.1),
    "broadcast (C,) mask": lambda n, c, r: dict(mask=np.broadcast_to(r.random(c) < 0.6, (n, c))),
}


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", list(PER_ROW))
def test_per_row_and_broadcast_operands_are_not_made_dense(monkeypatch, case, reduction):
    """An (N, 1) weight or mask, or a (C,) one broadcast to (N, C): the kernel takes row steps 0 or C only, and such
    an operand was copied dense (a logits-sized weight); now a per-row one scales each row's sum and gradient and a
    broadcast row is read as one row. The same values as the chunked NumPy code and the float64 reference (an
    infinite logit in a zero-weight or masked-out row adds nothing), and no temporary beyond the gradient."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n, c = 64, 3000
    x = rng.standard_normal((n, c)).astype(np.float32)
    y = (rng.random((n, c)) < 0.2).astype(np.float32)
    kwargs = PER_ROW[case](n, c, rng)
    # an infinite logit where the weight is 0 or the label is missing
    if case == "broadcast (C,) mask":
        x[0, int(np.flatnonzero(~kwargs["mask"][0])[0])] = np.inf
    elif "mask" in kwargs:
        kwargs["mask"][0] = False
        x[0, 7] = np.inf
    elif "zeros" in case:
        x[0, 7] = np.inf
    (loss, grad), (chunked_loss, chunked_grad) = _both(monkeypatch, x, y, reduction=reduction, **kwargs)
    assert_close(loss, chunked_loss, 1e-6, "loss")
    assert_close(np.where(np.isfinite(grad), grad, 0), np.where(np.isfinite(chunked_grad), chunked_grad, 0), 1e-6, "grad")
    assert np.array_equal(np.isnan(grad), np.isnan(chunked_grad))
    plain = {k: v for k, v in kwargs.items() if k in ("weight", "mask")}
    if len(plain) == len(kwargs):  # the float64 definition
        w = np.broadcast_to(np.asarray(plain.get("weight", 1.0), np.float64), (n, c))
        m = np.broadcast_to(np.asarray(plain.get("mask", True)), (n, c))
        with np.errstate(invalid="ignore"):
            element = np.where(m & (w != 0), w * (np.logaddexp(0, x.astype(np.float64)) - y * x), 0.0)
        per_sample = np.where(m.sum(1) > 0, element.sum(1) / np.maximum(m.sum(1), 1), 0.0)
        expected = per_sample if reduction == "none" else per_sample.sum() / max((m.sum(1) > 0).sum(), 1)
        assert_close(loss, expected, 1e-6, "reference")
    tracemalloc.start()
    try:
        snp.multilabel_soft_margin_loss(x, y, reduction=reduction, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes / 8, f"{peak / x.nbytes:.2f}x the logits for the loss alone"


@pytest.mark.parametrize("path", ["kernel", "chunked"])
@pytest.mark.parametrize("dtype,clip", [(np.float32, 1e-8), (np.float32, 1e-7), (np.float64, 1e-17), (np.float64, 1e-9)])
def test_a_small_clip_is_not_lost_as_p_rounds_to_one(path, dtype, clip, monkeypatch):
    """A negative at x = 20 with clip = 1e-8 in float32 gave loss inf and gradient NaN (the clip vanished from
    p - clip as p rounded to 1); float64 the same at clip = 1e-17. Against mpmath: -log(1 - p + clip) and its
    derivative p q / (q + clip), q = 1 - p."""
    mpmath = pytest.importorskip("mpmath")

    if path == "kernel" and cpu.kernel() is None:
        pytest.skip("the C kernel is not built here")
    if path == "chunked":
        monkeypatch.setattr(cpu, "kernel", lambda: None)
    x = np.array([[20.0, 40.0, 17.0]], dtype)
    loss, grad = snp.multilabel_soft_margin_loss_and_grad(x, np.zeros_like(x), reduction="sum", clip=clip)
    with mpmath.workdps(50):
        p = [1 / (1 + mpmath.exp(-mpmath.mpf(float(v)))) for v in x[0]]
        exact_loss = float(sum(-mpmath.log(1 - pi + clip) for pi in p) / 3)
        exact_grad = [float(pi * (1 - pi) / (1 - pi + clip) / 3) for pi in p]
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(float(loss), exact_loss, rtol=tolerance)
    np.testing.assert_allclose(grad[0].astype(np.float64), exact_grad, rtol=tolerance)
