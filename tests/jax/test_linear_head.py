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


@pytest.mark.parametrize(("hidden_dtype", "weight_dtype"), [("bfloat16", "float32"), ("float16", "float32"), ("float32", "float64")])
def test_mixed_precision_gives_the_logits_dtype(hidden_dtype, weight_dtype, rng):
    """Half-precision features with a float32 head (or float32 features with a float64 head, x64): the loss on the
    full logits is in their dtype (hidden @ weight.T promotes); the head computed in and returned hidden's dtype (a
    bfloat16 loss, 2e-3 off; float64 weights narrowed to float32). Gradients keep each operand's dtype."""
    n, h, c = 16, 8, 300
    hidden = jnp.asarray(rng.standard_normal((n, h)), hidden_dtype)
    weight, bias = jnp.asarray(rng.standard_normal((c, h)) * 0.3, weight_dtype), jnp.asarray(rng.standard_normal(c), weight_dtype)
    y = jnp.asarray(rng.random((n, c)) < 0.3, jnp.float32)
    fused = lambda hd, w, b: linear_multilabel_soft_margin_loss(hd, w, b, y, chunk_size=64)
    full = lambda hd, w, b: multilabel_soft_margin_loss(hd @ w.T + b, y)
    (ours, ours_grads), (theirs, their_grads) = (jax.value_and_grad(f, (0, 1, 2))(hidden, weight, bias) for f in (fused, full))
    assert ours.dtype == theirs.dtype == jnp.dtype(weight_dtype)
    assert_close(ours, theirs, RTOL[weight_dtype], "loss")
    for name, a, e, given in zip(("hidden", "weight", "bias"), ours_grads, their_grads, (hidden, weight, bias)):
        assert a.dtype == given.dtype, name
        assert_close(a.astype(jnp.float64), e.astype(jnp.float64), RTOL[str(given.dtype)], name)


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



def test_chunk_size_takes_numpy_integers():
    """chunk_size=np.int64(2) (a size computed with NumPy) was refused as "chunk_size=np.int64(2): expected a
    positive int"; it is now taken, as torch's head takes it. Floats, bools and non-positive sizes stay refused."""
    hidden, weight, y = jnp.ones((2, 3)), jnp.asarray(np.arange(12.0).reshape(4, 3) / 10), jnp.zeros((2, 4))
    expected = multilabel_soft_margin_loss(hidden @ weight.T, y)
    got = linear_multilabel_soft_margin_loss(hidden, weight, None, y, chunk_size=np.int64(3))
    assert_close(np.asarray(got), np.asarray(expected), RTOL["float64"])
    for size in (0, -1, 2.0, True, "4"):
        with pytest.raises(ValueError, match=rf"chunk_size={size!r}: expected a positive integer"):
            linear_multilabel_soft_margin_loss(hidden, weight, None, y, chunk_size=size)

def test_under_shard_map_data_and_label_parallel():
    """Inside shard_map the head failed for the plain data-parallel use (rows split, weight replicated with P()):
    its scan carry started as a replicated zero and came out varying over the mesh axis, which JAX refuses. Now
    the operands are cast to vary alike (a replicated operand's cotangent is psum'ed) and the carry with them. Data
    parallel (rows split) and label parallel (labels split, hidden replicated), with options and a sparse target,
    jitted and not: the loss and the gradients w.r.t. hidden, weight and bias are the unsharded head's."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import numpy as np, jax, jax.numpy as jnp
        from jax.sharding import Mesh, PartitionSpec as P
        from softmargin.jax import linear_multilabel_soft_margin_loss as head, multilabel_soft_margin_loss as loss
        assert len(jax.devices()) == 2
        rng = np.random.default_rng(0)
        n, d, c = 8, 5, 12
        h = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
        W = jnp.asarray(rng.standard_normal((c, d)), jnp.float32)
        b = jnp.asarray(rng.standard_normal(c), jnp.float32)
        y = jnp.asarray(rng.random((n, c)) < 0.3, jnp.float32)
        pw = jnp.asarray(rng.random(c) + 0.5, jnp.float32)
        mesh = Mesh(np.array(jax.devices()), ("d",))
        kw = dict(reduction="sum", validate=False, pos_weight=None, gamma_neg=2.0, chunk_size=4)
        def check(got, ref, what):
            for a, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
                assert a.shape == r.shape and np.allclose(a, r, rtol=2e-5, atol=1e-6), (what, a, r)
        # data parallel: each shard's rows; the per-shard sums psum'ed
        whole = lambda h, W, b: loss(h @ W.T + b, y, pos_weight=pw, reduction="sum", gamma_neg=2.0)
        ref = jax.value_and_grad(whole, argnums=(0, 1, 2))(h, W, b)
        local = lambda h, W, b, y, pw: jax.lax.psum(head(h, W, b, y, **{**kw, "pos_weight": pw}), "d")
        data = jax.shard_map(local, mesh=mesh, in_specs=(P("d"), P(), P(), P("d"), P()), out_specs=P())
        for name, f in (("data jit", jax.jit(data)), ("data eager", data)):
            check(jax.value_and_grad(lambda h, W, b: f(h, W, b, y, pw), argnums=(0, 1, 2))(h, W, b), ref, name)
        # a sparse target (label lists) in the data-parallel head, concrete, closed over per shard is not possible:
        # the unsharded head with label lists against the dense one instead, under jit
        lists = [list(np.flatnonzero(r)) for r in np.asarray(y)]
        got = jax.jit(jax.value_and_grad(lambda h, W, b: head(h, W, b, lists, **{**kw, "pos_weight": pw}), argnums=(0, 1, 2)))(h, W, b)
        check(got, ref, "sparse")
        # label parallel: each shard's labels; the per-shard sums over its labels, times its share of C, psum'ed
        def local_labels(h, W, b, y, pw):
            part = head(h, W, b, y, **{**kw, "pos_weight": pw}) * (W.shape[0] / c)
            return jax.lax.psum(part, "d")
        labels = jax.shard_map(local_labels, mesh=mesh, in_specs=(P(), P("d"), P("d"), P(None, "d"), P("d")), out_specs=P())
        for name, f in (("labels jit", jax.jit(labels)), ("labels eager", labels)):
            check(jax.value_and_grad(lambda h, W, b: f(h, W, b, y, pw), argnums=(0, 1, 2))(h, W, b), ref, name)
        # inside shard_map the head cannot tell what is differentiated: a constant's gradient is NaN, never 0
        cw = jnp.ones(c, jnp.float32)
        local_cw = lambda h, y, cw: jax.lax.psum(head(h, W, b, y, class_weight=cw, reduction="sum", validate=False), "d")
        with_cw = jax.shard_map(local_cw, mesh=mesh, in_specs=(P("d"), P("d"), P()), out_specs=P())
        assert np.isnan(np.asarray(jax.grad(with_cw, argnums=2)(h, y, cw))).all()
        # arrays sharded over an Explicit axis (jax.make_mesh's default in JAX 0.10): the walk's products over
        # sharded rows were refused ("Contracting dimensions are sharded"); rows or labels split, the loss and the
        # gradients equal the unsharded ones and keep their shardings
        if hasattr(jax.sharding, "AxisType") and hasattr(jax.sharding, "use_abstract_mesh"):
            explicit = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
            put = lambda a, spec: jax.device_put(a, jax.sharding.NamedSharding(explicit, spec))
            for reduction in ("mean", "none"):
                f = lambda h, W, y: head(h, W, b, y, reduction=reduction, validate=False).sum()
                ref = jax.value_and_grad(f, argnums=(0, 1))(h, W, y)
                for split, args in (("rows", (put(h, P("d", None)), W, put(y, P("d", None)))), ("labels", (h, put(W, P("d", None)), y))):
                    with jax.set_mesh(explicit):
                        for name, g in (("jit", jax.jit(jax.value_and_grad(f, argnums=(0, 1)))), ("eager", jax.value_and_grad(f, argnums=(0, 1)))):
                            got = g(*args)
                            check(got, ref, f"explicit {reduction} {split} {name}")
                            assert jax.typeof(got[1][0]).sharding.spec[0] == ("d" if split == "rows" else None)
                            assert jax.typeof(got[1][1]).sharding.spec[0] == ("d" if split == "labels" else None)
        print("ok")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.parametrize("jit", [False, True])
def test_gradients_it_does_not_make_are_refused(jit, rng):
    """jax.grad with respect to class_weight, pos_weight or target came back all zeros (the backward pass returned
    None for them): a silently wrong gradient. Asked for, they are refused by name; stop_gradient says "constant"."""
    hidden, weight = jnp.asarray(rng.standard_normal((6, 4))), jnp.asarray(rng.standard_normal((5, 4)))
    y = jnp.asarray((rng.random((6, 5)) < 0.3).astype(np.float64))
    cw, pw = jnp.asarray(rng.random(5) + 0.5), jnp.asarray(rng.random(5) + 0.5)
    loss = lambda cw, pw, y: linear_multilabel_soft_margin_loss(hidden, weight, None, y, class_weight=cw, pos_weight=pw, validate=False)
    for argnum, name in enumerate(("class_weight", "pos_weight", "target")):
        grad = jax.grad(loss, argnums=argnum)
        with pytest.raises(ValueError, match=rf"^{name} is differentiated, but the fused linear head makes gradients for hidden"):
            (jax.jit(grad) if jit else grad)(cw, pw, y)
    constant = lambda cw: linear_multilabel_soft_margin_loss(hidden, weight, None, y, class_weight=jax.lax.stop_gradient(cw))
    assert not np.asarray(jax.grad(constant)(cw)).any()
    full = lambda w: multilabel_soft_margin_loss(hidden @ w.T, y, cw, pos_weight=pw)
    fused = lambda w: linear_multilabel_soft_margin_loss(hidden, w, None, y, class_weight=cw, pos_weight=pw)
    assert_close(np.asarray(jax.grad(fused)(weight)), np.asarray(jax.grad(full)(weight)), RTOL["float64"])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("rows", "labels"), [(0, 3), (2, 0)])
def test_empty_batches_and_no_labels_give_torchs_values(rows, labels, reduction):
    """No row (mean) or no label raised ZeroDivisionError or a slice error in the walk (review); the head now gives
    the loss of the empty logits, torch's values, with gradients of the operands' shapes."""
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.multilabel_soft_margin_loss(torch.zeros(rows, labels), torch.zeros(rows, labels), reduction=reduction)
    hidden, weight = jnp.zeros((rows, 4)), jnp.zeros((labels, 4))
    for target in (jnp.zeros((rows, labels)), [[] for _ in range(rows)]):
        got = linear_multilabel_soft_margin_loss(hidden, weight, jnp.zeros(labels), target, reduction=reduction)
        np.testing.assert_array_equal(np.asarray(got), expected.numpy())
    f = lambda h, w: linear_multilabel_soft_margin_loss(h, w, None, jnp.zeros((rows, labels)), reduction=reduction).sum()
    grads = jax.grad(f, argnums=(0, 1))(hidden, weight)
    assert grads[0].shape == hidden.shape and grads[1].shape == weight.shape


@pytest.mark.parametrize("chunk_size", [2, 4, 5])
def test_an_infinite_feature_with_labels_not_a_multiple_of_the_chunk(chunk_size, rng):
    """The walk pads the labels to a multiple of the chunk with zero weight rows, whose logits are inf * 0 = NaN for
    an infinite feature: hidden's gradient came out NaN for chunk sizes 2 and 4 of 5 labels, finite for 5 and on the
    full logits. The padded labels' gradients are now left out; every gradient equals the full logits'."""
    hidden = jnp.asarray([[np.inf, 1.0], [0.5, -1.0]])
    weight, bias = jnp.asarray(rng.standard_normal((5, 2))), jnp.asarray(rng.standard_normal(5))
    y = jnp.asarray(rng.random((2, 5)) < 0.5, jnp.float64)
    fused = lambda h, w, b: linear_multilabel_soft_margin_loss(h, w, b, y, chunk_size=chunk_size)
    full = lambda h, w, b: multilabel_soft_margin_loss(h @ w.T + b, y)
    got, expected = (jax.grad(f, argnums=(0, 1, 2))(hidden, weight, bias) for f in (fused, full))
    assert np.isfinite(np.asarray(expected[0])).all()
    for a, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=RTOL["float64"])


@pytest.mark.parametrize(("name", "value", "dtype"), [("class_weight", 1e39, jnp.float64), ("pos_weight", 1e39, jnp.float64), ("class_weight", 1e37, jnp.float32)])
def test_weights_beyond_float32_as_the_loss_on_the_full_logits(name, value, dtype, rng):
    """With float32 logits the head narrowed a float64 class_weight or pos_weight (x64) to float32 (1e39: inf) and
    summed the weighted losses over the labels before dividing by C (100 labels weighted 1e37: 7e38, inf in
    float32): loss and gradients were inf where the loss on the full logits is finite, and equal to a float64
    formula. Weights now multiply in the loss's dtype, each label's loss divided by C first, as the loss's XLA path."""
    hidden = jnp.asarray(rng.standard_normal((2, 3)), jnp.float32)
    weight = jnp.asarray(rng.standard_normal((100, 3)), jnp.float32)
    y = jnp.zeros((2, 100)).at[:, 0].set(1.0)
    w = jnp.full(100, value, dtype) if dtype == jnp.float32 else jnp.ones(100).at[0].set(value)
    fused = lambda W: linear_multilabel_soft_margin_loss(hidden, W, None, y, chunk_size=32, **{name: w})
    full = lambda W: multilabel_soft_margin_loss(hidden @ W.T, y, **{"weight" if name == "class_weight" else name: w})
    x, w64 = np.asarray(hidden @ weight.T, np.float64), np.asarray(w, np.float64)
    yn = np.asarray(y)
    terms = (yn * (w64 if name == "pos_weight" else 1) * np.logaddexp(0, -x) + (1 - yn) * np.logaddexp(0, x))
    expected = (terms * (w64 if name == "class_weight" else 1)).mean()
    (got, got_grad), (full_value, full_grad) = (jax.value_and_grad(f)(weight) for f in (fused, full))
    assert np.isfinite(float(got)) and float(got) == pytest.approx(expected, rel=1e-5)
    assert float(full_value) == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(np.asarray(got_grad)).all()
    assert_close(np.asarray(got_grad), np.asarray(full_grad), RTOL["float32"])
