"""The pure-torch backend's short path (``softmargin.torch._fallback``: no focusing, no pos_weight) against the float64
formula and mpmath, on one and two threads, at chunk edges, signed zeros and infinities."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import OPTION_CASES, RTOL, assert_close, formula_rows, long_rows_with_exact_sums, option_operands

torch = pytest.importorskip("torch")

import softmargin.torch as st
from softmargin._chunks import Rows
from softmargin.torch import _backends, _fallback

SHORT_CASES = [name for name, spec in OPTION_CASES.items() if "pos_weight" not in spec and "gamma_pos" not in spec
               and "gamma_neg" not in spec]  # fmt: skip


@pytest.fixture(params=[1, 2], ids=["one thread", "two threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _short(x, y, opts, scale, row_scale=None, chunk_elements=_fallback.PLAIN_CHUNK_ELEMENTS):
    cdtype = _backends.compute_dtype(x.dtype)
    rows = _backends._rows(x, y, opts.get("weight"), None, opts.get("mask"), cdtype)
    sums = torch.empty(x.shape[0], dtype=torch.float64)
    grad = torch.empty_like(x)
    _fallback.plain_loss_rows(rows, opts.get("label_smoothing", 0.0), scale if row_scale is None else row_scale,
                              True, cdtype, sums, grad, chunk_elements)  # fmt: skip
    return sums, grad


@pytest.mark.parametrize("case", SHORT_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 7), (70, 1000)], ids=["small", "larger"])
def test_short_path_matches_the_float64_formula(case, dtype, shape, threads):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype)
    y = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)
    y[::2] = (y[::2] > 0.5).to(dtype)  # hard and soft labels
    opts = option_operands(OPTION_CASES[case], dtype, *shape)
    sums, grad = _short(x, y, opts, 0.01)
    expected_sums, expected_grad = formula_rows(x, y, opts, 0.01)
    rtol = RTOL["float32" if dtype == torch.bfloat16 else str(dtype).split(".")[1]]  # computed in float32
    assert_close(sums.numpy(), expected_sums.numpy(), rtol * 4, f"{case} sums")
    grad_rtol = RTOL["bfloat16"] if dtype == torch.bfloat16 else rtol * 4  # the gradient is rounded to the input
    assert_close(grad.double().numpy(), expected_grad.numpy(), grad_rtol, f"{case} grad")


@pytest.mark.parametrize("row_scale", [False, True])
def test_threads_and_chunks_change_nothing(row_scale, threads):
    """Every row is computed alike whatever the chunk that holds it: equal to the bit."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(203, 640, generator=gen) * 3
    y = torch.rand(203, 640, generator=gen)
    opts = {"weight": torch.rand(640, generator=gen) + 0.25, "mask": torch.rand(203, 640, generator=gen) < 0.8}
    scale = torch.rand(203, generator=gen, dtype=torch.float64) if row_scale else None
    one_chunk = _short(x, y, opts, 0.5, scale, chunk_elements=1 << 30)
    for chunk_elements in (640 * 7, 1000):  # chunks of 7 rows (the last one short), and of one row
        for ours, theirs in zip(_short(x, y, opts, 0.5, scale, chunk_elements=chunk_elements), one_chunk):
            assert torch.equal(ours, theirs)


def test_signed_zeros_and_infinities_are_exact(threads):
    x = torch.tensor([[0.0, -0.0, 0.0, -0.0, math.inf, -math.inf, math.inf, -math.inf, math.inf, -math.inf]])
    y = torch.tensor([[1.0, 1.0, 0.25, 0.25, 1.0, 0.0, 0.0, 1.0, 0.5, 0.5]])
    sums, grad = _short(x.repeat(70, 100), y.repeat(70, 100), {}, 1.0)
    # per block of 10: four elements at 0 (log 2 each), two right and four wrong predictions at infinity
    assert torch.isinf(sums).all()
    expected_grad = torch.tensor([[-0.5, -0.5, 0.25, 0.25, 0.0, 0.0, 1.0, -1.0, 0.5, -0.5]]).repeat(70, 100)
    assert torch.equal(grad, expected_grad)
    right = _short(x[:, :6].repeat(70, 100), y[:, :6].repeat(70, 100), {}, 1.0)
    assert torch.allclose(right[0], torch.full((70,), 400 * math.log(2), dtype=torch.float64), rtol=1e-6, atol=0)


def test_zero_weight_removes_an_infinite_loss_and_a_large_weight_does_not_overflow(threads):
    x = torch.tensor([[math.inf, 1.0, -3.0e38]]).repeat(70, 500)
    y = torch.tensor([[0.0, 1.0, 1.0]]).repeat(70, 500)
    w = torch.tensor([0.0, 2.0, 3.0]).repeat(500)
    sums, grad = _short(x, y, {"weight": w}, 1.0)
    # per block of 3: 0 (removed), 2 * log1p(exp(-1)), 3 * 3e38 (beyond float32, not beyond the float64 row sum)
    expected = 500 * (2 * math.log1p(math.exp(-1.0)) + 3 * 3.0e38)
    assert torch.isfinite(sums).all() and torch.allclose(sums, torch.full((70,), expected, dtype=torch.float64))
    assert torch.isfinite(grad).all() and (grad[:, 0::3] == 0).all()
    sums, grad = _short(x, y, {"mask": w > 0}, 1.0)  # a mask alone: no weight to scale, and no overflow either
    expected = 500 * (math.log1p(math.exp(-1.0)) + 3.0e38)
    assert torch.isfinite(sums).all() and torch.allclose(sums, torch.full((70,), expected, dtype=torch.float64))
    assert torch.isfinite(grad).all() and (grad[:, 0::3] == 0).all()


def test_float32_row_sums_against_mpmath(threads):
    x, y, w, exact = long_rows_with_exact_sums(64, 1500, seed=5)
    sums, _ = _short(x, y, {"weight": w}, 1.0)
    assert_close(sums.numpy(), exact, 2e-7, "row sums")


def test_public_api_on_the_torch_backend_matches_torch(monkeypatch, threads):
    monkeypatch.setenv("SOFTMARGIN_BACKEND", "torch")
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(96, 700, generator=gen, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(96, 700, generator=gen) < 0.2).double()
    w = torch.rand(700, generator=gen, dtype=torch.float64) + 0.5
    for reduction in ("mean", "sum", "none"):
        x.grad = None
        st.multilabel_soft_margin_loss(x, y, w, reduction=reduction).sum().backward()
        ours = x.grad.clone()
        x.grad = None
        expected = torch.nn.functional.multilabel_soft_margin_loss(x, y, w, reduction=reduction)
        expected.sum().backward()
        torch.testing.assert_close(ours, x.grad, rtol=1e-12, atol=1e-15)
        assert np.isfinite(ours.numpy()).all()


def test_pos_weight_is_refused():
    rows = Rows(torch.zeros(1, 2), torch.zeros(1, 2), pos_weight=torch.ones(1, 2))
    with pytest.raises(ValueError, match="without pos_weight"):
        _fallback.plain_loss_rows(rows, 0.0, 1.0, False, torch.float32, torch.empty(1, dtype=torch.float64), None)
