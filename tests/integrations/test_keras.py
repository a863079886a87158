"""softmargin.keras.MultiLabelSoftMarginLoss in model.compile / model.fit, under the jax and the torch backends.

Each backend runs in its own process (KERAS_BACKEND is read when keras is first imported)."""

from __future__ import annotations

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
    import json, sys
    import numpy as np, keras
    sys.path.insert(0, sys.argv[1])
    from helpers import reference_loss
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
    tests = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", SCRIPT, tests], capture_output=True, text=True, env=env, timeout=600)
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
