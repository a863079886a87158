"""The independent float64 / mpmath references and the one tolerance table, shared by all test modules."""

from __future__ import annotations

import math

import numpy as np

#: Relative tolerances for agreement with torch (the core issue's contract) and with the exact reference.
RTOL = {"float64": 1e-12, "float32": 1e-6, "float16": 1e-3, "bfloat16": 8e-3}


def reference_loss(x, y, weight=None, reduction="mean"):
    """Float64 reference written independently of softmargin's formula, from -log sigmoid(t) = logaddexp(0, -t)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    element = y * np.logaddexp(0.0, -x) + (1 - y) * np.logaddexp(0.0, x)
    if weight is not None:
        element = element * np.asarray(weight, dtype=np.float64)
    per_sample = element.mean(axis=-1)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def reference_grad(x, y, weight=None, reduction="mean"):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    grad = 1.0 / (1.0 + np.exp(-x)) - y
    if weight is not None:
        grad = grad * np.asarray(weight, dtype=np.float64)
    grad = grad / x.shape[-1]
    if reduction == "mean":
        grad = grad / (x.size // x.shape[-1])
    return grad


def exact_element_loss(x: float, y: float) -> float:
    """mpmath, 50 digits: -(y log sigmoid(x) + (1 - y) log sigmoid(-x)) (the caller is skipped without mpmath)."""
    import pytest

    mpmath = pytest.importorskip("mpmath")

    with mpmath.workdps(50):
        xm, ym = mpmath.mpf(x), mpmath.mpf(y)
        log_sig = lambda t: -mpmath.log1p(mpmath.exp(-t)) if t >= 0 else t - mpmath.log1p(mpmath.exp(t))
        return float(-(ym * log_sig(xm) + (1 - ym) * log_sig(-xm)))


def assert_close(actual, expected, rtol, what="", atol=0.0):
    """|a - e| <= rtol * |e| + rtol * max|e| + atol: relative, with an absolute floor at the array's own scale."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if expected.size == 0:
        return
    scale = np.max(np.abs(expected))
    err = np.abs(actual - expected)
    bound = rtol * np.abs(expected) + rtol * scale + atol
    worst = np.argmax(err - bound)
    assert np.all(err <= bound), (
        f"{what}: max violation at {np.unravel_index(worst, err.shape)}: "
        f"actual {actual.flat[worst]!r} expected {expected.flat[worst]!r} (rtol {rtol})"
    )


SEED_LOGITS = [[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]]
SEED_LABELS = [[1, 0, 1], [0, 1, 0]]
SEED_WEIGHTS = [0.5, 2.0, 1.5]


def formula_rows(x, y, opts, scale, row_scale=None):
    """Kernel-shaped reference: row sums ``sum_c w * mask * l`` and gradient ``w * mask * dl/dx * scale *
    row_scale[n]`` from ``_formula.element_loss_and_grad_options`` in float64 on the same (rounded) torch inputs.
    ``opts``: weight, pos_weight, mask (tensors or absent), label_smoothing, gamma_pos, gamma_neg, clip."""
    import torch

    from softmargin._formula import element_loss_and_grad_options

    xd, yd = x.double(), y.double()
    eps = opts.get("label_smoothing", 0.0)
    if eps:
        yd = yd * (1 - eps) + eps / 2
    pw = opts.get("pos_weight")
    loss, grad = element_loss_and_grad_options(
        xd, yd, torch, pos_weight=None if pw is None else pw.double(), gamma_pos=opts.get("gamma_pos", 0.0),
        gamma_neg=opts.get("gamma_neg", 0.0), clip=opts.get("clip", 0.0),
    )  # fmt: skip
    w = torch.ones_like(xd)
    if opts.get("weight") is not None:
        w = w * opts["weight"].double()
    if opts.get("mask") is not None:
        w = w * opts["mask"].double()
    sums = torch.where(w == 0, 0.0, loss * w).sum(1)
    grad = grad * w * scale
    if row_scale is not None:
        grad = grad * row_scale.double()[:, None]
    return sums, grad


def long_rows_with_exact_sums(num_rows, num_classes, seed):
    """(x, y, w, exact row sums): float32 (num_rows, num_classes) logits drawn from 400 distinct values, hard targets
    and a (num_classes,) weight from four values, as torch tensors; mpmath gives every element's exact loss from 800
    evaluations, and math.fsum the exact weighted row sums (float64 NumPy)."""
    import torch

    rng = np.random.default_rng(seed)
    values = np.concatenate([-np.logspace(-4, 1.5, 200), np.logspace(-4, 1.5, 200)]).astype(np.float32)
    pick = rng.integers(0, values.size, size=(num_rows, num_classes))
    y = (rng.random((num_rows, num_classes)) < 0.1).astype(np.float32)
    w = rng.choice(np.array([0.25, 1.0, 1.75, 3.0], dtype=np.float32), size=num_classes)
    table = np.array([[exact_element_loss(float(v), t) for v in values] for t in (0.0, 1.0)])
    exact_elements = table[y.astype(np.int64), pick] * w.astype(np.float64)
    exact_rows = np.array([math.fsum(row) for row in exact_elements])
    return torch.from_numpy(values[pick]), torch.from_numpy(y), torch.from_numpy(w), exact_rows


#: The kernels' option cases: "class" stands for a (C,) operand, "full" for an (N, C) one (``option_operands``).
OPTION_CASES = {
    "plain": {},
    "class weight": {"weight": "class"},
    "full weight": {"weight": "full"},
    "pos_weight": {"pos_weight": "class"},
    "row pos_weight": {"pos_weight": "full"},
    "class mask": {"mask": "class"},
    "full mask": {"mask": "full"},
    "smoothing": {"label_smoothing": 0.1},
    "focal": {"gamma_pos": 2.0, "gamma_neg": 2.0},
    "asymmetric": {"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05},
    "everything": {"weight": "class", "pos_weight": "full", "mask": "full", "label_smoothing": 0.2,
                   "gamma_pos": 1.0, "gamma_neg": 3.0, "clip": 0.1},
}  # fmt: skip


def option_operands(spec, dtype, num_rows, num_classes, seed=1, device=None):
    """An ``OPTION_CASES`` entry made concrete: weights (one of them 0) and pos_weight in ``dtype``, a bool mask
    under which every row observes its first label, the scalar options as they are."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    shape = {"class": (num_classes,), "full": (num_rows, num_classes)}
    out = {}
    for name, value in spec.items():
        if name == "mask":
            mask = torch.rand(shape[value], generator=gen) < 0.7
            mask.reshape(-1, num_classes)[:, 0] = True
            out[name] = mask.to(device)
        elif name in ("weight", "pos_weight"):
            w = torch.rand(shape[value], generator=gen, dtype=torch.float64) * 2 + 0.1
            if name == "weight":
                w.reshape(-1)[3] = 0.0  # a zero weight removes its element
            out[name] = w.to(dtype).to(device)
        else:
            out[name] = value
    return out


#: A ``torch_path`` that adds the Triton kernel (on CPU tensors Triton's interpreter: slow, so marked slow). A test
#: module opts in with ``torch_path = with_triton_path`` at module level.
def _with_triton_path():
    import pytest

    @pytest.fixture(params=["native", "chunked", pytest.param("triton", marks=pytest.mark.slow)], name="torch_path")
    def torch_path(request, monkeypatch):
        return use_backend(request.param, monkeypatch)

    return torch_path


with_triton_path = _with_triton_path()


def use_backend(name, monkeypatch):
    """Force one backend with SOFTMARGIN_BACKEND (skipping where it cannot run)."""
    import os

    import pytest

    from softmargin.kernels import cpu

    if name == "native":
        if cpu.kernel() is None:
            pytest.skip("the CPU kernel cannot be built here")
        monkeypatch.setenv("SOFTMARGIN_BACKEND", "cpu")
    elif name == "chunked":
        monkeypatch.setattr(cpu, "kernel", lambda: None)
        monkeypatch.setenv("SOFTMARGIN_BACKEND", "torch")
    else:
        pytest.importorskip("triton")
        import torch

        if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
            pytest.skip("Triton needs a CUDA device or TRITON_INTERPRET=1")
        monkeypatch.setenv("SOFTMARGIN_BACKEND", "triton")
    return name




def incoming_gradient(grad_output, loss):
    """The incoming gradient for ``loss``: ``grad_output`` for a reduced loss; for reduction "none" one per sample
    (``grad_output`` scaled by the rows' positions, so that each differs)."""
    import torch

    if loss.dim() == 0:
        return grad_output
    return grad_output * torch.linspace(0.5, 2.0, loss.numel(), dtype=torch.float64).to(grad_output.dtype).reshape(loss.shape)


def passthrough_mode():
    """A TorchDispatchMode that runs every operation as it is and records their names (``.seen``): any active
    dispatch mode sends a loss call through the operator instead of the eager paths."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(str(func))
            return func(*args, **(kwargs or {}))

    return Passthrough()
