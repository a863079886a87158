"""The fused linear head in JAX against the loss on the full logits, and its memory at 100,000 labels."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import RTOL, assert_close

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from softmargin.jax import linear_multilabel_soft_margin_loss, multilabel_soft_margin_loss


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1, "gamma_pos": 1.0, "gamma_neg": 3.0, "clip": 0.05}])
@pytest.mark.parametrize(("sparse", "bias"), [(False, True), (True, False)])
def test_matches_the_loss_on_full_logits(reduction, options, sparse, bias, rng):
    n, h, c = 7, 5, 23  # 23 labels in chunks of 5: a padded last chunk
    hidden, weight = jnp.asarray(rng.standard_normal((n, h))), jnp.asarray(rng.standard_normal((c, h)))
    b = jnp.asarray(rng.standard_normal(c)) if bias else None
    y = (rng.random((n, c)) < 0.2).astype(np.float64)
    cw, pw = jnp.asarray(rng.random(c) + 0.5), jnp.asarray(rng.random(c) + 0.5)
    target = [list(np.flatnonzero(row)) for row in y] if sparse else jnp.asarray(y)
    kw = dict(reduction=reduction, **options)
    fused = lambda hd, w, b: linear_multilabel_soft_margin_loss(hd, w, b, target, class_weight=cw, pos_weight=pw, chunk_size=5, **kw).sum()
    full = lambda hd, w, b: multilabel_soft_margin_loss(hd @ w.T + (0 if b is None else b), jnp.asarray(y), cw, pos_weight=pw, **kw).sum()
    argnums = (0, 1, 2) if bias else (0, 1)
    ours = jax.value_and_grad(fused, argnums)(hidden, weight, b)
    theirs = jax.value_and_grad(full, argnums)(hidden, weight, b)
    assert_close(ours[0], theirs[0], RTOL["float64"], "loss")
    for name, a, e in zip(("hidden", "weight", "bias"), ours[1], theirs[1]):
        assert_close(a, e, RTOL["float64"], name)


def test_jit_and_float32(rng):
    hidden, weight = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32), jnp.asarray(rng.standard_normal((300, 8)), jnp.float32)
    y = jnp.asarray(rng.random((16, 300)) < 0.05, jnp.float32)
    fused = jax.jit(jax.value_and_grad(lambda w: linear_multilabel_soft_margin_loss(hidden, w, None, y, chunk_size=64, validate=False)))
    full = jax.value_and_grad(lambda w: multilabel_soft_margin_loss(hidden @ w.T, y))
    (a, ga), (b, gb) = fused(weight), full(weight)
    assert_close(a, b, RTOL["float32"], "loss")
    assert_close(ga, gb, 1e-5, "grad")


def test_never_holds_the_logits_at_100k_labels(rng):
    """XLA's own buffer assignment: the compiled step's temporaries stay far below one N x C float32 array."""
    n, h, c = 256, 32, 100_000
    hidden = jax.ShapeDtypeStruct((n, h), jnp.float32)
    weight = jax.ShapeDtypeStruct((c, h), jnp.float32)
    labels = [list(rng.choice(c, 4, replace=False)) for _ in range(n)]

    def step(hd, w):
        return jax.value_and_grad(lambda w: linear_multilabel_soft_margin_loss(hd, w, None, labels, chunk_size=2048, validate=False))(w)

    memory = jax.jit(step).lower(hidden, weight).compile().memory_analysis()
    logits_bytes = n * c * 4
    # what remains is parameter-sized (the weight's gradient, stacked per chunk, and its padded copy) and a few
    # (256, 2048) chunks: about 32 MB against the logits' 102 MB
    assert memory.temp_size_in_bytes < logits_bytes / 2, (memory.temp_size_in_bytes, logits_bytes)
    plain = jax.jit(lambda hd, w: jax.value_and_grad(lambda w: multilabel_soft_margin_loss(hd @ w.T, jnp.zeros((n, c)), validate=False))(w))
    assert plain.lower(hidden, weight).compile().memory_analysis().temp_size_in_bytes > logits_bytes  # the test can fail


def test_errors():
    hidden, weight = jnp.zeros((2, 3)), jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"hidden.shape == \(2, 3\), weight.shape == \(4, 2\): expected \(N, H\) and \(C, H\)"):
        linear_multilabel_soft_margin_loss(hidden, jnp.zeros((4, 2)), None, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"bias.shape == \(3,\), expected \(4,\): one per label"):
        linear_multilabel_soft_margin_loss(hidden, weight, jnp.zeros(3), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"target.shape == \(2, 3\), expected input.shape == \(2, 4\)"):
        linear_multilabel_soft_margin_loss(hidden, weight, None, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="class_weight has 1 value outside the finite range"):
        linear_multilabel_soft_margin_loss(hidden, weight, None, jnp.zeros((2, 4)), class_weight=jnp.ones(4).at[0].set(-1.0))
