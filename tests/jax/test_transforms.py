"""softmargin.jax under jit, vmap, shard_map, checkify; its validation messages against the NumPy backend's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import RTOL, assert_close

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
from jax.experimental import checkify

import softmargin.numpy as oracle
from softmargin.jax import multilabel_soft_margin_loss


@pytest.mark.parametrize("impl", ["xla", "callback"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_jit_value_and_grad_equal_eager(impl, reduction, rng):
    x = jnp.asarray(rng.standard_normal((8, 12)), jnp.float32)
    y = jnp.asarray(rng.random((8, 12)) < 0.3, jnp.float32)
    w = jnp.asarray(rng.random(12) + 0.5, jnp.float32)
    f = lambda x, y, w: multilabel_soft_margin_loss(x, y, w, reduction=reduction, validate=False, impl=impl).sum()
    eager = jax.value_and_grad(f)(x, y, w)
    jitted = jax.jit(jax.value_and_grad(f))(x, y, w)
    expected = oracle.multilabel_soft_margin_loss_and_grad(np.asarray(x), np.asarray(y), np.asarray(w), reduction)
    for a, b in zip(eager, jitted):
        assert_close(a, b, RTOL["float32"])
    assert_close(jitted[0], np.sum(expected[0]), RTOL["float32"], "loss")
    assert_close(jitted[1], expected[1], RTOL["float32"], "grad")


@pytest.mark.parametrize("impl", ["xla", "callback"])
def test_vmap_maps_independent_problems(impl, rng):
    x = jnp.asarray(rng.standard_normal((3, 5, 7)))
    y = jnp.asarray(rng.random((3, 5, 7)) < 0.3, jnp.float64)
    f = lambda x, y: multilabel_soft_margin_loss(x, y, validate=False, impl=impl)
    mapped = jax.vmap(f)(x, y)
    grads = jax.vmap(jax.grad(f))(x, y)
    for i in range(3):
        loss, grad = oracle.multilabel_soft_margin_loss_and_grad(np.asarray(x[i]), np.asarray(y[i]))
        assert_close(mapped[i], loss, RTOL["float64"], "loss")
        assert_close(grads[i], grad, RTOL["float64"], "grad")


@pytest.mark.slow
def test_shard_map_and_pmap_over_two_cpu_devices():
    """Rows split over two (virtual CPU) devices: the psum of each shard's "sum" is the whole batch's; pmap's
    per-device gradients are the whole batch's rows."""
    code = textwrap.dedent(
        """
        import numpy as np, jax, jax.numpy as jnp
        from jax.sharding import Mesh, PartitionSpec as P
        from softmargin.jax import multilabel_soft_margin_loss
        import softmargin.numpy as oracle
        assert len(jax.devices()) == 2
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((8, 6)).astype(np.float32), (rng.random((8, 6)) < 0.3).astype(np.float32)
        mesh = Mesh(np.array(jax.devices()), ("batch",))
        def local(x, y):
            loss = multilabel_soft_margin_loss(x, y, reduction="sum", validate=False)
            return jax.lax.psum(loss, "batch")
        f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("batch"), P("batch")), out_specs=P()))
        loss, grad = jax.value_and_grad(f)(jnp.asarray(x), jnp.asarray(y))
        ref, ref_grad = oracle.multilabel_soft_margin_loss_and_grad(x, y, reduction="sum")
        assert abs(float(loss) - float(ref)) <= 1e-5 * abs(float(ref)), (loss, ref)
        assert np.allclose(np.asarray(grad), ref_grad, rtol=1e-5, atol=1e-7)
        per_device = jax.pmap(jax.grad(lambda x, y: multilabel_soft_margin_loss(x, y, reduction="sum", validate=False)))
        assert np.allclose(np.asarray(per_device(x.reshape(2, 4, 6), y.reshape(2, 4, 6))).reshape(8, 6), ref_grad, rtol=1e-5, atol=1e-7)
        print("ok")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


@pytest.mark.slow
def test_shard_map_gradients_of_replicated_operands_equal_the_unsharded_ones():
    """Rows split over two (virtual CPU) devices, weight, pos_weight and mask replicated (``P()``): the gradients
    with respect to all four floating operands are the unsharded loss's, under jit and without it (a custom_vjp with
    symbolic zeros is not implemented under an un-jitted shard_map); impl="callback" is refused there (its results
    carry no mesh axes: the target's gradient came out twice the reference)."""
    code = textwrap.dedent(
        """
        import numpy as np, jax, jax.numpy as jnp
        from jax.sharding import Mesh, PartitionSpec as P
        from softmargin.jax import multilabel_soft_margin_loss as L
        assert len(jax.devices()) == 2
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((8, 6)), jnp.float32)
        y = jnp.asarray(rng.random((8, 6)), jnp.float32)
        w, pw = jnp.asarray(rng.random(6) + 0.5, jnp.float32), jnp.asarray(rng.random(6) + 0.5, jnp.float32)
        m = jnp.asarray([True, True, False, True, True, True])
        mesh = Mesh(np.array(jax.devices()), ("b",))
        specs = (P("b"), P("b"), P(), P(), P())
        # ("auto" takes XLA inside shard_map: one case each, plain and with options, keeps the run short)
        for impl, options in (("auto", {}), ("xla", {"gamma_neg": 2.0, "label_smoothing": 0.1})):
            kw = dict(reduction="sum", validate=False, impl=impl, **options)
            local = lambda x, y, w, pw, m: jax.lax.psum(L(x, y, w, pos_weight=pw, mask=m, **kw), "b")
            sharded = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())
            whole = lambda x, y, w, pw, m: L(x, y, w, pos_weight=pw, mask=m, **kw)
            ref = jax.value_and_grad(whole, argnums=(0, 1, 2, 3))(x, y, w, pw, m)
            # un-jitted shard_map runs op by op (about 22 s a case): once, with the options
            for name, f in (("jit", jax.jit(sharded)), ("eager", sharded))[: 2 if options else 1]:
                got = jax.value_and_grad(f, argnums=(0, 1, 2, 3))(x, y, w, pw, m)
                assert np.allclose(got[0], ref[0], rtol=1e-5), (impl, name, got[0], ref[0])
                for i, (a, b) in enumerate(zip(got[1], ref[1])):
                    assert a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-7), (impl, name, i, a, b)
                assert np.allclose(f(x, y, w, pw, m), ref[0], rtol=1e-5), (impl, name)
        local = lambda x, y: jax.lax.psum(L(x, y, reduction="sum", validate=False, impl="callback"), "b")
        try:
            jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("b"), P("b")), out_specs=P()))(x, y)
        except ValueError as error:
            assert "impl='callback' cannot run inside shard_map" in str(error), error
        else:
            raise AssertionError("impl='callback' was accepted inside shard_map")
        print("ok")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_callback_is_refused_inside_shard_map():
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:1]), ("b",))
    local = lambda x, y: jax.lax.psum(multilabel_soft_margin_loss(x, y, reduction="sum", validate=False, impl="callback"), "b")
    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("b"), P("b")), out_specs=P()))
    with pytest.raises(ValueError, match=r"impl='callback' cannot run inside shard_map \(the operands vary over mesh axes \['b'\]\).*expected impl='xla' or impl='auto'"):
        f(jnp.zeros((4, 3)), jnp.zeros((4, 3)))


def test_checkify_reports_a_bad_target_under_jit():
    x = jnp.zeros((2, 3))
    f = jax.jit(lambda x, y: multilabel_soft_margin_loss(x, y))
    err, _ = checkify.checkify(f)(x, jnp.full((2, 3), 0.5))
    assert err.get() is None
    err, _ = checkify.checkify(f)(x, jnp.full((2, 3), 1.5))
    assert "target has values outside [0, 1]" in err.get()
    err, _ = checkify.checkify(jax.jit(lambda w: multilabel_soft_margin_loss(x, jnp.zeros((2, 3)), w)))(-jnp.ones(3))
    assert "weight has values outside the finite range [0, inf)" in err.get()


@pytest.mark.parametrize("impl", ["callback", "xla"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "uint8"])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1, "gamma_neg": 2.0}])
@pytest.mark.parametrize("grad", [False, True])
def test_checkify_target_check_on_every_path(impl, dtype, options, grad, monkeypatch):
    """A traced target under checkify: the callback has the NumPy backend report the range (from the kernel as it
    reads where it looks, else one pass on the host), XLA checks it itself; every bad value is caught either way,
    with the same message, under value_and_grad and vmap too."""
    import softmargin.numpy as snp

    reported = []
    real = snp.loss_and_grad_reporting_target
    monkeypatch.setattr(snp, "loss_and_grad_reporting_target", lambda *a, **k: reported.append(1) or real(*a, **k))
    xdtype = "float32" if dtype == "uint8" else dtype
    x = jnp.asarray(np.linspace(-3, 3, 24).reshape(4, 6), xdtype)
    loss = lambda x, y: multilabel_soft_margin_loss(x, y, impl=impl, **options)
    f = jax.jit(checkify.checkify(jax.value_and_grad(loss) if grad else loss))
    good = jnp.asarray(np.eye(4, 6), dtype)
    bad_values = [2] if dtype == "uint8" else [1.5, -0.25, np.nan]
    err, _ = f(x, good)
    assert err.get() is None
    for value in bad_values:
        err, _ = f(x, good.at[2, 3].set(value))
        message = err.get()
        assert message is not None and "target has values outside [0, 1]" in message, (value, message)
        assert "(min " in message
    batched = jax.jit(checkify.checkify(jax.vmap(loss)))
    assert batched(jnp.stack([x, x]), jnp.stack([good, good]))[0].get() is None
    assert "outside [0, 1]" in batched(jnp.stack([x, x]), jnp.stack([good, good.at[0, 0].set(bad_values[0])]))[0].get()
    assert bool(reported) == (impl == "callback")


def test_traced_values_are_never_silently_accepted():
    """validate=True under a plain jit cannot check the values at trace time: it fails loudly, not silently."""
    f = jax.jit(lambda x, y: multilabel_soft_margin_loss(x, y))
    with pytest.raises(ValueError, match="checkify"):
        f(jnp.zeros((2, 3)), jnp.full((2, 3), 1.5))
    assert float(jax.jit(lambda x, y: multilabel_soft_margin_loss(x, y, validate=False))(jnp.zeros((2, 3)), jnp.zeros((2, 3)))) > 0


BAD_CALLS = {
    "reduction": (dict(reduction="avg"), ValueError),
    "input dtype": (dict(input="int"), TypeError),
    "0-d input": (dict(input="scalar"), ValueError),
    "target shape": (dict(target="short"), ValueError),
    "target complex": (dict(target="complex"), TypeError),
    "target range": (dict(target="big"), ValueError),
    "target nan": (dict(target="nan"), ValueError),
    "weight shape": (dict(weight=np.ones(4)), ValueError),
    "weight negative": (dict(weight=np.array([1.0, -1.0, 1.0])), ValueError),
    "weight inf": (dict(weight=np.array([1.0, np.inf, 1.0])), ValueError),
    "pos_weight zero": (dict(pos_weight=np.array([1.0, 0.0, 1.0])), ValueError),
    "mask dtype": (dict(mask=np.ones(3)), TypeError),
    "label_smoothing": (dict(label_smoothing=1.0), ValueError),
    "gamma type": (dict(gamma_pos="2"), TypeError),
    "clip": (dict(clip=-0.1), ValueError),
    "sparse index": (dict(target=[[0], [3]]), ValueError),
    "sparse repeat": (dict(target=[[0, 0], [1]]), ValueError),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_error_messages_are_the_numpy_backends(case):
    """The same exception type and message as softmargin.numpy for each bad argument."""
    kwargs, error = BAD_CALLS[case]
    kwargs = dict(kwargs)
    x = np.zeros((2, 3))
    y = np.zeros((2, 3))
    special = {"int": np.zeros((2, 3), np.int32), "scalar": np.float64(0.0), "short": np.zeros((2, 2)),
               "complex": np.zeros((2, 3), np.complex64), "big": np.full((2, 3), 2.0), "nan": np.full((2, 3), np.nan)}
    x = special.get(kwargs.pop("input", None), x)
    target = kwargs.pop("target", y)
    target = special.get(target, target) if isinstance(target, str) else target
    sparse_lists = isinstance(target, list)
    with pytest.raises(error) as ours:
        multilabel_soft_margin_loss(jnp.asarray(x), target if sparse_lists else jnp.asarray(target), **kwargs)
    with pytest.raises(error) as theirs:
        oracle.multilabel_soft_margin_loss(x, (np.array([0, len(target[0]), len(target[0]) + len(target[1])]), np.concatenate(target)) if sparse_lists else target, **kwargs)
    assert str(ours.value) == str(theirs.value)


def test_type_errors_name_the_argument():
    with pytest.raises(TypeError, match="input is a str: expected a jax.Array"):
        multilabel_soft_margin_loss("logits", jnp.zeros(3))
    with pytest.raises(ValueError, match="impl='triton' is not valid"):
        multilabel_soft_margin_loss(jnp.zeros(3), jnp.zeros(3), impl="triton")


def test_a_traced_option_is_a_type_error_naming_it():
    """An option passed through jit or vmap is a tracer: JAX's TracerBoolConversionError named nothing."""
    x, y = jnp.zeros((2, 3)), jnp.zeros((2, 3))
    expected = r"expected a static Python float \(an option decides which formula is computed: under jax.jit mark it static"
    with pytest.raises(TypeError, match=r"label_smoothing is a \w+ of shape \(\): " + expected):
        jax.jit(lambda x, eps: multilabel_soft_margin_loss(x, y, label_smoothing=eps, validate=False))(x, 0.1)
    with pytest.raises(TypeError, match=r"gamma_neg is a \w+ of shape \(\): " + expected):
        jax.vmap(lambda g: multilabel_soft_margin_loss(x, y, gamma_neg=g, validate=False))(jnp.asarray([1.0, 2.0]))
    static = jax.jit(lambda x, eps: multilabel_soft_margin_loss(x, y, label_smoothing=eps, validate=False), static_argnums=1)
    eager = multilabel_soft_margin_loss(x, y, label_smoothing=0.1)
    assert_close(static(x, 0.1), eager, RTOL["float32"])
    # and the float64 definition: x = 0 gives log 2 whatever the smoothed target
    assert_close(eager, np.log(2), RTOL["float32"])


def test_auto_takes_xla_for_logits_known_to_be_sharded():
    """impl="auto" took the host callback for logits split over several devices, which XLA then gathered onto one
    host (right values, no parallelism): a concrete sharded array, or a traced one whose type names an Explicit
    axis, now takes XLA; replicated logits keep the callback; the values equal the unsharded call's."""
    code = textwrap.dedent(
        """
        import numpy as np, jax, jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P
        from softmargin.jax import _ops, multilabel_soft_margin_loss as L
        if not _ops.numpy_backend_is_fused() or not hasattr(jax.sharding, "AxisType"):
            print("ok"); raise SystemExit
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((256, 256)), jnp.float32)
        y = jnp.asarray(rng.random((256, 256)) < 0.3, jnp.float32)
        assert _ops.resolve_impl("auto", x) == "callback"
        ref = L(x, y)
        for types in ((jax.sharding.AxisType.Explicit,), (jax.sharding.AxisType.Auto,)):
            mesh = jax.make_mesh((2,), ("d",), axis_types=types)
            xs, ys = (jax.device_put(a, NamedSharding(mesh, P("d", None))) for a in (x, y))
            assert _ops.resolve_impl("auto", xs) == "xla", types
            assert _ops.resolve_impl("auto", jax.device_put(x, NamedSharding(mesh, P()))) == "callback", types
            assert np.allclose(L(xs, ys), ref, rtol=1e-6), types
        explicit = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
        xs, ys = (jax.device_put(a, NamedSharding(explicit, P("d", None))) for a in (x, y))
        seen = []
        with jax.set_mesh(explicit):
            value = jax.jit(lambda a, b: seen.append(_ops.resolve_impl("auto", a)) or L(a, b, validate=False))(xs, ys)
        assert seen == ["xla"] and np.allclose(value, ref, rtol=1e-6), (seen, value, ref)
        print("ok")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_callback_gradient_of_logits_sharded_over_an_explicit_axis():
    """impl="callback" on logits sharded over an Explicit mesh axis: the values were right, but jax.grad failed
    inside JAX ("Custom VJP bwd rule must produce an output with the same type": the host's gradient came back
    replicated, float32[16,6], for logits typed float32[16@d,6]); the gradient now takes the logits' sharding, eager
    and jitted, and equals the unsharded one."""
    code = textwrap.dedent(
        """
        import numpy as np, jax, jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P
        from softmargin.jax import multilabel_soft_margin_loss as L
        if not hasattr(jax.sharding, "AxisType"):
            print("ok"); raise SystemExit
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((16, 6)), jnp.float32)
        y = jnp.asarray(rng.random((16, 6)) < 0.3, jnp.float32)
        w = jnp.asarray(rng.random(6) + 0.5, jnp.float32)
        explicit = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
        xs, ys = (jax.device_put(a, NamedSharding(explicit, P("d", None))) for a in (x, y))
        for reduction in ("mean", "none"):
            f = lambda x, w, y: L(x, y, w, reduction, impl="callback", validate=False).sum()
            expected = jax.grad(f, argnums=(0, 1))(x, w, y)
            with jax.set_mesh(explicit):
                for step in (jax.grad(f, argnums=(0, 1)), jax.jit(jax.grad(f, argnums=(0, 1)))):
                    gx, gw = step(xs, w, ys)
                    assert jax.typeof(gx).sharding.spec == jax.typeof(xs).sharding.spec, jax.typeof(gx)
                    assert np.allclose(gx, expected[0], rtol=1e-6) and np.allclose(gw, expected[1], rtol=1e-6)
                hessian = jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(f)(x, w, ys) ** 2)))(xs)
                assert np.allclose(hessian, jax.grad(lambda x: jnp.sum(jax.grad(f)(x, w, y) ** 2))(x), rtol=1e-5)
        print("ok")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
