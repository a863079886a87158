"""Hypothesis: softmargin.jax equals the NumPy backend over shapes, dtypes, reductions and every option."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import RTOL, assert_close

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
from hypothesis import given, settings
from hypothesis import strategies as st

import softmargin.numpy as oracle
from softmargin.jax import multilabel_soft_margin_loss

problems = st.fixed_dictionaries(
    {
        "shape": st.tuples(st.integers(1, 4), st.integers(1, 6)),
        "dtype": st.sampled_from(["float32", "float64"]),
        "reduction": st.sampled_from(["none", "mean", "sum"]),
        "scale": st.sampled_from([0.1, 3.0, 30.0]),
        "soft": st.booleans(),
        "weight": st.booleans(),
        "pos_weight": st.booleans(),
        "mask": st.booleans(),
        "label_smoothing": st.sampled_from([0.0, 0.1]),
        "gamma_pos": st.sampled_from([0.0, 1.0]),
        "gamma_neg": st.sampled_from([0.0, 2.0, 4.0]),
        "clip": st.sampled_from([0.0, 0.05]),
        "seed": st.integers(0, 2**16),
        "impl": st.sampled_from(["xla", "callback"]),
    }
)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(problems)
def test_equals_the_numpy_backend(p):
    rng = np.random.default_rng(p["seed"])
    shape = p["shape"]
    x = (rng.standard_normal(shape) * p["scale"]).astype(p["dtype"])
    y = rng.random(shape) if p["soft"] else (rng.random(shape) < 0.3).astype(np.float64)
    y = y.astype(p["dtype"])
    kwargs = {k: p[k] for k in ("label_smoothing", "gamma_pos", "gamma_neg", "clip")}
    if p["weight"]:
        kwargs["weight"] = (rng.random(shape[-1]) * 2).astype(p["dtype"])
    if p["pos_weight"]:
        kwargs["pos_weight"] = (rng.random(shape[-1]) + 0.5).astype(p["dtype"])
    if p["mask"]:
        kwargs["mask"] = rng.random(shape) < 0.7
    expected, expected_grad = oracle.multilabel_soft_margin_loss_and_grad(x, y, reduction=p["reduction"], **kwargs)
    jkw = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    f = lambda x: multilabel_soft_margin_loss(x, jnp.asarray(y), reduction=p["reduction"], impl=p["impl"], **jkw)
    loss, grad = f(jnp.asarray(x)), jax.grad(lambda x: f(x).sum())(jnp.asarray(x))
    rtol = RTOL[p["dtype"]] * 4  # float32: the two backends accumulate in different precisions
    assert_close(loss, expected, rtol, "loss")
    assert_close(grad, expected_grad, rtol, "grad")
