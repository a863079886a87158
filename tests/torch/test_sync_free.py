"""No host synchronisation on the default path: forward plus backward with validate=True reads no tensor back to
Python (``aten._local_scalar_dense`` / ``aten.item``), for dense targets with every option, on the C kernel path and on
the generic torch path (the one other devices take)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch.utils._python_dispatch import TorchDispatchMode

import softmargin.torch as st
from softmargin._options import LossOptions
from softmargin.torch import _backends

READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default}


class CountReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.reads.append(func)
        return func(*args, **(kwargs or {}))


OPTIONS = {
    "plain": {},
    "weight": {"weight": "class"},
    "weight (N, C)": {"weight": "full"},
    "pos_weight": {"pos_weight": "class"},
    "mask (N, C)": {"mask": "full"},
    "mask (C,)": {"mask": "class"},
    "label_smoothing": {"label_smoothing": 0.1},
    "asymmetric": {"gamma_pos": 1.0, "gamma_neg": 4.0, "clip": 0.05},
    "everything": {"weight": "class", "pos_weight": "class", "mask": "full", "label_smoothing": 0.1, "gamma_neg": 2.0},
}


def _arguments(spec, shape=(16, 7)):
    gen = torch.Generator().manual_seed(0)
    kwargs = {}
    for key, value in spec.items():
        if value in ("class", "full"):
            size = shape[-1:] if value == "class" else shape
            kwargs[key] = torch.rand(size, generator=gen) < 0.7 if key == "mask" else torch.rand(size, generator=gen) + 0.5
        else:
            kwargs[key] = value
    return kwargs


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_forward_and_backward_read_nothing_back(option, reduction, backend, monkeypatch):
    monkeypatch.setenv("SOFTMARGIN_BACKEND", backend)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 7, generator=gen, requires_grad=True)
    y = (torch.rand(16, 7, generator=gen) < 0.4).float()
    kwargs = _arguments(OPTIONS[option])
    with CountReads() as counter:
        loss = st.multilabel_soft_margin_loss(x, y, reduction=reduction, **kwargs)
        loss.sum().backward()
    assert counter.reads == []
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("option", list(OPTIONS))
def test_generic_backend_computation_reads_nothing_back(option):
    """The torch backend's own computation (what runs inside the operator on a GPU, minus the value checks, which
    are device-side assertions there) seen op by op: no reads either. (On CPU tensors the backend takes its short
    path, which reads row sums back, free there: it never runs on another device.)"""
    assert not _backends.short_path_applies(torch.empty(2, 3, device="meta"), None, LossOptions())
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(16, 7, generator=gen)
    y = (torch.rand(16, 7, generator=gen) < 0.4).float()
    kwargs = _arguments(OPTIONS[option])
    options = LossOptions(*(kwargs.pop(k, 0.0) for k in ("label_smoothing", "gamma_pos", "gamma_neg", "clip")))
    with CountReads() as counter:
        _backends._chunked(x, y, kwargs.get("weight"), kwargs.get("pos_weight"), kwargs.get("mask"), options, "none", True,
                           short_path=False)  # fmt: skip
    assert counter.reads == []
