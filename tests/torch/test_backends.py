"""The backend table and its explicit override (SOFTMARGIN_BACKEND): each backend through the public API, and a
clear error where the one asked for cannot run."""

from __future__ import annotations

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
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        st.multilabel_soft_margin_loss(torch.randn(2, 3), torch.ones(2, 3))


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_each_backend_through_the_public_api_matches_torch(backend, monkeypatch):
    import os

    if backend == "cpu" and cpu.kernel() is None:
        pytest.skip("the CPU kernel cannot be built here")
    if backend == "triton":
        pytest.importorskip("triton")
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("needs TRITON_INTERPRET=1 on a machine without CUDA")
    monkeypatch.setenv("SOFTMARGIN_BACKEND", backend)
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


@pytest.mark.parametrize("options", [{}, {"gamma_pos": 1.0, "gamma_neg": 2.0}, {"mask": "full"}, {"weight": 2.0}, {"sparse": True}])
def test_cpu_kernel_pos_weight_times_the_positive_term_beyond_float32(options, monkeypatch):
    """The C kernel forms y * pw * softplus(-x) in float32: beyond float32's range (x = -3e38, pw = 10) the sample's
    loss was inf where torch's float64 loss, a mean over the labels, is 3e37 (which float32 holds); such rows are redone
    in float64. A row with an infinite logit keeps its true inf, the gradient stays finite, the other rows are
    untouched."""
    import numpy as np

    if cpu.kernel() is None:
        pytest.skip("the C kernel is not built here")
    monkeypatch.setenv("SOFTMARGIN_BACKEND", "cpu")
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
