"""The command line end to end, on small data: train, evaluate, predict, and the run folder they share."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from softmargin.app.cli import main
from softmargin.app.train import load_model

FAST = ["--epochs", "3", "--ensemble", "2", "--quiet"]


def _make_csv(path: Path, n: int = 120, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] > 1]).astype(int)
    header = "f0,f1,f2,f3,f4,f5,ya,yb,yc"
    rows = [",".join(f"{v:.5f}" for v in x) + "," + ",".join(map(str, y)) for x, y in zip(X, Y)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def _run_folder(out: Path) -> Path:
    (run,) = list(out.iterdir())
    return run


def test_train_on_csv_writes_a_complete_run_folder(tmp_path, capsys):
    _make_csv(tmp_path / "train.csv")
    _make_csv(tmp_path / "test.csv", seed=1)
    argv = ["train", "--data", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--labels", "ya,yb,yc"]
    assert main(argv + FAST + ["--out", str(tmp_path / "runs"), "--thresholds", "tuned"]) == 0
    out = capsys.readouterr().out
    assert "hamming_loss" in out and "micro_f1" in out and "run folder:" in out
    run = _run_folder(tmp_path / "runs")
    expected = {"config.json", "metrics.json", "per_label.csv", "history.csv", "model.json", "model.safetensors", "loss.png", "f1_vs_frequency.png"}
    assert expected <= {p.name for p in run.iterdir()}
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary files left behind
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["hamming_loss"] <= 1 and "P@1" in metrics
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 3 and config["train"]["thresholds"] == "tuned"
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    model = load_model(run)
    assert len(model.nets) == 2 and model.label_names == ["ya", "yb", "yc"]

    # evaluate and predict reuse it, with the same numbers
    assert main(["evaluate", str(run), "--data", str(tmp_path / "test.csv"), "--labels", "ya,yb,yc"]) == 0
    assert f"{metrics['micro_f1']:.4f}" in capsys.readouterr().out
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(run), "--data", str(tmp_path / "test.csv"), "--labels", "ya,yb,yc", "--out", str(preds)]) == 0
    lines = preds.read_text().splitlines()
    assert lines[0].startswith("row,p_ya,p_yb,p_yc,y_ya") and len(lines) == 121
    assert main(["predict", str(run), "--data", str(tmp_path / "test.csv"), "--labels", "ya,yb,yc", "--out", str(preds)]) == 2
    assert "exists: pass --force" in capsys.readouterr().err


def test_same_seed_same_numbers(tmp_path):
    _make_csv(tmp_path / "train.csv")
    for name in ("a", "b"):
        main(["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--seed", "7", "--out", str(tmp_path / name)] + FAST)
    metrics = [json.loads((_run_folder(tmp_path / n) / "metrics.json").read_text()) for n in ("a", "b")]
    assert metrics[0] == metrics[1]


def test_train_builtin_yeast_default_data(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--model", "linear", "--quiet"]) == 0  # Newton: FAST's epochs would be refused
    out = capsys.readouterr()
    assert "yeast: 1500 samples" in out.err and "Test metrics (test data, 917 samples)" in out.out


def test_sparse_libsvm_with_loss_options(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(80):
        labels = ",".join(str(i) for i in range(5) if rng.random() < 0.3)
        feats = " ".join(f"{j}:{rng.random():.3f}" for j in sorted(rng.choice(50, 5, replace=False)))
        lines.append(f"{labels} {feats}")
    (tmp_path / "x.txt").write_text("80 50 5\n" + "\n".join(lines) + "\n")
    argv = ["train", "--data", str(tmp_path / "x.txt"), "--out", str(tmp_path / "runs"), "--class-weight", "inverse",
            "--pos-weight", "--gamma-neg", "2", "--clip", "0.05", "--label-smoothing", "0.1"] + FAST
    assert main(argv) == 0


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing.arff")]) == 2
    assert "no such file, and not a built-in data set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--hidden", "a,b"])
    assert main(["evaluate", str(tmp_path), "--data", "yeast"]) == 2
    assert "no model.json" in capsys.readouterr().err
