"""The backend table and its explicit override (SOFTMARGIN_BACKEND): each backend through the public API, and a
clear error where the one asked for cannot run."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F

import softmargin.torch as st
from softmargin.kernels import cpu
from softmargin.torch import _backends


def test_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("SOFTMARGIN_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match=r"SOFTMARGIN_BACKEND='cuda-magic' is not valid: expected one of auto, cpu, triton, torch"):
        st.multilabel_soft_margin_loss(torch.randn(2, 3), torch.ones(2, 3))


def test_auto_picks_the_c_kernel_on_the_cpu(monkeypatch):
    monkeypatch.setenv("SOFTMARGIN_BACKEND", "auto")
    expected = "cpu" if cpu.kernel() is not None else "torch"
    assert _backends.choose_backend(torch.randn(2, 3)) == expected
    assert _backends.choose_backend(torch.randn(0, 3)) == "torch"  # nothing to compute


def test_cpu_backend_where_the_kernel_is_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cpu, "kernel", lambda: None)
    monkeypatch.setenv("SOFTMARGIN_BACKEND", "cpu")
    with pytest.raises(RuntimeError, match="SOFTMARGIN_BACKEND=cpu, but the C kernel cannot run here"):
        st.multilabel_soft_margin_loss(torch.randn(2, 3), torch.ones(2, 3))


def test_triton_backend_on_cpu_tensors_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("SOFTMARGIN_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(_backends, "triton_module", lambda: object())  # as if Triton were installed
    with pytest.raises(RuntimeError, match="SOFTMARGIN_BACKEND=triton needs CUDA tensors"):
        st.multilabel_soft_margin_loss(torch.randn(2, 3), torch.ones(2, 3))


def test_triton_backend_without_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("SOFTMARGIN_BACKEND", "triton")
    monkeypatch.setattr(_backends, "triton_module", lambda: None)
    with pytest.raises(RuntimeError, match=r"Triton is not installed: pip install 'softmargin\[triton\]'"):
        st.multilabel_soft_margin_loss(torch.randn(2, 3), torch.ones(2, 3))


def _use_backend(backend, monkeypatch):
    """SOFTMARGIN_BACKEND=backend for this test, or a skip where that backend cannot run here."""
    import os

    if backend == "cpu" and cpu.kernel() is None:
        pytest.skip("the C kernel is not built here")
    if backend == "triton":
        pytest.importorskip("triton")
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("needs TRITON_INTERPRET=1 on a machine without CUDA")
    monkeypatch.setenv("SOFTMARGIN_BACKEND", backend)


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_each_backend_through_the_public_api_matches_torch(backend, monkeypatch):
    _use_backend(backend, monkeypatch)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 70, generator=gen, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(9, 70, generator=gen) < 0.3).double()
    w = torch.rand(70, generator=gen, dtype=torch.float64) + 0.5
    loss = st.multilabel_soft_margin_loss(x, y, w)
    loss.backward()
    reference = x.detach().clone().requires_grad_()
    expected = F.multilabel_soft_margin_loss(reference, y, w)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", ["native", "chunked"])
@pytest.mark.parametrize("options", [{}, {"gamma_pos": 1.0, "gamma_neg": 2.0}, {"mask": "full"}, {"weight": 2.0}, {"sparse": True}])
def test_cpu_kernel_pos_weight_times_the_positive_term_beyond_float32(options, backend, monkeypatch):
    """The C kernel and the chunked torch backend form y * pw * softplus(-x) in float32: beyond float32's range (x =
    -3e38, pw = 10) the sample's loss was inf where torch's float64 loss, a mean over the labels, is 3e37 (which float32
    holds); such rows are redone in float64 on the CPU (the chunked backend did not, until this test covered it). A row
    with an infinite logit keeps its true inf, the gradient stays finite, the other rows are untouched."""
    import numpy as np
    from helpers import use_backend

    use_backend(backend, monkeypatch)
    x = torch.zeros(4, 100)
    y = torch.zeros(4, 100)
    x[1, 0], x[3, 0], x[2, 5] = -3e38, -3e38, -float("inf")
    y[1, 0], y[3, 0], y[2, 5] = 1.0, 1.0, 1.0
    pw = torch.full((100,), 10.0)
    kwargs = {k: v for k, v in options.items() if k in ("gamma_pos", "gamma_neg")}
    mask = torch.ones(4, 100, dtype=torch.bool)
    if "mask" in options:
        mask[1, 50:] = False
        kwargs["mask"] = mask
    weight = torch.full((100,), options.get("weight", 1.0))
    if "weight" in options:
        kwargs["weight"] = weight
    target = y.to_sparse_csr() if options.get("sparse") else y
    xg = x.clone().requires_grad_()
    loss = st.multilabel_soft_margin_loss(xg, target, pos_weight=pw, reduction="none", **kwargs)
    loss.sum().backward()
    # the float64 reference: torch's own BCE with logits (focusing: the formula, whose factors at x = -3e38 and x = 0
    # are (1 - p)^g+ = 1 and p^g- = 2^-g-)
    x64 = x.double()
    element = F.binary_cross_entropy_with_logits(x64, y.double(), pos_weight=pw.double(), reduction="none")
    if "gamma_pos" in options:
        p = torch.sigmoid(x64)
        element = torch.where(y == 1, (1 - p) ** options["gamma_pos"], p ** options["gamma_neg"]) * element
    expected = (weight.double() * element * mask).sum(1) / mask.sum(1)
    assert loss.dtype == torch.float32 and torch.isinf(loss[2]) and torch.isfinite(loss[[0, 1, 3]]).all(), loss
    np.testing.assert_allclose(loss[[0, 1, 3]].detach().double().numpy(), expected[[0, 1, 3]].numpy(), rtol=1e-6)
    assert torch.isfinite(xg.grad).all()


def _exact_clipped(x, y, gamma_neg, clip):
    """mpmath, 50 digits: the element loss and d/dx with asymmetric focusing's clip, hard y (gamma_pos = 0):
    y (-log p) + (1 - y) p_m^g (-log(1 - p_m)), p_m = max(p - clip, 0)."""
    import mpmath

    with mpmath.workdps(50):
        x = mpmath.mpf(float(x))
        p = 1 / (1 + mpmath.exp(-x))

        def loss(x):
            p = 1 / (1 + mpmath.exp(-x))
            if y:
                return -mpmath.log(p)
            p_m = max(p - clip, 0)
            return (p_m**gamma_neg if gamma_neg else 1) * -mpmath.log(1 - p_m)

        if y:
            return float(loss(x)), float(-(1 - p))
        if not mpmath.isfinite(x) or p <= clip:
            return float(loss(x)), 0.0
        return float(loss(x)), float(mpmath.diff(loss, x))


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip", [1e-8, 1e-6, 0.05])
@pytest.mark.parametrize("gamma_neg", [0.0, 2.0])
def test_a_small_clip_keeps_the_negatives_loss_accurate(backend, dtype, clip, gamma_neg, monkeypatch):
    """-log(1 - p_m) was -log1p(-(p - clip)): as p rounds to 1 the clip is lost, so a confident wrong negative's loss
    drifted (1 % at clip 1e-7 in float32) and became inf with a NaN gradient (x = 20, clip = 1e-8, float32; float64 at
    clip 1e-17); 1 - p_m is now q + clip, without cancellation. Against mpmath, every backend."""
    _use_backend(backend, monkeypatch)
    values = [-30.0, -5.0, -1.0, 0.0, 1.0, 3.0, 8.0, 12.0, 17.0, 20.0, 40.0, 90.0, 1e4, float("inf")]
    x = torch.tensor([values, values], dtype=dtype)
    y = torch.tensor([[0.0] * len(values), [1.0] * len(values)], dtype=dtype)
    xg = x.clone().requires_grad_()
    loss = st.multilabel_soft_margin_loss(xg, y, reduction="none", gamma_neg=gamma_neg, clip=clip)
    (grad,) = torch.autograd.grad(loss.sum(), xg)
    exact = [[_exact_clipped(v, int(t), gamma_neg, clip) for v in values] for t in (0, 1)]
    # each row's loss is the mean of its elements; its gradient each element's derivative / C
    expected_loss = torch.tensor([np.mean([e[0] for e in row]) for row in exact], dtype=torch.float64)
    expected_grad = torch.tensor([[e[1] / len(values) for e in row] for row in exact], dtype=torch.float64)
    tolerance = 5e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(loss.double(), expected_loss, rtol=tolerance, atol=0)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=tolerance, atol=1e-12 if dtype == torch.float64 else 1e-9)


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_a_subnormal_clip_gives_a_finite_gradient(backend, monkeypatch):
    """p q / (q + clip) was p q * (1 / (q + clip)): for clip = 1e-40, a float32 subnormal, 1 / (q + clip) overflowed
    at x = 90 and beyond (gradient inf, NaN at +inf) while the loss stayed finite. Against the float64 computation
    (1 - p at x = 100 is 3.7e-44, a float32 subnormal of 5 bits: rtol 5e-2, the representation's, not the formula's)."""
    _use_backend(backend, monkeypatch)
    clip = float(np.float32(1e-40))  # as float32 holds it, so that float64 computes the same problem
    x = torch.tensor([[90.0], [95.0], [100.0], [float("inf")]])
    y = torch.zeros(4, 1)
    xg = x.clone().requires_grad_()
    loss = st.multilabel_soft_margin_loss(xg, y, reduction="none", clip=clip)
    (grad,) = torch.autograd.grad(loss.sum(), xg)
    monkeypatch.setenv("SOFTMARGIN_BACKEND", "torch")
    x64 = x.double().requires_grad_()
    expected = st.multilabel_soft_margin_loss(x64, y.double(), reduction="none", clip=clip)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x64)
    assert torch.isfinite(grad).all() and torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=5e-2, atol=1e-30)
