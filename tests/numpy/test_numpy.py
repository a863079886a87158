"""softmargin.numpy against the independent float64 reference, torch-free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import RTOL, SEED_LABELS, SEED_LOGITS, SEED_WEIGHTS, assert_close, reference_grad, reference_loss

from softmargin.numpy import (
    multilabel_soft_margin_loss,
    multilabel_soft_margin_loss_and_grad,
    multilabel_soft_margin_loss_grad,
)

SHAPES = [(3,), (1, 1), (5, 7), (2, 3, 4), (4, 1, 3, 2), (300, 257)]


def test_seed_example():
    x = np.array(SEED_LOGITS, dtype=np.float32)
    y = np.array(SEED_LABELS, dtype=np.float32)
    assert abs(float(multilabel_soft_margin_loss(x, y, weight=SEED_WEIGHTS)) - 1.18012) < 1e-5
    # and to 1e-6 of the exact value the seed's 1.18012 rounds
    assert abs(float(multilabel_soft_margin_loss(x.astype(np.float64), y, SEED_WEIGHTS)) - 1.1801210) < 1e-6


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [None, "class", "full"])
def test_matches_reference(shape, reduction, dtype, weighted, rng):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    y = (rng.random(shape) < 0.3).astype(dtype)
    w = None
    if weighted == "class":
        w = rng.random(shape[-1]) * 2
    elif weighted == "full":
        w = rng.random(shape) * 2
    rtol = RTOL[np.dtype(dtype).name]
    loss = multilabel_soft_margin_loss(x, y, w, reduction)
    grad = multilabel_soft_margin_loss_grad(x, y, w, reduction)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype and grad.shape == x.shape
    assert np.shape(loss) == (shape[:-1] if reduction == "none" else ())
    assert_close(loss, reference_loss(x, y, w, reduction), rtol, "loss")
    assert_close(grad, reference_grad(x, y, w, reduction), rtol, "grad")
    both = multilabel_soft_margin_loss_and_grad(x, y, w, reduction)
    np.testing.assert_array_equal(both[0], loss)
    np.testing.assert_array_equal(both[1], grad)


def test_gradient_matches_finite_differences(rng):
    x = rng.standard_normal((3, 5))
    y = rng.random((3, 5))
    w = rng.random(5) + 0.5
    grad = multilabel_soft_margin_loss_grad(x, y, w)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        numeric[i] = (multilabel_soft_margin_loss(x + step, y, w) - multilabel_soft_margin_loss(x - step, y, w)) / (2 * eps)
    assert_close(grad, numeric, 1e-7, "finite differences")


def test_chunking_is_invisible_and_deterministic(rng, monkeypatch):
    import softmargin.numpy as snp

    x = rng.standard_normal((1000, 37))
    y = rng.random((1000, 37))
    whole = multilabel_soft_margin_loss_and_grad(x, y, reduction="none")
    monkeypatch.setattr(snp, "CHUNK_ELEMENTS", 100)  # 2 rows a chunk
    chunked = multilabel_soft_margin_loss_and_grad(x, y, reduction="none")
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])
    again = multilabel_soft_margin_loss_and_grad(x, y, reduction="none")
    np.testing.assert_array_equal(chunked[1], again[1])


def test_empty_batch_like_torch():
    x = np.zeros((0, 3), dtype=np.float32)
    assert np.isnan(multilabel_soft_margin_loss(x, x))
    assert multilabel_soft_margin_loss(x, x, reduction="sum") == 0
    assert multilabel_soft_margin_loss(x, x, reduction="none").shape == (0,)
    assert multilabel_soft_margin_loss_grad(x, x).shape == (0, 3)


def test_nan_logit_propagates():
    x = np.array([[np.nan, 0.0]], dtype=np.float32)
    y = np.array([[1.0, 0.0]], dtype=np.float32)
    assert np.isnan(multilabel_soft_margin_loss(x, y))
    assert np.isnan(multilabel_soft_margin_loss_grad(x, y)[0, 0])


def test_accepts_lists_and_int_targets():
    loss = multilabel_soft_margin_loss(SEED_LOGITS, SEED_LABELS, SEED_WEIGHTS)
    assert abs(float(loss) - 1.1801210) < 1e-6


def test_numpy_path_never_imports_torch():
    code = (
        "import sys, softmargin, softmargin.numpy as s; "
        "s.multilabel_soft_margin_loss([[1.0, 2.0]], [[0, 1]]); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
