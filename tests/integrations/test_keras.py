"""softmargin.keras.MultiLabelSoftMarginLoss in model.compile / model.fit, under the jax and the torch backends.

Each backend runs in its own process (KERAS_BACKEND is read when keras is first imported)."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if importlib.util.find_spec("keras") is None:  # not imported here: keras picks its backend at first import
    pytest.skip("keras is not installed", allow_module_level=True)

SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import numpy as np, keras
    spec = importlib.util.spec_from_file_location("helpers", sys.argv[1])  # by path: tests/ stays off sys.path
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    reference_loss = helpers.reference_loss
    from softmargin.keras import MultiLabelSoftMarginLoss
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 10)).astype("float32")
    Y = (X[:, :6] + 0.3 * rng.standard_normal((256, 6)) > 0.5).astype("float32")
    w = (rng.random(6) + 0.5).astype("float32")
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(6)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=MultiLabelSoftMarginLoss(weight=w))
    history = model.fit(X, Y, epochs=8, batch_size=32, verbose=0).history["loss"]
    logits = np.asarray(model.predict(X, verbose=0), dtype=np.float64)
    ours = float(model.evaluate(X, Y, batch_size=256, verbose=0))
    plain = MultiLabelSoftMarginLoss(gamma_neg=0.0)
    model.compile(loss=plain)
    unweighted = float(model.evaluate(X, Y, batch_size=256, verbose=0))
    model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True))
    bce = float(model.evaluate(X, Y, batch_size=256, verbose=0))
    config = MultiLabelSoftMarginLoss.from_config(MultiLabelSoftMarginLoss(weight=w, gamma_pos=1.0).get_config())
    print(json.dumps({"history": history, "ours": ours, "reference": float(reference_loss(logits, Y, w)),
                      "unweighted": unweighted, "bce": bce, "config_gamma_pos": config.get_config()["gamma_pos"]}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_model_fit(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    helpers = str(Path(__file__).resolve().parents[1] / "helpers.py")
    result = subprocess.run([sys.executable, "-c", SCRIPT, helpers], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["history"][-1] < 0.8 * out["history"][0], out["history"]  # it learns
    assert abs(out["ours"] - out["reference"]) <= 1e-5 * out["reference"]  # the weighted loss is the reference's
    assert abs(out["unweighted"] - out["bce"]) <= 1e-5 * out["bce"]  # and without options keras's BCE from logits
    assert out["config_gamma_pos"] == 1.0


def test_unsupported_backend_is_named():
    code = "from softmargin.keras import MultiLabelSoftMarginLoss; MultiLabelSoftMarginLoss()"
    env = dict(os.environ, KERAS_BACKEND="numpy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0 and "keras backend 'numpy' is not supported" in result.stderr


CHECKS = textwrap.dedent(
    """
    import json
    import numpy as np, keras
    from softmargin.keras import MultiLabelSoftMarginLoss as KL
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 6)).astype("float32")
    Y = (rng.random((16, 4)) < 0.3).astype("float32")
    out = {}

    def error(make):
        try:
            make()
        except (ValueError, TypeError) as e:
            return type(e).__name__ + ": " + str(e)
        return None

    def fit(targets, eager):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
        model.compile(optimizer="adam", loss=KL(), run_eagerly=eager)
        return model.fit(X, targets, epochs=1, batch_size=8, shuffle=False, verbose=0)

    out["fit_eager_bad"] = error(lambda: fit(Y * 5 - 2, True))
    out["first_bad"] = float(Y[0, 0] * 5 - 2)
    out["fit_eager_nan"] = error(lambda: fit(np.where(Y > 0, np.nan, 0).astype("float32"), True))
    out["fit_eager_good"] = error(lambda: fit(Y, True))
    for name, value in {"2d": np.ones((2, 2)), "column": np.ones((4, 1)), "3d": np.ones((1, 2, 2))}.items():
        out["weight_" + name] = error(lambda: KL(weight=value))
        out["pos_weight_" + name] = error(lambda: KL(pos_weight=value))
    out["weight_negative"] = error(lambda: KL(weight=[1.0, -1.0, 1.0, 1.0]))
    out["weight_inf"] = error(lambda: KL(weight=[1.0, np.inf, 1.0, 1.0]))
    out["pos_weight_zero"] = error(lambda: KL(pos_weight=[1.0, 0.0, 1.0, 1.0]))
    yp = rng.standard_normal((3, 4)).astype("float32")
    scalar, per_class = KL(weight=2.0, pos_weight=np.float32(3.0)), KL(weight=[2.0] * 4, pos_weight=[3.0] * 4)
    out["scalar"] = [float(scalar(Y[:3], yp)), float(per_class(Y[:3], yp))]
    out["scalar_config"] = [KL.from_config(scalar.get_config()).get_config()[k] for k in ("weight", "pos_weight")]
    # a dtype given survives get_config through JSON (keras.losses.Loss drops it); none given follows the policy
    policies = ("float64", keras.DTypePolicy("mixed_float16"), None)
    reloaded = [KL.from_config(json.loads(json.dumps(KL(dtype=d).get_config()))) for d in policies]
    out["dtype_config"] = [[loss.dtype, loss.get_config().get("dtype")] for loss in reloaded]
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_targets_and_weights_are_checked(backend):
    """Targets outside [0, 1] (or NaN) fail fit with run_eagerly=True on both backends (on JAX, fit differentiates:
    y_pred is traced there, y_true is not); weight and pos_weight are checked when the loss is made, (C,) or a
    scalar, never silently flattened."""
    out = _scripts_run_once(backend)["CHECKS"]
    assert out["fit_eager_bad"].startswith("ValueError: target has ") and "outside [0, 1]" in out["fit_eager_bad"]
    assert f"(the first at position (0, 0): {out['first_bad']!r})" in out["fit_eager_bad"]
    assert out["fit_eager_nan"].startswith("ValueError: target has ") and ": nan)" in out["fit_eager_nan"]
    assert out["fit_eager_good"] is None
    for name, shape in {"2d": (2, 2), "column": (4, 1), "3d": (1, 2, 2)}.items():
        for arg in ("weight", "pos_weight"):
            assert out[f"{arg}_{name}"] == (
                f"ValueError: {arg}.shape == {shape}: expected shape (C,), one {arg} per class (or a scalar for every class)"
            )
    assert (
        "weight has 1 value outside the finite range [0, inf) (the first at position (1,): -1.0)"
        in out["weight_negative"]
    )
    assert "weight has 1 value outside the finite range [0, inf) (the first at position (1,): inf)" in out["weight_inf"]
    assert (
        "pos_weight has 1 value outside the finite range (0, inf) (the first at position (1,): 0.0)"
        in out["pos_weight_zero"]
    )
    assert out["scalar"][0] == pytest.approx(out["scalar"][1], rel=1e-6)
    assert out["scalar_config"] == [2.0, 3.0]
    assert out["dtype_config"] == [["float64", "float64"], ["float16", "mixed_float16"], ["float32", None]]


HALF = textwrap.dedent(
    """
    import json
    import numpy as np, keras
    from softmargin.keras import MultiLabelSoftMarginLoss as KL
    Y = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]], np.float32)
    P = np.array([[0.5, -0.5, 2.0], [6e4, 20.0, 20.0]], np.float32)
    call = lambda loss: loss(Y, P)
    if keras.backend.backend() == "jax":
        import jax
        call = lambda loss: jax.jit(lambda a, b: loss(a, b))(Y, P)
    out = {}
    for name, kwargs in {"big weight": dict(weight=[1e5, 1.0, 1.0]), "tiny weight": dict(weight=[1e-8, 1.0, 1.0]),
                         "big pos_weight": dict(pos_weight=[1.0, 1e5, 1.0])}.items():
        loss = KL(dtype="mixed_float16", reduction="none", **kwargs)
        try:
            out[name] = [float(v) for v in keras.ops.convert_to_numpy(call(loss))]
        except Exception as error:
            out[name] = f"{type(error).__name__}: {error}"
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_weights_are_not_narrowed_to_a_half_precision_loss(backend):
    """dtype="mixed_float16": weights and pos_weights stay float32 (a 1e5 weight became inf in float16: a silent
    inf on JAX, an error naming a weight the user never passed on torch; 1e-8 became 0), and the per-sample losses
    are the float64 definition's, rounded to float16 (the second sample's loss with weight 1e5 is 2e9: inf there;
    with 1e-8 it is 2e-4, all from the tiny weight)."""
    import numpy as np

    out = _scripts_run_once(backend)["HALF"]
    y = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    x = np.array([[0.5, -0.5, 2.0], [6e4, 20.0, 20.0]])
    for name, w, pw in [("big weight", [1e5, 1, 1], 1.0), ("tiny weight", [1e-8, 1, 1], 1.0), ("big pos_weight", 1.0, [1, 1e5, 1])]:
        expected = (np.asarray(w) * (np.asarray(pw) * y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x))).mean(1)
        assert isinstance(out[name], list), (name, out[name])
        with np.errstate(over="ignore"):  # 2e9 is inf in float16
            expected = expected.astype(np.float16)
        np.testing.assert_allclose(out[name], expected, rtol=1e-3, err_msg=name)


SEMANTICS = textwrap.dedent(
    """
    import json
    import numpy as np, keras
    from softmargin.keras import MultiLabelSoftMarginLoss as KL
    rng = np.random.default_rng(0)
    w, pw = [1.0, 2.0, 0.5, 1.5], [3.0, 1.0, 0.5, 2.0]
    x = (3 * rng.standard_normal((6, 5, 4))).astype("float32")
    y = (rng.random((6, 5, 4)) < 0.4).astype("float32")
    sw = (2 * rng.random((6, 5))).astype("float32")
    out = {"x": x.tolist(), "y": y.tolist(), "sw": sw.tolist()}
    for reduction in ("sum_over_batch_size", "sum", "mean_with_sample_weight", "none", None):
        loss = KL(weight=w, pos_weight=pw, reduction=reduction)
        value = lambda *a, **k: np.asarray(keras.ops.convert_to_numpy(loss(*a, **k)), np.float64).tolist()
        out[f"2d {reduction}"] = value(y[:, 0], x[:, 0], sample_weight=sw[:, 0])
        out[f"3d {reduction}"] = value(y, x, sample_weight=sw)
        out[f"bool {reduction}"] = value(y[:, 0].astype(bool), x[:, 0])
    # a sequence model behind a Masking layer: the loss of each masked step is left out, as keras's own losses do
    steps = np.array([5, 2, 3, 1, 4, 5])
    inputs = rng.standard_normal((6, 5, 3)).astype("float32") + 1.0
    inputs[np.arange(5)[None, :] >= steps[:, None]] = 0.0
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.Masking(0.0), keras.layers.Dense(4)])
    model.compile(loss=KL(weight=w, pos_weight=pw))
    out["masked"] = float(model.evaluate(inputs, y, batch_size=6, verbose=0))
    out["masked_logits"] = np.asarray(model.predict(inputs, verbose=0), np.float64).tolist()
    out["steps"] = steps.tolist()
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_sample_weight_reduction_and_mask_as_keras_losses_do(backend):
    """Keras applies sample_weight (per sample, or per step of a sequence), the reduction and a Masking layer's mask to
    the per-sample losses; against the float64 definition with weight and pos_weight."""
    import numpy as np

    out = _scripts_run_once(backend)["SEMANTICS"]
    x, y, sw = (np.asarray(out[k], np.float64) for k in ("x", "y", "sw"))
    w, pw = np.array([1.0, 2.0, 0.5, 1.5]), np.array([3.0, 1.0, 0.5, 2.0])
    per_sample = lambda x, y: (w * (pw * y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x))).mean(-1)
    reduce = {
        "sum_over_batch_size": lambda v, s: (v * s).sum() / v.size, "sum": lambda v, s: (v * s).sum(),
        "mean_with_sample_weight": lambda v, s: (v * s).sum() / s.sum(), "none": lambda v, s: v * s, None: lambda v, s: v * s,
    }  # fmt: skip
    for reduction, expected in reduce.items():
        for name, args in {"2d": (x[:, 0], y[:, 0], sw[:, 0]), "3d": (x, y, sw), "bool": (x[:, 0], y[:, 0], 1.0)}.items():
            want = expected(per_sample(args[0], args[1]), np.broadcast_to(args[2], args[0].shape[:-1]))
            np.testing.assert_allclose(out[f"{name} {reduction}"], want, rtol=1e-6, err_msg=f"{name} {reduction}")
    observed = np.arange(5)[None, :] < np.asarray(out["steps"])[:, None]
    masked = per_sample(np.asarray(out["masked_logits"]), y)[observed].mean()
    assert out["masked"] == pytest.approx(masked, rel=1e-6)


# Keras's own import (scikit-learn and torch._dynamo with the torch backend) takes 6 to 10 s a process: CHECKS, HALF and SEMANTICS
# run in one process per backend, each script in a namespace of its own, its last printed line its result.
DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    results = {}
    for name, code in json.loads(sys.argv[1]).items():
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
        results[name] = json.loads(printed.getvalue().strip().splitlines()[-1])
    print(json.dumps(results))
    """
)


@functools.cache
def _scripts_run_once(backend: str) -> dict:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    scripts = json.dumps({"CHECKS": CHECKS, "HALF": HALF, "SEMANTICS": SEMANTICS})
    result = subprocess.run([sys.executable, "-c", DRIVER, scripts], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out: dict = json.loads(result.stdout.strip().splitlines()[-1])
    return out
