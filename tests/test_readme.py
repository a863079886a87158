"""The README's Python examples, run as written (the names each one takes as given — X, logits, encoder, ... — are
made here; the run folder's name and the fused head's million labels are the only substitutions), and the values
its comments state checked against torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(first_line: str) -> str:
    """The README's ```python block that starts with ``first_line`` (exactly one)."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S) if b.startswith(first_line)]
    assert len(blocks) == 1, f"{len(blocks)} README python blocks start with {first_line!r}"
    return blocks[0]


def _data(rng, n=60, features=6, labels=3):
    X = rng.standard_normal((n, features)).astype(np.float32)
    Y = (X[:, :labels] + 0.5 * rng.standard_normal((n, labels)) > 0).astype(np.float32)
    return X, Y


def test_every_python_block_is_covered_here():
    starts = [b.splitlines()[0] for b in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)]
    covered = {"import softmargin", "from softmargin import SoftMarginClassifier", "import numpy as np", "import torch",
               "loss = multilabel_soft_margin_loss(logits, [[3, 17], [], [999_999]])",
               "from softmargin.torch import LinearMultiLabelSoftMarginLoss", "import jax, jax.numpy as jnp",
               "import keras, softmargin", "from transformers import Trainer"}  # fmt: skip
    uncovered = [start for start in starts if not any(start.startswith(known) for known in covered)]
    assert not uncovered, uncovered


def test_numpy_example_and_its_stated_value():
    torch = pytest.importorskip("torch")
    code = _block("import numpy as np")
    stated = re.search(r"# ([0-9.]+) \(float32\)", code)
    assert stated is not None
    namespace: dict = {}
    exec(code.replace("multilabel_soft_margin_loss(x", "value = multilabel_soft_margin_loss(x", 1)
             .replace("multilabel_soft_margin_loss_grad(x", "grad = multilabel_soft_margin_loss_grad(x", 1), namespace)  # fmt: skip
    x = torch.tensor(namespace["x"], requires_grad=True)
    reference = torch.nn.MultiLabelSoftMarginLoss(weight=torch.tensor([0.5, 2.0, 1.5]))(x, torch.tensor(namespace["y"]))
    reference.backward()
    assert namespace["value"].dtype == np.float32 and float(namespace["value"]) == pytest.approx(float(reference.detach()), rel=1e-6)
    assert float(stated.group(1)) == pytest.approx(float(reference.detach()), rel=1e-6)  # the comment is torch's number
    np.testing.assert_allclose(namespace["grad"], x.grad.numpy(), rtol=1e-5)


def test_torch_examples(rng):
    torch = pytest.importorskip("torch")
    namespace = {"logits": torch.randn(4, 3, requires_grad=True), "targets": torch.tensor(_data(rng, 4)[1])}
    exec(_block("import torch"), namespace)
    assert namespace["logits"].grad is not None
    logits = torch.randn(3, 1_000_000, requires_grad=True)
    namespace = {"logits": logits, "multilabel_soft_margin_loss": namespace["multilabel_soft_margin_loss"]}
    exec(_block("loss = multilabel_soft_margin_loss(logits, [[3, 17], [], [999_999]])"), namespace)
    dense = torch.zeros(3, 1_000_000)
    dense[0, [3, 17]] = 1
    dense[2, 999_999] = 1
    assert float(namespace["loss"].detach()) == pytest.approx(float(torch.nn.MultiLabelSoftMarginLoss()(logits.detach(), dense)), rel=1e-6)


def test_fused_head_example():
    torch = pytest.importorskip("torch")
    code = _block("from softmargin.torch import LinearMultiLabelSoftMarginLoss").replace("num_labels=1_000_000", "num_labels=1_000")
    encoder = torch.nn.Linear(10, 256)
    namespace = {"encoder": encoder, "x": torch.randn(4, 10), "label_lists": [[1, 5], [], [999], [3]]}
    exec(code, namespace)
    assert namespace["scores"].shape == namespace["ids"].shape == (4, 5)
    assert encoder.weight.grad is not None and namespace["head"].weight.grad is not None


def test_jax_example(rng):
    pytest.importorskip("jax")
    import jax.numpy as jnp

    X, Y = _data(rng, 4)
    namespace = {"logits": jnp.asarray(X[:, :3]), "targets": jnp.asarray(Y), "class_w": jnp.asarray([0.5, 2.0, 1.5]),
                 "pos_w": jnp.asarray([1.0, 3.0, 2.0]), "observed": jnp.asarray(rng.random((4, 3)) < 0.8)}  # fmt: skip
    exec(_block("import jax, jax.numpy as jnp"), namespace)
    assert namespace["grad"].shape == (4, 3) and np.isfinite(float(namespace["loss"]))


def test_scikit_learn_example(rng):
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    X, Y = _data(rng)
    namespace = {"X": X, "Y": Y}
    exec(_block("from softmargin import SoftMarginClassifier"), namespace)
    assert namespace["clf"].predict(X).shape == Y.shape


def test_load_run_example(rng, tmp_path):
    pytest.importorskip("torch")
    from softmargin.app.cli import main

    X, Y = _data(rng)
    table = np.column_stack([X, Y])
    header = ",".join([f"f{i}" for i in range(6)] + ["ya", "yb", "yc"])
    np.savetxt(tmp_path / "train.csv", table, delimiter=",", header=header, comments="", fmt="%.5f")
    argv = ["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--model", "linear", "--quiet",
            "--out", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 0
    (run,) = (tmp_path / "runs").iterdir()
    namespace = {"X": X}
    exec(_block("import softmargin").replace("runs/20261129-172136-yeast", run.as_posix()), namespace)
    assert namespace["run"].predict(X).shape == Y.shape


def _subprocess(code: str, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.slow
def test_keras_example():
    import importlib.util

    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("keras (with torch) is not installed")
    setup = textwrap.dedent(
        """
        import numpy as np, keras
        rng = np.random.default_rng(0)
        X_train = rng.standard_normal((64, 6)).astype("float32")
        Y_train = (X_train[:, :3] > 0).astype("float32")
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
        """
    )
    check = "\nassert np.isfinite(model.evaluate(X_train, Y_train, verbose=0))\nprint('ok')\n"
    _subprocess(setup + _block("import keras, softmargin") + check, {"KERAS_BACKEND": "torch"})


@pytest.mark.slow
def test_transformers_example(tmp_path):
    import importlib.util

    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("transformers (with torch) is not installed")
    setup = textwrap.dedent(
        f"""
        import numpy as np, torch, transformers
        from transformers import TrainingArguments
        config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=32, num_labels=4,
                                         problem_type="multi_label_classification")
        model = transformers.BertForSequenceClassification(config)
        rng = np.random.default_rng(0)
        train_labels = (rng.random((32, 4)) < 0.3).astype("float32")
        train_labels[0, 1] = -100  # a missing label
        ids = rng.integers(1, 64, (32, 8))
        train = [{{"input_ids": torch.as_tensor(i), "attention_mask": torch.ones(8, dtype=torch.long),
                   "labels": torch.as_tensor(l)}} for i, l in zip(ids, train_labels)]
        args = TrainingArguments(output_dir={str(tmp_path / "hf")!r}, report_to=[], use_cpu=True, max_steps=2,
                                 per_device_train_batch_size=8, save_strategy="no", logging_strategy="no")
        """
    )
    check = "\nresult = trainer.train()\nassert np.isfinite(result.training_loss), result\nprint('ok')\n"
    _subprocess(setup + _block("from transformers import Trainer") + check, {"HF_HUB_OFFLINE": "1"})
