"""Sparse targets in softmargin.jax: label lists, (indptr, indices[, values]) and BCOO, never made dense."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import RTOL, assert_close

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
sparse = pytest.importorskip("jax.experimental.sparse")

import softmargin.numpy as oracle
from softmargin.jax import multilabel_soft_margin_loss


def _problem(rng, shape=(6, 9)):
    x = rng.standard_normal(shape) * 3
    y = (rng.random(shape) < 0.25).astype(np.float64)
    y[..., 0, :] = 0  # a sample with no positive
    return x, y


@pytest.mark.parametrize("options", [{}, {"weight": "w", "pos_weight": "w"}, {"label_smoothing": 0.1, "gamma_neg": 2.0, "clip": 0.05}])
@pytest.mark.parametrize("form", ["lists", "csr", "bcoo", "bcoo jit"])
def test_sparse_forms_equal_the_dense_target(form, options, rng):
    x, y = _problem(rng)
    options = {k: jnp.asarray(rng.random(9) + 0.5) if v == "w" else v for k, v in options.items()}
    if form == "lists":
        target = [list(np.flatnonzero(row)) for row in y]
    elif form == "csr":
        target = (np.concatenate([[0], np.cumsum(y.sum(1))]).astype(int), np.nonzero(y)[1])
    else:
        target = sparse.BCOO.fromdense(jnp.asarray(y))
    f = lambda x, t: multilabel_soft_margin_loss(x, t, reduction="none", validate=form != "bcoo jit", **options).sum()
    if form == "bcoo jit":
        f = jax.jit(f)
    loss, grad = jax.value_and_grad(f)(jnp.asarray(x), target)
    expected, expected_grad = oracle.multilabel_soft_margin_loss_and_grad(x, y, reduction="none", **{k: np.asarray(v) if hasattr(v, "shape") else v for k, v in options.items()})
    assert_close(loss, expected.sum(), RTOL["float64"], "loss")
    assert_close(grad, expected_grad, RTOL["float64"], "grad")


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1, "gamma_pos": 1.0, "gamma_neg": 2.0, "clip": 0.05}])
@pytest.mark.parametrize("form", ["lists", "bcoo", "bcoo jit"])
def test_gradients_of_weight_and_pos_weight_with_a_sparse_target(form, options, rng):
    """jax.grad with respect to weight or pos_weight with a sparse target failed (AttributeError: 'SparseRows'
    object has no attribute 'astype'); they equal the dense target's, with soft values and a batch with more axes."""
    x, y = _problem(rng, (2, 3, 9))
    y[0, 1, 4] = 0.4
    w, pw = jnp.asarray(rng.random((3, 9)) + 0.5), jnp.asarray(rng.random(9) + 0.5)
    if form == "lists":
        target = [list(np.flatnonzero(row)) for row in y.reshape(-1, 9)]
        y = (y > 0).astype(np.float64)  # label lists are hard positives
    else:
        target = sparse.BCOO.fromdense(jnp.asarray(y))
    f = lambda x, t, w, pw: multilabel_soft_margin_loss(x, t, w, "sum", pos_weight=pw, validate=form != "bcoo jit", **options)
    ours = (jax.jit(jax.grad(f, (0, 2, 3))) if form == "bcoo jit" else jax.grad(f, (0, 2, 3)))(jnp.asarray(x), target, w, pw)
    expected = jax.grad(f, (0, 2, 3))(jnp.asarray(x), jnp.asarray(y), w, pw)
    for name, a, e in zip(("input", "weight", "pos_weight"), ours, expected):
        assert_close(a, e, RTOL["float64"], name)


def test_soft_values_and_duplicates_in_bcoo(rng):
    x, _ = _problem(rng, (3, 4))
    indices = jnp.asarray([[0, 1], [0, 1], [2, 3]])
    target = sparse.BCOO((jnp.asarray([0.25, 0.5, 0.3]), indices), shape=(3, 4))  # BCOO sums duplicates
    dense = np.zeros((3, 4))
    dense[0, 1], dense[2, 3] = 0.75, 0.3
    loss = multilabel_soft_margin_loss(jnp.asarray(x), target)
    assert_close(loss, oracle.multilabel_soft_margin_loss(x, dense), RTOL["float64"])
    too_big = sparse.BCOO((jnp.asarray([0.75, 0.5]), jnp.asarray([[0, 1], [0, 1]])), shape=(3, 4))
    with pytest.raises(ValueError, match=r"target has 1 value outside \[0, 1\]"):
        multilabel_soft_margin_loss(jnp.asarray(x), too_big)


def test_sparse_target_of_a_batch_with_more_axes(rng):
    x, y = _problem(rng, (2, 3, 5))
    target = sparse.BCOO.fromdense(jnp.asarray(y))
    assert_close(multilabel_soft_margin_loss(jnp.asarray(x), target, reduction="none"),
                 oracle.multilabel_soft_margin_loss(x, y, reduction="none"), RTOL["float64"])  # fmt: skip


def test_sparse_errors():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"sparse target has shape \(2, 4\)"):
        multilabel_soft_margin_loss(x, sparse.BCOO.fromdense(jnp.zeros((2, 4))))
    with pytest.raises(ValueError, match="sparse target has a label index 3 outside"):
        multilabel_soft_margin_loss(x, [[0], [3]])
    with pytest.raises(ValueError, match="a sparse target is not differentiable"):
        jax.grad(lambda v: multilabel_soft_margin_loss(x, sparse.BCOO((v, jnp.asarray([[0, 1]])), shape=(2, 3))))(jnp.ones(1))
    # a dense 0/1 target given as a nested list: the advice is JAX's (it named torch.tensor and torch.ones)
    with pytest.raises(ValueError, match=r"as many as the input's classes.*jnp.asarray\(target\).*jnp.ones$"):
        multilabel_soft_margin_loss(x, [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize(("shape", "target"), [((5,), [0, 3]), ((2, 5), [[0, 3], 1])])
def test_a_flat_label_list_is_a_type_error_saying_what_is_expected(shape, target):
    """One sample's labels given flat ([0, 3] for a 1-D input, whose one sample wants [[0, 3]]) failed deep in the
    conversion with "object of type 'int' has no len()"; now a TypeError names the form expected."""
    with pytest.raises(TypeError, match=r"target is a list holding a int \(\d\): expected label lists, one list per sample \(\[\[0, 3\]\]"):
        multilabel_soft_margin_loss(jnp.zeros(shape), target)
    expected = multilabel_soft_margin_loss(jnp.zeros(5), jnp.asarray([1.0, 0, 0, 1, 0]))
    assert_close(np.asarray(multilabel_soft_margin_loss(jnp.zeros(5), [[0, 3]])), np.asarray(expected), RTOL["float64"])
