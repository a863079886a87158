"""softmargin.multilabel_soft_margin_loss: one function, the backend chosen from the input's type."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import RTOL, SEED_LABELS, SEED_LOGITS, SEED_WEIGHTS, assert_close, reference_loss

import softmargin


def test_numpy_in_numpy_out():
    loss = softmargin.multilabel_soft_margin_loss(np.array(SEED_LOGITS), np.array(SEED_LABELS), SEED_WEIGHTS)
    assert isinstance(loss, (np.ndarray, np.generic))
    assert_close(loss, reference_loss(SEED_LOGITS, SEED_LABELS, SEED_WEIGHTS), RTOL["float64"])


def test_torch_in_torch_out():
    torch = pytest.importorskip("torch")
    x = torch.tensor(SEED_LOGITS, dtype=torch.float64, requires_grad=True)
    loss = softmargin.multilabel_soft_margin_loss(x, torch.tensor(SEED_LABELS, dtype=torch.float64), reduction="sum", label_smoothing=0.0)
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    assert_close(loss.detach(), reference_loss(SEED_LOGITS, SEED_LABELS, reduction="sum"), RTOL["float64"])


def test_jax_in_jax_out():
    jax = pytest.importorskip("jax")
    x = jax.numpy.asarray(SEED_LOGITS, jax.numpy.float32)
    loss = softmargin.multilabel_soft_margin_loss(x, jax.numpy.asarray(SEED_LABELS, jax.numpy.float32), reduction="none")
    assert isinstance(loss, jax.Array)
    assert_close(loss, reference_loss(SEED_LOGITS, SEED_LABELS, reduction="none"), RTOL["float32"])
    grad = jax.jit(jax.grad(lambda x: softmargin.multilabel_soft_margin_loss(x, jax.numpy.zeros((2, 3)), validate=False)))(x)
    assert grad.shape == (2, 3)


def test_unknown_type_is_a_type_error():
    with pytest.raises(TypeError, match="input is a builtins.list: expected a NumPy array, a torch.Tensor or a jax.Array"):
        softmargin.multilabel_soft_margin_loss([[0.5]], [[1.0]])


def test_import_stays_light():
    """Neither importing softmargin nor a NumPy call imports torch, jax or keras."""
    code = (
        "import sys, numpy as np, softmargin; softmargin.multilabel_soft_margin_loss(np.zeros((2, 3)), np.zeros((2, 3)));"
        "print(sorted(m for m in ('torch', 'jax', 'keras', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
