"""The compiled CPU kernel against the formula (``_formula.py`` through the chunked torch path)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from softmargin._chunks import PLAIN, Options  # noqa: E402
from softmargin.ops import cpu, torch_ops  # noqa: E402

from helpers import assert_close  # noqa: E402

pytestmark = pytest.mark.skipif(cpu.kernel() is None, reason="the CPU kernel cannot be built here")


def _both_paths(x, y, w, pos_weight=None, mask=None, options=PLAIN, reduction="sum"):
    """(per-sample losses, gradient) from the kernel and from the chunked formula."""
    native = torch_ops._native(x, y, w, pos_weight, mask, options, reduction, True)
    chunked = torch_ops._chunked(x, y, w, pos_weight, mask, options, reduction, True)
    assert native[2] == chunked[2]
    return native[:2], chunked[:2]


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


def test_full_shape_and_row_weights():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(6, 4, 9, generator=gen)
    y = (torch.rand(6, 4, 9, generator=gen) < 0.5).float()
    for w in (torch.rand(6, 4, 9, generator=gen), torch.rand(6, 1, 1, generator=gen), torch.tensor(2.5)):
        (ns, ng), (cs, cg) = _both_paths(x, y, w)
        assert_close(ns.numpy(), cs.numpy(), 1e-6, "row sums")
        assert_close(ng.numpy(), cg.numpy(), 1e-6, "grad")


def test_bitwise_deterministic_for_any_thread_count():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(300, 2000, generator=gen)
    y = torch.rand(300, 2000, generator=gen)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(torch_ops._native(x, y, None, None, None, PLAIN, "mean", True)[:2])
    finally:
        torch.set_num_threads(before)
    for sums, grad in results[1:]:
        assert torch.equal(sums, results[0][0]) and torch.equal(grad, results[0][1])


def test_no_gradient_requested_writes_none():
    x = torch.randn(3, 4)
    per_sample, grad, _ = torch_ops._native(x, torch.zeros(3, 4), None, None, None, PLAIN, "none", False)
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
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("soft", [False, True])
def test_kernel_options_match_formula(case, dtype, soft):
    spec = dict(OPTION_CASES[case])
    gen = torch.Generator().manual_seed(case)
    shape = (23, 700)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 6).to(dtype)
    x[0, :4] = torch.tensor([float("inf"), -float("inf"), float("inf"), -float("inf")]).to(dtype)
    y = (torch.rand(shape, generator=gen) if soft else (torch.rand(shape, generator=gen) < 0.3).double()).to(dtype)
    y[0, :4] = torch.tensor([1.0, 0.0, 0.0, 1.0]).to(dtype)
    w = torch.rand(shape[-1], generator=gen) + 0.2
    pos_weight = {"class": torch.rand(shape[-1], generator=gen) + 0.5, "full": torch.rand(shape, generator=gen) + 0.5}.get(spec.get("pos_weight"))
    mask = {"class": torch.rand(shape[-1], generator=gen) < 0.7, "full": torch.rand(shape, generator=gen) < 0.7}.get(spec.get("mask"))
    if mask is not None and mask.dim() == 2:
        mask[1] = False  # a sample with nothing observed
    (ns, ng), (cs, cg) = _both_paths(x, y, w, pos_weight, mask, spec.get("options", PLAIN), spec.get("reduction", "sum"))
    rtol = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 1e-6}[dtype]
    assert torch.equal(torch.isinf(ns), torch.isinf(cs)) and not torch.isnan(ns).any()
    finite = torch.isfinite(cs)
    assert_close(ns[finite].numpy(), cs[finite].numpy(), rtol, "per-sample")
    if dtype == torch.bfloat16:  # both round the same float32 gradient once; allow one bf16 ulp for libm differences
        assert_close(ng.double().numpy(), cg.double().numpy(), 2 ** -7, "grad")
    else:
        assert_close(ng.double().numpy(), cg.double().numpy(), 10 * rtol, "grad")
