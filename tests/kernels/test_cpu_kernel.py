"""The compiled CPU kernel against the formula (``_formula.py`` through the chunked torch path)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import assert_close

from softmargin._chunks import PLAIN, Options
from softmargin.kernels import build, cpu
from softmargin.torch import _backends as torch_ops

pytestmark = pytest.mark.skipif(cpu.kernel() is None, reason="the CPU kernel cannot be built here")


def _both_paths(x, y, w, pos_weight=None, mask=None, options=PLAIN, reduction="sum"):
    """(per-sample losses, gradient) from the kernel and from the chunked formula."""
    native, _ = torch_ops._native(x, y, w, pos_weight, mask, options, reduction, True)
    chunked = torch_ops._chunked(x, y, w, pos_weight, mask, options, reduction, True)
    assert native[2] == chunked[2]
    return native[:2], chunked[:2]


def _rows(x, y, w, need_grad=True):
    """(per-sample losses, gradient) of the kernel for (N, C) rows."""
    (per_sample, grad, _), _ = torch_ops._native(x, y, w, None, None, PLAIN, "sum", need_grad)
    return per_sample, grad


@pytest.mark.parametrize("num_classes", [1, 2, 10, 15, 16, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("target_dtype", ["same", torch.uint8, torch.float32])
def test_short_rows_are_each_the_row_computed_alone(num_classes, dtype, target_dtype):
    """Rows of at most 16 classes are computed packed, several rows to a vector (kernel.c); each row's loss and
    gradient must be bitwise those of the same row computed alone (a single row takes the row function): with rows
    that need the exact path (|x| >= 86, infinite logits, a target outside [0, 1] left unchecked) among ordinary
    ones, a zero weight, and more rows than one packed block holds (70 rows of 10 classes: blocks of 48)."""
    gen = torch.Generator().manual_seed(num_classes)
    rows = 70
    x = (torch.randn(rows, num_classes, generator=gen, dtype=torch.float64) * 6).to(dtype)
    x[3, 0], x[40, -1] = 90.0, -float("inf")
    y = (torch.rand(rows, num_classes, generator=gen) < 0.3).to(dtype if target_dtype == "same" else target_dtype)
    if target_dtype != torch.uint8:
        y[7, 0] = 0.25 if target_dtype == "same" else 0.3  # a soft target: the fast loop keeps it
    w = (torch.rand(num_classes, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    w[num_classes // 2] = 0
    for weight in (w, None):
        losses, grad = _rows(x, y, weight)
        assert torch.isfinite(grad).all()
        for r in range(rows):
            alone, alone_grad = _rows(x[r : r + 1], y[r : r + 1], weight)
            assert torch.equal(alone, losses[r : r + 1]), (r, alone, losses[r])
            assert torch.equal(alone_grad, grad[r : r + 1]), r
        without_grad, _ = _rows(x, y, weight, need_grad=False)
        assert torch.equal(without_grad, losses)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_short_rows_on_two_threads_are_the_rows_on_one(dtype):
    """Split between two threads, the second thread's rows start mid-way through the packed weight pattern (row
    3500 of 7001, 10 classes): the results are bitwise one thread's, and the boundary rows each the row alone."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7001, 10, generator=gen).to(dtype)
    y = (torch.rand(7001, 10, generator=gen) < 0.2).to(dtype)
    w = (torch.rand(10, generator=gen) + 0.5).to(dtype)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _rows(x, y, w)
        torch.set_num_threads(2)
        two = _rows(x, y, w)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    for r in (3499, 3500, 3501, 7000):
        alone = _rows(x[r : r + 1], y[r : r + 1], w)
        assert torch.equal(alone[0], two[0][r : r + 1]) and torch.equal(alone[1], two[1][r : r + 1])


@pytest.mark.parametrize("num_classes", [1, 15, 16, 17, 511, 512, 513, 5000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("target_dtype", ["same", torch.bool, torch.uint8, "other float"])
def test_kernel_matches_formula(num_classes, dtype, target_dtype):
    gen = torch.Generator().manual_seed(num_classes)
    x = (torch.randn(37, num_classes, generator=gen, dtype=torch.float64) * 10).to(dtype)
    x[0, :3] = torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=dtype)[: min(3, num_classes)]
    hard = torch.rand(37, num_classes, generator=gen) < 0.3
    y = {"same": hard.to(dtype), torch.bool: hard, torch.uint8: hard.to(torch.uint8)}.get(
        target_dtype, hard.to(torch.float64 if dtype == torch.float32 else torch.float32)
    )
    w = torch.rand(num_classes, generator=gen, dtype=torch.float64).to(dtype)
    w[0] = 0
    (ns, ng), (cs, cg) = _both_paths(x, y, w)
    rtol = 1e-6 if dtype == torch.float32 else 1e-13
    finite = torch.isfinite(cs)
    assert torch.equal(torch.isnan(ns), torch.isnan(cs)) and torch.equal(torch.isinf(ns), torch.isinf(cs))
    assert_close(ns[finite].numpy(), cs[finite].numpy(), rtol, "row sums")
    assert torch.equal(torch.isnan(ng), torch.isnan(cg))
    assert_close(torch.nan_to_num(ng).double().numpy(), torch.nan_to_num(cg).double().numpy(), rtol, "grad")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("target", ["same", torch.uint8])
def test_half_precision_kernels(dtype, target):
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(20, 700, generator=gen) * 6).to(dtype)
    hard = torch.rand(20, 700, generator=gen) < 0.5
    y = hard.to(dtype) if target == "same" else hard.to(torch.uint8)
    (ns, ng), (cs, cg) = _both_paths(x, y, None)
    assert ng.dtype == dtype
    assert_close(ns.numpy(), cs.numpy(), 1e-6, "row sums")  # both accumulate float32 element losses in float64
    np.testing.assert_array_equal(ng.float().numpy(), cg.float().numpy())  # the same float32 rounded once


@pytest.mark.parametrize("num_classes", [1, 15, 16, 17, 511, 512, 513, 2000])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("target", ["same", "soft", torch.uint8, torch.bool, "float32", "float32 soft"])
def test_half_kernels_match_formula_at_every_tail(num_classes, dtype, target):
    """float16/bfloat16 rows of every length around the vector (16) and block (512) sizes, with inf/NaN logits, a
    zero weight and soft targets (float32 ones read as they are, not rounded to the input's dtype): row sums within
    1e-6 of the formula, gradients within one unit of the dtype's last place (both round a float32 gradient once;
    the kernel's float32 may differ from torch's by a few ulp)."""
    gen = torch.Generator().manual_seed(num_classes)
    x = (torch.randn(29, num_classes, generator=gen) * 8).to(dtype)
    x[0, :3] = torch.tensor([float("inf"), -float("inf"), float("nan")])[: min(3, num_classes)].to(dtype)
    x[1, -1] = 90.0  # beyond the fast range, in the last (partial) vector
    probabilities = torch.rand(29, num_classes, generator=gen)
    hard = probabilities < 0.3
    y = {"same": hard.to(dtype), "soft": probabilities.to(dtype), torch.uint8: hard.to(torch.uint8),
         "float32": hard.float(), "float32 soft": probabilities}.get(target, hard)  # fmt: skip
    w = torch.rand(num_classes, generator=gen) + 0.1
    w[num_classes // 2] = 0
    (ns, ng), (cs, cg) = _both_paths(x, y, w)
    assert ng.dtype == dtype
    assert torch.equal(torch.isnan(ns), torch.isnan(cs)) and torch.equal(torch.isinf(ns), torch.isinf(cs))
    finite = torch.isfinite(cs)
    assert_close(ns[finite].numpy(), cs[finite].numpy(), 1e-6, "row sums")
    assert torch.equal(torch.isnan(ng), torch.isnan(cg))
    ulp = torch.finfo(dtype).eps  # 2^-7 (bfloat16), 2^-10 (float16)
    ng64, cg64 = torch.nan_to_num(ng).double(), torch.nan_to_num(cg).double()
    assert torch.all((ng64 - cg64).abs() <= ulp * cg64.abs() + torch.finfo(dtype).smallest_normal * ulp)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_kernels_blocks_redone_exactly(dtype):
    """The cases the half-precision loop hands to the exact block function: a gradient too small for a normal
    number (AVX512-BF16's conversion would flush it to zero; torch rounds it to a subnormal), a weighted loss beyond
    float32, and a target of -0.0 (valid; only its bits look out of range)."""
    x = torch.randn(4, 600, generator=torch.Generator().manual_seed(3)).to(dtype)
    y = (x > 0.5).to(dtype)
    y[2, 17] = -0.0
    w = torch.ones(600)
    w[100] = 1e-35  # weight * scale * sigmoid: a subnormal float32 gradient in the first row's first block
    w[530] = 3e38  # weight * loss overflows float32 in the second block (the sum itself is finite in float64)
    x[:, 530], y[:, 530] = 5.0, 0.0
    (ns, ng), (cs, cg) = _both_paths(x, y, w)
    assert_close(ns.numpy(), cs.numpy(), 1e-6, "row sums")
    assert torch.isfinite(ns).all()
    np.testing.assert_array_equal(ng[:, 100].float().numpy(), cg[:, 100].float().numpy())
    assert (ng[:, 100] != 0).all() or dtype == torch.float16  # float16 has no room below 6e-8: 0 there too


def _run_this_module(env: dict[str, str]) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider", __file__],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(bool(__import__("os").environ.get("SOFTMARGIN_CPU_VARIANT")), reason="already another variant")
@pytest.mark.parametrize("variant", build.variants())
def test_other_variants_pass_this_module(variant):
    """Other CPUs load other variants: without AVX-512 the portable loops (avx2; the baseline where nothing else
    runs), with AVX-512 but not AVX512-BF16 the bfloat16 gradient rounded with integer operations. Force each
    variant this CPU can run and run this whole module against it in a fresh process."""
    import os

    if variant == cpu.variant():
        pytest.skip("the variant this process already runs")
    lib = cpu.kernel()
    if not build.library_path(variant).exists() or not lib.softmargin_cpu_supports(variant.encode()):
        pytest.skip(f"{variant} is not built or this CPU cannot run it")
    _run_this_module(dict(os.environ, SOFTMARGIN_CPU_VARIANT=variant))


@pytest.mark.slow
@pytest.mark.skipif(build.compiler() is None, reason="no C compiler")
@pytest.mark.skipif(bool(__import__("os").environ.get("SOFTMARGIN_KERNEL_DIR")), reason="already another build")
def test_developer_rebuild_with_portable_loops(tmp_path):
    """The developer switch: ``python -m softmargin.kernels.build --out DIR --cflags ...`` builds the libraries
    elsewhere and ``SOFTMARGIN_KERNEL_DIR`` loads them; here the portable loops (``-DSOFTMARGIN_PORTABLE``) in the
    best variant's instruction set (and the baseline, the loader's CPU oracle), against this whole module."""
    import os
    import subprocess
    import sys

    best = cpu.variant()
    command = [sys.executable, "-m", "softmargin.kernels.build", "--out", str(tmp_path),
               "--cflags=-DSOFTMARGIN_PORTABLE", "--variant", best, "--variant", "baseline"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    env = dict(os.environ, SOFTMARGIN_KERNEL_DIR=str(tmp_path), SOFTMARGIN_CPU_VARIANT=best)
    check = "from softmargin.kernels import cpu; assert cpu.kernel() is not None and not cpu.avx512_loops()"
    subprocess.run([sys.executable, "-c", check], env=env, check=True)
    _run_this_module(env)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_gradient_ties_round_to_even(dtype):
    """Gradients exactly halfway between two values of the dtype round to the even one, as torch rounds: at x = 0
    the gradient is w / (2 C) exactly, so a weight of 1 + 2^-(m+1) (m mantissa bits) lands on a tie, rounding down
    to 1 (even), and one of 1 + 3 * 2^-(m+1) rounds up to 1 + 2^-(m-1)."""
    half_ulp = torch.finfo(dtype).eps / 2  # 2^-(m+1)
    ties = torch.tensor([1 + half_ulp, 1 + 3 * half_ulp])
    w = ties.repeat(8)  # 16 classes, a power of two: the scale 1 / 16 is exact
    x = torch.zeros(3, 16, dtype=dtype)
    y = torch.zeros(3, 16, dtype=dtype)
    (_, grad), (_, ref) = _both_paths(x, y, w)
    expected = (ties / 32).repeat(8).to(dtype)  # torch's own rounding of the exact float32 gradient
    assert torch.equal(ref[0], expected)
    assert torch.equal(grad, ref), (grad[0, :2].float(), ref[0, :2].float())


def test_float16_conversions_match_numpy():
    """The kernel converts float16 with integer operations (so that its loops vectorise): every float16 value to
    float32, and float32 values around every float16 rounding boundary (ties, subnormals, overflow, inf, NaN) back,
    rounding to nearest even as NumPy (and torch) do."""
    lib = cpu.kernel()
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    widened = np.empty(65536, dtype=np.float32)
    lib.softmargin_f16_to_f32(halves.ctypes.data, widened.ctypes.data, 65536)
    np.testing.assert_array_equal(widened.view(np.uint32), halves.astype(np.float32).view(np.uint32))
    # every float16 value, the midpoints to its neighbours, one float32 ulp either side of those, random bits
    exact = halves.astype(np.float32)
    finite = exact[np.isfinite(exact)]
    mids = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
    near = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])
    rand = np.random.default_rng(0).integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = np.concatenate([exact, near, rand, np.float32([65504, 65519.996, 65520, 1e30, np.inf, -np.inf, np.nan])])
    narrowed = np.empty(values.size, dtype=np.float16)
    lib.softmargin_f16_from_f32(values.ctypes.data, narrowed.ctypes.data, values.size)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(narrowed), nan)
    np.testing.assert_array_equal(narrowed[~nan].view(np.uint16), expected[~nan].view(np.uint16))


def test_full_shape_and_row_weights():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(6, 4, 9, generator=gen)
    y = (torch.rand(6, 4, 9, generator=gen) < 0.5).float()
    for w in (torch.rand(6, 4, 9, generator=gen), torch.rand(6, 1, 1, generator=gen), torch.tensor(2.5)):
        (ns, ng), (cs, cg) = _both_paths(x, y, w)
        assert_close(ns.numpy(), cs.numpy(), 1e-6, "row sums")
        assert_close(ng.numpy(), cg.numpy(), 1e-6, "grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bitwise_deterministic_for_any_thread_count(dtype):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(300, 2000, generator=gen).to(dtype)
    y = torch.rand(300, 2000, generator=gen).to(dtype)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(torch_ops._native(x, y, None, None, None, PLAIN, "mean", True)[0][:2])
    finally:
        torch.set_num_threads(before)
    for sums, grad in results[1:]:
        assert torch.equal(sums, results[0][0]) and torch.equal(grad, results[0][1])


def test_no_gradient_requested_writes_none():
    x = torch.randn(3, 4)
    (per_sample, grad, _), _ = torch_ops._native(x, torch.zeros(3, 4), None, None, None, PLAIN, "none", False)
    assert grad is None and per_sample.shape == (3,)


OPTION_CASES = [
    dict(options=Options(label_smoothing=0.1)),
    dict(options=Options(gamma_pos=2.0, gamma_neg=2.0)),
    dict(options=Options(gamma_pos=1.0, gamma_neg=4.0, clip=0.05)),
    dict(options=Options(gamma_neg=0.5, clip=0.2)),
    dict(pos_weight="class"),
    dict(pos_weight="full", mask="full"),
    dict(mask="class", options=Options(gamma_neg=1.0)),
    dict(mask="full", reduction="mean"),
]


@pytest.mark.parametrize("case", range(len(OPTION_CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("soft", [False, True, "uint8 target", "float32 target"])
def test_kernel_options_match_formula(case, dtype, soft):
    spec = dict(OPTION_CASES[case])
    gen = torch.Generator().manual_seed(case)
    shape = (23, 700)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 6).to(dtype)
    x[0, :4] = torch.tensor([float("inf"), -float("inf"), float("inf"), -float("inf")]).to(dtype)
    target_dtype = torch.float32 if soft == "float32 target" else dtype  # float32 soft labels of any input, unrounded
    probabilities = torch.rand(shape, generator=gen)
    y = (probabilities if soft in (True, "float32 target") else (probabilities < 0.3).double()).to(target_dtype)
    y[0, :4] = torch.tensor([1.0, 0.0, 0.0, 1.0]).to(target_dtype)
    y = y.to(torch.uint8) if soft == "uint8 target" else y
    w = torch.rand(shape[-1], generator=gen) + 0.2
    pos_weight = {"class": torch.rand(shape[-1], generator=gen) + 0.5, "full": torch.rand(shape, generator=gen) + 0.5}.get(spec.get("pos_weight"))
    mask = {"class": torch.rand(shape[-1], generator=gen) < 0.7, "full": torch.rand(shape, generator=gen) < 0.7}.get(spec.get("mask"))
    if mask is not None and mask.dim() == 2:
        mask[1] = False  # a sample with nothing observed
    (ns, ng), (cs, cg) = _both_paths(x, y, w, pos_weight, mask, spec.get("options", PLAIN), spec.get("reduction", "sum"))
    rtol = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 1e-6, torch.float16: 1e-6}[dtype]
    assert torch.equal(torch.isinf(ns), torch.isinf(cs)) and not torch.isnan(ns).any()
    finite = torch.isfinite(cs)
    assert_close(ns[finite].numpy(), cs[finite].numpy(), rtol, "per-sample")
    if dtype in (torch.bfloat16, torch.float16):  # both round a float32 gradient once: one ulp for libm differences
        ulp = torch.finfo(dtype).eps
        assert_close(ng.double().numpy(), cg.double().numpy(), ulp, "grad", atol=torch.finfo(dtype).smallest_normal * ulp)
    else:
        assert_close(ng.double().numpy(), cg.double().numpy(), 10 * rtol, "grad")


@pytest.mark.parametrize("num_classes", [10, 700])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["plain", "pos_weight", "focal", "clipped"])
def test_a_float32_target_exact_in_the_half_dtype_gives_its_bits(num_classes, dtype, case):
    """float16/bfloat16 inputs read a float32 target as it is (kernel.c, the *_f32 row functions), with the
    arithmetic of the input's own target dtype: where the target's values are exact in that dtype (hard labels,
    quarters), losses and gradients are bitwise the same, packed short rows (10 classes) and blocks with a tail and
    with logits beyond the fast range (700) alike."""
    gen = torch.Generator().manual_seed(num_classes)
    x = (torch.randn(24, num_classes, generator=gen) * 6).to(dtype)
    x[1, :3] = torch.tensor([float("inf"), -float("inf"), 90.0]).to(dtype)
    y = torch.randint(0, 5, (24, num_classes), generator=gen) / 4.0
    y[2] = (y[2] > 0.5).float()
    w = torch.rand(num_classes, generator=gen) + 0.1
    w[num_classes // 2] = 0
    pos_weight = torch.rand(num_classes, generator=gen) + 0.5 if case == "pos_weight" else None
    options = {"focal": Options(gamma_pos=1.0, gamma_neg=2.0), "clipped": Options(gamma_neg=2.0, clip=0.05)}
    option = options.get(case, PLAIN)
    results = [torch_ops._native(x, target, w, pos_weight, None, option, "sum", True)[0] for target in (y, y.to(dtype))]
    assert results[0][0].dtype == torch.float64 and results[0][1].dtype == dtype
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_float32_element_loss_in_float64_is_within_8e8_of_logaddexp():
    """The kernel's own float32 exp/log1p: every element's loss, as the kernel sums it in float64, against NumPy's
    float64 logaddexp, over a dense grid of |x| in [0, 86), both signs and both labels. log1p(e^-|x|) alone is
    within 4.5e-8 (every float32 |x| < 86 was checked once, in C, against libm); adding the margin |x| of a wrong
    prediction rounds once more in float32 (at most 2^-24 of the sum: measured worst 5.6e-8)."""
    magnitudes = np.concatenate([np.linspace(0, 86, 200_001)[:-1], np.logspace(-30, np.log10(86), 20_000)[:-1]])
    x = np.concatenate([magnitudes, -magnitudes]).astype(np.float32)
    xt = torch.from_numpy(x).reshape(-1, 1)  # one class: a row's sum is its element's loss
    for label in (0.0, 1.0):
        (per_sample, grad, _), _ = torch_ops._native_plain(xt, torch.full_like(xt, label), None, torch.float32, "sum", True)
        exact = np.logaddexp(0.0, -x.astype(np.float64)) if label else np.logaddexp(0.0, x.astype(np.float64))
        rel = np.abs(per_sample.numpy() - exact) / exact
        assert rel.max() <= 8e-8, f"worst {rel.max():.3g} at x={x[rel.argmax()]}"
        x64 = x.astype(np.float64)
        exact_grad = 1 / (1 + np.exp(-x64)) if label == 0 else -1 / (1 + np.exp(x64))  # sigmoid(x) - y
        assert_close(grad.numpy().ravel(), exact_grad, 4e-7, "grad")


@pytest.mark.parametrize("extreme", [86.0, 87.5, 100.0, float("inf"), -float("inf"), float("nan")])
def test_blocks_with_extreme_logits_take_the_exact_functions(extreme):
    """A block holding |x| >= 86, inf or NaN is summed again with glibc's functions; the others keep the fast path:
    both agree with the formula, in a row that spans several blocks."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 1500, generator=gen) * 5
    x[0, 700] = extreme  # the second block of the first row
    x[2, 3] = -extreme
    y = (torch.rand(3, 1500, generator=gen) < 0.5).float()
    y[0, 700] = 1.0
    (loss, grad), (ref_loss, ref_grad) = _both_paths(x, y, None)
    assert torch.equal(torch.isnan(loss), torch.isnan(ref_loss)) and torch.equal(torch.isinf(loss), torch.isinf(ref_loss))
    finite = torch.isfinite(ref_loss)
    assert_close(loss[finite].numpy(), ref_loss[finite].numpy(), 2e-7, "loss")
    assert torch.equal(torch.isnan(grad), torch.isnan(ref_grad))
    ok = ~torch.isnan(ref_grad)
    assert_close(grad[ok].numpy(), ref_grad[ok].numpy(), 1e-6, "grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("bad", [1.5, -0.25, float("nan")])
@pytest.mark.parametrize("options", [{}, {"pos_weight": "c"}])
@pytest.mark.parametrize("target_dtype", ["same", torch.float32])
def test_target_outside_unit_interval_is_caught_in_the_kernel_and_before_it(dtype, bad, options, target_dtype):
    """The kernel checks the target as it reads it (the plain loss in float32/16, the options in every dtype; a
    float32 target of half logits too); the float64 plain loss takes a pass before. Either way the same error,
    naming the target and its first bad position; validate=False skips both."""
    import softmargin.torch as st

    x = torch.randn(6, 700).to(dtype)
    y = (torch.rand(6, 700) < 0.3).to(dtype if target_dtype == "same" else target_dtype)
    y[4, 650] = bad
    kw = {k: torch.rand(700).to(dtype) + 0.5 for k in options}
    with pytest.raises(ValueError, match=r"target.*\(4, 650\)"):
        st.multilabel_soft_margin_loss(x, y, **kw)
    st.multilabel_soft_margin_loss(x, y, validate=False, **kw)  # no check, no error


def test_target_in_another_dtype_is_checked_before_conversion():
    """1 + 1e-9 becomes 1.0 in float32: the check must see the value the caller gave."""
    import softmargin.torch as st

    y = torch.zeros(2, 5, dtype=torch.float64)
    y[1, 3] = 1 + 1e-9
    with pytest.raises(ValueError, match=r"target.*\(1, 3\)"):
        st.multilabel_soft_margin_loss(torch.randn(2, 5), y)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_every_value_within_5e7(dtype):
    """float16/bfloat16 inputs take shorter polynomials (their results are rounded to 5e-4 or 4e-3 anyway): every
    finite value of the dtype, both labels, against float64 logaddexp, as the kernel sums it (float64). The AVX-512
    loop's fits are within 5e-7 (measured 4.2e-7); the portable loop's Taylor log1p within 2e-6."""
    x = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype).reshape(-1, 1)
    x = x[torch.isfinite(x.float()).ravel()]
    for label in (0.0, 1.0):
        (per_sample, grad, _), _ = torch_ops._native_plain(x, torch.full_like(x, label), None, torch.float32, "sum", True)
        x64 = x.double().numpy().ravel()
        exact = np.logaddexp(0.0, -x64) if label else np.logaddexp(0.0, x64)
        normal = exact > np.finfo(np.float32).tiny
        rel = np.abs(per_sample.numpy() - exact)[normal] / exact[normal]
        assert rel.max() <= (5e-7 if cpu.avx512_loops() else 2e-6), f"worst {rel.max():.3g}"
        from scipy.special import expit

        exact_grad = expit(x64) if label == 0 else -expit(-x64)  # sigmoid(x) - y without cancellation
        # at most one unit in the last place of the dtype (rounded once from a float32 value good to a few ulp)
        # the dtype's eps is 2^-(mantissa bits); the subnormal spacing is tiny * eps
        ulp = (np.abs(exact_grad) + torch.finfo(dtype).smallest_normal) * torch.finfo(dtype).eps
        err = np.abs(grad.double().numpy().ravel() - exact_grad)
        assert np.all(err <= ulp), f"worst gradient at x={x64[np.argmax(err - ulp)]}"
