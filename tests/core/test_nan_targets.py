"""A NaN target (``validate=False``: not checked) gives NaN on every path, as in torch's loss: the chunked paths
took ``0 * NaN`` for the ``0 * inf`` of a right prediction at an infinite logit and returned ``log1p(exp(-|x|))``."""

from __future__ import annotations

import math

import numpy as np
import pytest

import softmargin.numpy as snp

torch = pytest.importorskip("torch")
import softmargin.torch as st

_NAN_LOGITS = [0.0, 1.0, -1.0, 30.0, -30.0, math.inf, -math.inf]
_NAN_OPTIONS = [{}, {"label_smoothing": 0.1}, {"pos_weight": True}, {"gamma_neg": 2.0, "clip": 0.05}]


def _nan_problem():
    x = np.array([_NAN_LOGITS, [0.5] * len(_NAN_LOGITS)], dtype=np.float32).T.copy()  # one row per logit
    y = np.full_like(x, np.nan)
    y[:, 1] = 1.0
    return x, y


@pytest.mark.parametrize("options", _NAN_OPTIONS, ids=str)
@pytest.mark.parametrize("backend", ["native", "chunked", "triton"])
def test_a_nan_target_gives_nan_on_every_torch_backend(backend, options, monkeypatch):
    """torch's loss gives NaN for a NaN target (validate=False: not checked). The chunked torch backend and the
    shared formula took 0 * NaN as 0 (a right prediction at an infinite logit) and returned log1p(exp(-|x|)) for
    every such element, silently; its careful redo of non-finite rows did the same."""
    from helpers import use_backend

    use_backend(backend, monkeypatch)
    x, y = _nan_problem()
    kwargs = dict(options)
    if kwargs.pop("pos_weight", False):
        kwargs["pos_weight"] = torch.full((2,), 2.0)
    assert torch.isnan(torch.nn.functional.multilabel_soft_margin_loss(torch.tensor(x), torch.tensor(y), reduction="none")).all()
    xt = torch.tensor(x).requires_grad_()
    loss = st.multilabel_soft_margin_loss(xt, torch.tensor(y), reduction="none", validate=False, **kwargs)
    assert torch.isnan(loss).all(), loss
    loss.sum().backward()
    assert torch.isnan(xt.grad[:, 0]).all(), xt.grad


@pytest.mark.parametrize("options", _NAN_OPTIONS, ids=str)
def test_a_nan_target_gives_nan_in_numpy_and_jax(options, monkeypatch):
    from softmargin.kernels import cpu

    x, y = _nan_problem()
    kwargs = dict(options)
    if kwargs.pop("pos_weight", False):
        kwargs["pos_weight"] = np.full(2, 2.0, dtype=np.float32)
    assert np.isnan(snp.multilabel_soft_margin_loss(x, y, reduction="none", validate=False, **kwargs)).all()
    monkeypatch.setattr(cpu, "kernel", lambda: None)  # the chunked NumPy path (the shared formula)
    assert np.isnan(snp.multilabel_soft_margin_loss(x, y, reduction="none", validate=False, **kwargs)).all()
    monkeypatch.undo()
    jax = pytest.importorskip("jax")
    import softmargin.jax as sj

    for impl in ("xla", "callback"):
        loss = sj.multilabel_soft_margin_loss(jax.numpy.asarray(x), jax.numpy.asarray(y), reduction="none",
                                              validate=False, impl=impl, **kwargs)  # fmt: skip
        assert np.isnan(np.asarray(loss)).all(), (impl, loss)
