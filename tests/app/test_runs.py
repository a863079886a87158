"""The train / evaluate / predict commands against bad input (issue 13): each defect fed on purpose, and the outcome
checked: a one-line message naming the file and line or the argument, exit code 2, no traceback, nothing
half-written, nothing overwritten without --force. And the features users asked for, checked against references
computed here (hashlib, NumPy), not against the code under test."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import bag_of_words
from cli_helpers import one_line_error as _one_line_error
from cli_helpers import run as _run

pytest.importorskip("torch")

from softmargin.app import runs as R
from softmargin.app import train as T
from softmargin.app.cli import main

FAST = ["--epochs", "2", "--ensemble", "1", "--quiet"]
COLUMNS = ["f0", "f1", "f2", "f3", "f4", "f5", "ya", "yb", "yc"]


def _table(n: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)) * [1, 2, 3, 4, 5, 6]
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] > 1]).astype(int)
    return np.column_stack([X, Y])


def _write_csv(path: Path, table: np.ndarray, columns: list[str] = COLUMNS, order: list[str] | None = None) -> Path:
    order = order or columns
    index = [columns.index(c) for c in order]
    rows = [",".join(f"{v:.5f}" for v in row[index]) for row in table]
    path.write_text(",".join(order) + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small run (train.csv, test.csv), shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("trained")
    _write_csv(folder / "train.csv", _table())
    _write_csv(folder / "test.csv", _table(60, seed=1))
    argv = ["train", "--data", str(folder / "train.csv"), "--test", str(folder / "test.csv"), "--labels", "ya,yb,yc",
            "--out", str(folder / "runs"), "--epochs", "5", "--ensemble", "2", "--quiet", "--thresholds", "tuned"]  # fmt: skip
    assert main(argv) == 0
    (run,) = (folder / "runs").iterdir()
    return folder, run


# --- silently wrong before -----------------------------------------------------------------------------------------


def test_non_finite_features_stop_training_with_file_and_line(tmp_path, capsys):
    table = _table()
    table[6, 2] = np.nan
    _write_csv(tmp_path / "nan.csv", table)
    _one_line_error(["train", "--data", str(tmp_path / "nan.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs")] + FAST,
                    capsys, r"nan\.csv:8: feature 'f2' is nan")  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_a_diverging_run_saves_nothing(tmp_path, capsys):
    _write_csv(tmp_path / "train.csv", _table())
    argv = ["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs"),
            "--lr", "1e30", "--epochs", "5", "--ensemble", "1", "--quiet", "--standardize", "no"]  # fmt: skip
    _one_line_error(argv, capsys, r"training loss became (nan|inf).*nothing was saved; lower --lr")
    assert list((tmp_path / "runs").iterdir()) == []  # not even a partial folder


def test_a_non_finite_loss_stops_the_run(monkeypatch):
    data = T.Dataset(np.ones((10, 2), np.float32), np.eye(2, dtype=np.uint8)[np.arange(10) % 2], ["a", "b"], ["y", "z"])
    real = T._TrainingLoss.forward
    monkeypatch.setattr(T._TrainingLoss, "forward", lambda self, x, y: real(self, x, y) * float("nan"))
    with pytest.raises(T.TrainingError, match=r"the training loss became nan \(epoch 1, seed 0\)"):
        T.fit(data, T.TrainConfig(epochs=3, ensemble=1), progress=False)


def _untrained_yeast_validation_loss(seed: int = 0) -> float:
    """The validation loss of `softmargin train`'s seed-`seed` MLP before any epoch, rebuilt with NumPy, scikit-learn
    and plain torch (not the trainer): the seeded 15% validation split, standardised on the other rows, one 512-unit
    ReLU layer initialised from the same torch seed, and the mean binary cross-entropy over samples and labels."""
    import torch
    from sklearn.preprocessing import StandardScaler

    from softmargin.app import data as D

    train, _ = D.load_builtin("yeast")
    X, Y = np.asarray(train.X, np.float64), np.asarray(train.Y, np.float64)
    order = np.random.default_rng(seed).permutation(len(X))
    valid, rest = np.sort(order[: round(0.15 * len(X))]), np.sort(order[round(0.15 * len(X)):])
    scaler = StandardScaler().fit(X[rest])
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(103, 512), torch.nn.ReLU(), torch.nn.Linear(512, 14)).double()
    with torch.no_grad():
        logits = net(torch.from_numpy(scaler.transform(X[valid])))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(Y[valid])).item()


def test_a_run_no_epoch_of_which_beats_the_untrained_network_saves_nothing(tmp_path, capsys):
    """--lr 100 blows up without reaching NaN: the best epoch's validation loss (1.588) is worse than the untrained
    network's (0.694), and the model predicts worse than no label at all. It was saved silently (exit 0): the guard
    started from an infinite loss, so every epoch "improved" on it."""
    reference = _untrained_yeast_validation_loss()
    assert 0.68 < reference < 0.71
    argv = ["train", "--data", "yeast", "--ensemble", "1", "--epochs", "5", "--lr", "100", "--quiet", "--out", str(tmp_path / "runs")]
    err = _one_line_error(argv, capsys, rf"seed 0: every epoch was worse than the untrained network's loss {reference:.4g} \(validation "
                                        r"rows; the best epoch, \d, had [\d.]+ there\): training diverged, and nothing was "
                                        r"saved; lower --lr \(now 100\).*or train longer \(--epochs 5\)$")  # fmt: skip
    assert "Traceback" not in err
    assert list((tmp_path / "runs").iterdir()) == []  # not even a partial folder


def test_the_adamw_divergence_advice_names_a_weight_decay_that_flips_the_weights(tmp_path, capsys):
    """AdamW scales the weights by 1 - lr x weight_decay each step: at 500 x 0.01 = 5 they flip and grow, and the
    advice used to name only the learning rate and the features' scale."""
    _write_csv(tmp_path / "train.csv", _table())
    argv = ["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs"),
            "--lr", "0.01", "--weight-decay", "500", "--epochs", "5", "--ensemble", "1", "--quiet"]  # fmt: skip
    _one_line_error(argv, capsys, r"training diverged.*lower --lr \(now 0\.01\).*or lower --weight-decay \(now 500: each "
                                  r"step scales the weights by 1 - 5\)")  # fmt: skip
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_validation_fraction_that_holds_out_no_row_is_a_warning(tmp_path, capsys):
    """--valid-fraction 0.15 of 3 training rows rounds to none: the early stopping asked for cannot run. The run used
    to train every epoch without a word."""
    _write_csv(tmp_path / "train.csv", _table(3))
    _write_csv(tmp_path / "test.csv", _table(20, seed=1))
    code, _, err = _run(["train", "--data", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--labels",
                         "ya,yb,yc", "--model", "mlp", "--out", str(tmp_path / "runs")] + FAST, capsys)  # fmt: skip
    assert code == 0, err
    assert ("softmargin train: warning: --valid-fraction 0.15 of 3 samples holds out no row: the model trains 2 epochs "
            "without early stopping") in err


def test_overfitting_noise_is_not_divergence():
    """Labels with nothing to learn (8 training rows of noise, 2 validation rows): the validation loss rises from
    the first epoch while the training loss falls. That is no divergence: the best epoch is kept, as before (it is
    what scikit-learn's check_estimator fits)."""
    from sklearn.utils import check_random_state

    X = check_random_state(0).uniform(size=(10, 3)).astype(np.float32)
    data = T.Dataset(X, np.repeat([[0], [1]], 5, axis=0).astype(np.uint8), ["a", "b", "c"], ["y"])
    config = T.TrainConfig(hidden=(256,), dropout=0.2, ensemble=1, epochs=50, seed=1, thresholds="fixed")
    model = T.fit(data, config, progress=False)
    valid = [h["valid_loss"] for h in model.history]
    assert valid == sorted(valid) and len(valid) == 21  # never improved: stopped after --patience 20 epochs
    assert min(h["train_loss"] for h in model.history) < valid[0]


def test_the_lbfgs_divergence_advice_names_no_learning_rate(tmp_path, capsys):
    """L-BFGS takes no --lr (its line search sizes each step): its divergence error used to advise lowering it."""
    table = _table()
    table[:, 0] *= 1e30  # unscaled features this large send the full-batch steps to NaN
    _write_csv(tmp_path / "huge.csv", table)
    argv = ["train", "--data", str(tmp_path / "huge.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs"), "--model",
            "linear", "--optimizer", "lbfgs", "--standardize", "no", "--ensemble", "1", "--quiet"]  # fmt: skip
    err = _one_line_error(argv, capsys, r"the training loss became (nan|inf) \(L-BFGS iteration \d+\): training diverged and "
                                        r"nothing was saved; check the scale of the features \(--standardize yes, now no; L-BFGS "
                                        r"has no learning rate, its line search sizes each step\); without an L2 penalty .*set --C")  # fmt: skip
    assert "--lr" not in err
    assert list((tmp_path / "runs").iterdir()) == []


def test_test_and_later_data_are_matched_by_column_name(trained, tmp_path, capsys):
    folder, run = trained
    table = _table(60, seed=1)
    shuffled = ["yc", "f5", "ya", "f0", "f3", "f1", "yb", "f4", "f2"]
    _write_csv(tmp_path / "shuffled.csv", table, order=shuffled)
    metrics = json.loads((run / "metrics.json").read_text())
    for data in (folder / "test.csv", tmp_path / "shuffled.csv"):
        code, out, _ = _run(["evaluate", str(run), "--data", str(data), "--labels", "yc,ya,yb"], capsys)
        assert code == 0 and f"{metrics['micro_f1']:.4f}" in out and f"{metrics['hamming_loss']:.4f}" in out
    predictions = []
    for data in (folder / "test.csv", tmp_path / "shuffled.csv"):
        assert main(["predict", str(run), "--data", str(data), "--out", "-"]) == 0
        predictions.append(capsys.readouterr().out)
    assert predictions[0] == predictions[1] and predictions[0].startswith("row,p_ya,p_yb,p_yc,y_ya,y_yb,y_yc\n")
    _write_csv(tmp_path / "renamed.csv", table, columns=COLUMNS[:5] + ["g5"] + COLUMNS[6:])
    _one_line_error(["evaluate", str(run), "--data", str(tmp_path / "renamed.csv"), "--labels", "ya,yb,yc"], capsys,
                    r"renamed\.csv: feature column\(s\) \['f5'\] not in the file's columns")  # fmt: skip


def test_duplicate_label_names_are_an_error(tmp_path, capsys):
    _write_csv(tmp_path / "train.csv", _table())
    _one_line_error(["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,ya,yb", "--out", str(tmp_path)] + FAST,
                    capsys, r"--labels names 'ya' twice")  # fmt: skip


def test_a_damaged_model_is_refused(trained, tmp_path, capsys):
    import shutil

    folder, run = trained
    argv = ["evaluate", None, "--data", str(folder / "test.csv"), "--labels", "ya,yb,yc"]
    flipped = Path(shutil.copytree(run, tmp_path / "flipped"))
    blob = bytearray((flipped / "model.safetensors").read_bytes())
    blob[-300:-100] = bytes(b ^ 0xFF for b in blob[-300:-100])
    (flipped / "model.safetensors").write_bytes(bytes(blob))
    _one_line_error(argv[:1] + [str(flipped)] + argv[2:], capsys, r"model\.safetensors: its SHA-256 differs from the one in model\.json")
    for name, text, pattern in [("model.json", "{not json", r"model\.json: not valid JSON"),
                                ("config.json", "[1, 2", r"config\.json: not valid JSON"),
                                ("model.json", '{"format": "softmargin-model-2", "sha256": "%s"}', r"model\.json: label_names is 'NoneType'")]:  # fmt: skip
        damaged = Path(shutil.copytree(run, tmp_path / f"damaged-{name}-{len(text)}"))
        digest = hashlib.sha256((damaged / "model.safetensors").read_bytes()).hexdigest()
        (damaged / name).write_text(text.replace("%s", digest) if "%s" in text else text)
        _one_line_error(argv[:1] + [str(damaged)] + argv[2:], capsys, pattern)


EDITS = [
    (lambda m: m["decision"].update(strategy="bogus"), r"decision\.strategy is 'bogus', expected one of fixed, tuned"),
    (lambda m: m.update(rcut_k=-1), r"rcut_k is -1, expected a positive number"),
    (lambda m: m.update(feature_names=m["feature_names"][:-1]), r"in_features is 6, expected 5, one per feature name"),
    (lambda m: m.update(label_names=[m["label_names"][0]] * len(m["label_names"])), r"label_names \(the name 'ya' twice\)"),
    (lambda m: m.update(thresholds=m["thresholds"][:-1]), r"thresholds is '2 values', expected 3 values"),
    (lambda m: m.update(thresholds=[0.0] * len(m["thresholds"])), r"thresholds is 'values from 0 to 0', expected thresholds above 0"),
    (lambda m: m["decision"].update(threshold=7), r"decision: threshold=7: expected a probability"),
    (lambda m: m.pop("sha256"), r"model\.json: no 'sha256' of model\.safetensors"),
    (lambda m: m.update(hidden=[3]), r"do not describe a model \(RuntimeError: [^\n]*\); the run folder is damaged"),
    (lambda m: m.update(members=0), r"members is 0, expected a positive number of ensemble members"),
    (lambda m: m.update(members=1), r"members is 1, but model\.safetensors holds 2 members"),
    (lambda m: m.update(label_counts=m["label_counts"][:-1]), r"label_counts is '2 values', expected 3 counts >= 0"),
    (lambda m: m.update(train_size="many"), r"train_size is 'many', expected the number of training samples"),
    (lambda m: m.update(at_least_one="no"), r"at_least_one is 'no', expected true or false"),
    (lambda m: m.update(dropout=1.5), r"dropout is 1\.5, expected a number in \[0, 1\)"),
]


@pytest.mark.parametrize("edit, pattern", EDITS)
@pytest.mark.parametrize("checksum", ["kept", "recomputed"])
def test_an_edited_model_json_is_refused_by_name(trained, tmp_path, capsys, edit, pattern, checksum):
    """model.json edited by hand: refused in one line, for predict and evaluate alike: by its content checksum, and,
    where the checksum was recomputed too, by the field's own check (before: an unknown strategy predicted nothing, a
    negative rcut_k predicted most labels, a shortened feature list crashed, members 0 raised an IndexError)."""
    import shutil

    from softmargin.app.train import _content_sha256

    folder, run = trained
    edited = Path(shutil.copytree(run, tmp_path / "edited"))
    meta = json.loads((edited / "model.json").read_text())
    edit(meta)
    if checksum == "recomputed":
        meta["content_sha256"] = _content_sha256(meta)
    else:
        pattern = r"model\.json: its content differs from its SHA-256 \(content_sha256\): the file was edited"
    (edited / "model.json").write_text(json.dumps(meta))
    for argv in (["evaluate", str(edited), "--data", str(folder / "test.csv")],
                 ["predict", str(edited), "--data", str(folder / "test.csv"), "--out", str(tmp_path / "p.csv")]):  # fmt: skip
        _one_line_error(argv, capsys, pattern)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(feature_names=[m["feature_names"][1], m["feature_names"][0], *m["feature_names"][2:]]),
        lambda m: m.update(label_names=m["label_names"][::-1]),
        lambda m: m.update(normalize_rows=not m["normalize_rows"]),
        lambda m: m.update(thresholds=[0.9] * len(m["thresholds"])),
    ],
    ids=["features swapped", "labels swapped", "normalize_rows flipped", "thresholds changed"],
)
def test_an_edit_no_field_check_can_see_is_refused_by_the_checksum(trained, tmp_path, edit):
    """Edits that leave a well-formed model.json but change what it predicts or how its columns are named."""
    import shutil

    from softmargin.app.train import load_model

    _, run = trained
    edited = Path(shutil.copytree(run, tmp_path / "edited"))
    meta = json.loads((edited / "model.json").read_text())
    edit(meta)
    (edited / "model.json").write_text(json.dumps(meta, indent=1))
    with pytest.raises(ValueError, match=r"its content differs from its SHA-256"):
        load_model(edited)


FORMAT_2_WARNING = (r"model\.json: format 'softmargin-model-2' \(older\) has no content checksum \(content_sha256\), so an "
                    r"edit to it cannot be detected; retrain with this version to get a checked file \('softmargin-model-3'\)")


def test_a_format_2_model_json_without_the_content_checksum_still_loads_with_a_warning(trained, tmp_path, capsys):
    """Format 2 still loads (older run folders), but setting "format" to 2 used to get any edit past the checksum
    silently: now every load says that this file's edits cannot be detected, in the CLI as one line on stderr."""
    import shutil
    import warnings

    from softmargin.app.train import load_model

    folder, run = trained
    older = Path(shutil.copytree(run, tmp_path / "older"))
    meta = json.loads((older / "model.json").read_text())
    del meta["content_sha256"]
    meta["format"] = "softmargin-model-2"
    (older / "model.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=FORMAT_2_WARNING):
        assert np.array_equal(load_model(older).thresholds, load_model(run).thresholds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current format: no warning
        load_model(run)
    with pytest.warns(UserWarning, match=FORMAT_2_WARNING):
        import softmargin

        softmargin.load_run(older)
    for argv in (["evaluate", str(older), "--data", str(folder / "test.csv")],
                 ["predict", str(older), "--data", str(folder / "test.csv"), "--out", str(tmp_path / "p.csv")]):  # fmt: skip
        code, _, err = _run(argv, capsys)
        warned = [line for line in err.splitlines() if "warning:" in line]
        assert code == 0 and len(warned) == 1, err
        assert re.fullmatch(rf"softmargin {argv[0]}: warning: .*{FORMAT_2_WARNING}", warned[0]), warned


def test_a_damaged_config_json_is_named(trained, tmp_path):
    import shutil

    from softmargin.app.train import load_model

    _, run = trained
    for text, pattern in (('{"train": {"epochs": "many"}}', r"config\.json: its training settings are not valid"),
                          ('{"train": 3}', r"config\.json: no 'train' settings object"),
                          ("[1, 2]", r"config\.json: no 'train' settings object")):  # fmt: skip
        damaged = Path(shutil.copytree(run, tmp_path / f"damaged-{len(text)}"))
        (damaged / "config.json").write_text(text)
        with pytest.raises(ValueError, match=pattern):
            load_model(damaged)


def test_an_edited_or_swapped_config_json_is_refused(trained, tmp_path):
    # predictions come from model.json, but load_run(...).model_.config would report the edited settings
    import shutil

    from softmargin.app.train import load_model

    _, run = trained
    edited = Path(shutil.copytree(run, tmp_path / "edited"))
    config = json.loads((edited / "config.json").read_text())
    config["train"]["standardize"] = "no" if config["train"]["standardize"] != "no" else "yes"
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: its training settings differ from those model\.json records"):
        load_model(edited)
    config["versions"]["python"] = "0.0"  # the versions and data are not the model's: an edit there is not refused
    config["train"] = json.loads((run / "config.json").read_text())["train"]
    (edited / "config.json").write_text(json.dumps(config, indent=1))
    assert load_model(edited).config == load_model(run).config


def test_model_json_records_the_weights_checksum(trained):
    _, run = trained
    meta = json.loads((run / "model.json").read_text())
    assert meta["sha256"] == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()


# --- broken before -------------------------------------------------------------------------------------------------


def test_evaluate_out_never_overwrites_without_force(trained, tmp_path, capsys):
    folder, run = trained
    out = tmp_path / "evaluated"
    argv = ["evaluate", str(run), "--data", str(folder / "test.csv"), "--labels", "ya,yb,yc", "--out", str(out)]
    assert main(argv) == 0 and (out / "metrics.json").exists()
    (out / "metrics.json").write_text("{}")
    _one_line_error(argv, capsys, r"already holds metrics\.json, per_label\.csv, f1_vs_frequency\.png: pass --force")
    assert (out / "metrics.json").read_text() == "{}"
    assert main(argv + ["--force"]) == 0 and (out / "metrics.json").read_text() != "{}"
    capsys.readouterr()


def test_force_never_replaces_the_data_read_or_the_runs_own_report(trained, tmp_path, capsys):
    """--force overwrites an earlier output, not the input: predict --out naming the --data file replaced the data
    with its predictions, and evaluate --out naming the run folder replaced the run's report of its test split."""
    folder, run = trained
    data = tmp_path / "new.csv"
    data.write_bytes((folder / "test.csv").read_bytes())
    link = tmp_path / "link.csv"
    link.symlink_to(data)
    for out in (data, link, tmp_path / "." / "new.csv"):
        _one_line_error(["predict", str(run), "--data", str(data), "--out", str(out), "--force"], capsys, r"is the --data file")
    assert data.read_bytes() == (folder / "test.csv").read_bytes()
    before = {name: (run / name).read_bytes() for name in ("metrics.json", "per_label.csv", "f1_vs_frequency.png")}
    argv = ["evaluate", str(run), "--data", str(folder / "test.csv"), "--labels", "ya,yb,yc", "--force", "--out"]
    _one_line_error(argv + [str(run)], capsys, r"is the run folder")
    _one_line_error(argv + [str(run) + "/."], capsys, r"is the run folder")
    assert {name: (run / name).read_bytes() for name in before} == before


def test_force_never_replaces_a_run_folders_own_files_or_the_xml_read(trained, tmp_path, capsys):
    """predict --out RUN/model.json --force replaced the model with its own predictions (the run never loaded again:
    'model.json: not valid JSON'), --out naming the --xml file replaced the label names, and evaluate --out naming
    another run's folder replaced that run's report with this run's numbers."""
    import shutil

    folder, trained_run = trained
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    (tmp_path / "link.json").symlink_to(run / "model.json")
    data = str(folder / "test.csv")
    for name in R.RUN_FILES:
        for out in (run / name, run / "." / name):
            argv = ["predict", str(run), "--data", data, "--out", str(out), "--force"]
            _one_line_error(argv, capsys, rf"--out .*{re.escape(name)} is the run folder's {re.escape(name)}: the predictions would replace")
    _one_line_error(["predict", str(run), "--data", data, "--out", str(tmp_path / "link.json"), "--force"], capsys,
                    r"is the run folder's model\.json")  # fmt: skip
    (tmp_path / "labels.xml").write_text('<labels><label name="ya"/><label name="yb"/><label name="yc"/></labels>')
    _one_line_error(["predict", str(run), "--data", data, "--xml", str(tmp_path / "labels.xml"), "--out",
                     str(tmp_path / "labels.xml"), "--force"], capsys, r"is the --xml file")  # fmt: skip
    assert "ya" in (tmp_path / "labels.xml").read_text()
    _one_line_error(["evaluate", str(trained_run), "--data", data, "--out", str(run), "--force"], capsys,
                    r"is a run folder \(it holds model\.json\): its metrics\.json, per_label\.csv and plot are that run's own report")  # fmt: skip
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before
    assert main(["predict", str(run), "--data", data, "--out", str(run / "predictions.csv")]) == 0  # a new name: fine
    assert main(["predict", str(run), "--data", data, "--out", str(run / "predictions.csv"), "--force"]) == 0
    capsys.readouterr()


def test_top_k_with_more_labels_than_there_are_is_refused(trained, tmp_path, capsys):
    """--k 20 with 14 labels predicted every label for every sample (yeast: Hamming loss 0.70), silently."""
    folder, run = trained
    _write_csv(tmp_path / "train.csv", _table())
    _one_line_error(["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs"),
                     "--thresholds", "top-k", "--k", "4"] + FAST, capsys, r"--k 4: top-k with 4 labels per sample, and there are 3 labels")  # fmt: skip
    assert not (tmp_path / "runs").exists()
    for command in ("evaluate", "predict"):
        argv = [command, str(run), "--data", str(folder / "test.csv"), "--thresholds", "top-k", "--k", "4"]
        _one_line_error(argv + (["--out", "-"] if command == "predict" else []), capsys, r"--k 4: top-k with 4 labels per sample, and there are 3")
    assert main(["evaluate", str(run), "--data", str(folder / "test.csv"), "--thresholds", "top-k", "--k", "3"]) == 0
    capsys.readouterr()


def test_single_label_data_is_refused_before_training(tmp_path, capsys):
    _write_csv(tmp_path / "one.csv", _table())
    _one_line_error(["train", "--data", str(tmp_path / "one.csv"), "--labels", "ya", "--out", str(tmp_path / "runs")] + FAST,
                    capsys, r"1 label column\(s\): multi-label training needs at least 2")  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_an_interrupt_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    _write_csv(tmp_path / "train.csv", _table())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "plot_history", interrupted)  # the last of the final writes
    code, _, err = _run(["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs")] + FAST, capsys)
    assert code == 130 and "interrupted; nothing was written" in err
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_sigterm_leaves_no_run_folder(tmp_path):
    """SIGTERM (timeout, Slurm, docker stop) mid-training: the half-made run folder is removed as after Ctrl-C, and
    the exit code is 128 + 15. Python's default SIGTERM handling skipped the clean-up and left a hidden .partial
    folder behind."""
    import time

    _write_csv(tmp_path / "train.csv", _table(400))
    out = tmp_path / "runs"
    argv = ["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--out", str(out), "--epochs", "100000",
            "--patience", "100000", "--ensemble", "1", "--hidden", "8", "--threads", "1", "--quiet"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "softmargin", *argv], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(p.name.endswith(".partial") for p in out.iterdir())):  # training has begun
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.stderr else ""
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines()[-1] == "softmargin train: terminated (SIGTERM); nothing was written" and "Traceback" not in err
    assert list(out.iterdir()) == []  # no .partial folder, no run folder


@pytest.mark.parametrize("out, said", [("-", "the output on standard output is incomplete"), ("p.csv", "nothing was written")])
@pytest.mark.parametrize("interrupt, how", [("Terminated", "terminated (SIGTERM)"), ("KeyboardInterrupt", "interrupted")])
def test_an_interrupted_command_says_what_it_left(monkeypatch, capsys, out, said, interrupt, how):
    """Files are written whole or not at all, but what went to standard output is cut off where it stopped."""
    from softmargin.app import cli

    def stopped(args):
        raise getattr(cli, "Terminated", None) if interrupt == "Terminated" else KeyboardInterrupt

    monkeypatch.setattr(cli, "_predict", stopped)
    code = cli.main(["predict", "run", "--data", "d.csv", "--out", out])
    assert code == (143 if interrupt == "Terminated" else 130)
    assert capsys.readouterr().err.splitlines()[-1] == f"softmargin predict: {how}; {said}"


def test_a_run_whose_loss_did_not_move_keeps_its_model(tmp_path, capsys):
    """--lr 1e-9: every epoch's validation loss is the untrained network's, to 1e-6. That is no divergence (lowering
    --lr, the advice for one, would not help): the run is saved, as before the check."""
    argv = ["train", "--data", "yeast", "--ensemble", "1", "--epochs", "3", "--lr", "1e-9", "--quiet", "--out", str(tmp_path / "runs")]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_a_run_folder_without_config_json_loads_with_a_warning(trained, tmp_path):
    import shutil

    from softmargin.app.train import TrainConfig, load_model

    _, run = trained
    moved = Path(shutil.copytree(run, tmp_path / "moved"))
    (moved / "config.json").unlink()
    with pytest.warns(UserWarning, match=r"config\.json is missing: the model loads .* \.config reports the defaults"):
        model = load_model(moved)
    assert model.config == TrainConfig()
    np.testing.assert_array_equal(model.thresholds, load_model(run).thresholds)


def test_the_sigterm_handler_is_the_commands_only(tmp_path, capsys):
    """In-process, main() puts the previous SIGTERM handler back (and a command run outside the main thread, where
    handlers cannot be set, still runs)."""
    import threading

    before = signal.getsignal(signal.SIGTERM)
    _one_line_error(["train", "--out", str(tmp_path / "runs"), "--patience", "0"], capsys, r"--patience 0: expected")
    assert signal.getsignal(signal.SIGTERM) is before
    codes = []
    thread = threading.Thread(target=lambda: codes.append(main(["train", "--out", str(tmp_path / "runs"), "--patience", "0"])))
    thread.start()
    thread.join()
    assert codes == [2] and signal.getsignal(signal.SIGTERM) is before


def test_the_newton_solver_refuses_fewer_rows_than_folds(tmp_path, capsys):
    """The Newton solver cross-fits over --folds (3): with fewer training rows a fold is empty, and the held-out
    predictions used to choose C came from a model trained on no row (1 row: "held-out P@1 1.000", run saved)."""
    table = _table(60)
    _write_csv(tmp_path / "test.csv", table[20:])
    for rows, folds in ((1, []), (2, []), (1, ["--folds", "2"]), (3, ["--folds", "4"])):
        _write_csv(tmp_path / "few.csv", table[:rows])
        argv = ["train", "--data", str(tmp_path / "few.csv"), "--test", str(tmp_path / "test.csv"), "--labels", "ya,yb,yc",
                "--model", "linear", "--quiet", "--out", str(tmp_path / "runs"), *folds]  # fmt: skip
        count = int(folds[1]) if folds else 3
        _one_line_error(argv, capsys, rf"few: {rows} training sample\(s\) for the Newton solver's {count}-fold cross-fitting "
                                      rf"\(folds={count}, --folds\): expected at least {count}, one per fold")  # fmt: skip
        assert list((tmp_path / "runs").iterdir()) == []
    # under --cv the training rows are a fold's: 4 rows, --cv 2 trains on 2 (the error says which, not only --folds)
    _write_csv(tmp_path / "few.csv", table[:4])
    _one_line_error(["train", "--data", str(tmp_path / "few.csv"), "--labels", "ya,yb,yc", "--model", "linear", "--cv", "2",
                     "--quiet", "--out", str(tmp_path / "runs")], capsys,
                    r"--cv 2, fold 1/2 \(trained on 2 of the 4 samples\): few: 2 training sample\(s\) for the Newton "
                    r"solver's 3-fold")  # fmt: skip
    assert list((tmp_path / "runs").iterdir()) == []
    _write_csv(tmp_path / "few.csv", table[:3])  # one row per fold (3 folds): trains
    code, _, err = _run(["train", "--data", str(tmp_path / "few.csv"), "--test", str(tmp_path / "test.csv"), "--labels",
                         "ya,yb,yc", "--model", "linear", "--quiet", "--out", str(tmp_path / "runs")], capsys)  # fmt: skip
    assert code == 0, err


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--test", "x.arff"], r"--data yeast is built in.*--test would be ignored"),
        (["--labels", "a,b"], r"--data yeast is built in.*--labels would be ignored"),
        (["--model", "linear", "--hidden", "64"], r"--hidden sets the MLP's layers: it has no meaning with --model linear"),
        (["--patience", "0"], r"--patience 0: expected a positive integer"),
        (["--threads", "-1"], r"--threads -1: expected a positive number of threads"),
        (["--device", "tpu"], r"--device 'tpu': expected 'auto', 'cpu', 'cuda'"),
        (["--threshold", "1.5"], r"--threshold 1\.5: expected a probability strictly between 0 and 1"),
        (["--cv", "1"], r"--cv 1: expected K >= 2 folds"),
        (["--test-fraction", "1"], r"--test-fraction 1.0: expected a fraction in \[0, 1\)"),
        # the loss's options are checked with the others, before the data are read; they were named by the loss's
        # field (label_smoothing=1.0) once training had started
        (["--label-smoothing", "1"], r"--label-smoothing 1\.0 is outside \[0, 1\)"),
        (["--gamma-neg", "1e39"], r"--gamma-neg 1e\+39: expected a finite gamma_neg >= 0"),
        (["--clip", "-0.5"], r"--clip -0\.5 is outside \[0, 1\)"),
        # the command's 0 is every label (the configuration's None): its messages say 0, not None
        (["--fbr-positives", "0"], r"--fbr-positives 0: the SCutfbr fallback belongs to --cut-counts 'observed'"),
        (["--cut-counts", "observed", "--fbr-positives", "-1"], r"--fbr-positives -1: expected a count of held-out positives, or 0"),
    ],
)
def test_options_that_would_be_ignored_or_invalid_are_errors(tmp_path, capsys, extra, pattern):
    _one_line_error(["train", "--out", str(tmp_path / "runs")] + FAST + extra, capsys, pattern)
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_evaluate_and_predict_have_no_test_option(trained, capsys):
    _, run = trained
    for command in ("evaluate", "predict"):
        with pytest.raises(SystemExit) as exit_:
            main([command, str(run), "--data", "yeast", "--test", "x", "--out", "y"])
        assert exit_.value.code == 2
    assert "unrecognized arguments: --test" in capsys.readouterr().err


def test_output_and_data_errors_are_one_line(trained, tmp_path, capsys):
    folder, run = trained
    (tmp_path / "a-file").write_text("")
    base = ["--labels", "ya,yb,yc"] + FAST
    train_csv = str(folder / "train.csv")
    _one_line_error(["train", "--data", str(tmp_path)] + base, capsys, r"is a folder: expected a data file")
    _one_line_error(["train", "--data", train_csv, "--out", str(tmp_path / "a-file")] + base, capsys, r"--out .*a-file is a file")
    _one_line_error(["train", "--data", train_csv, "--out", str(tmp_path / "a-file" / "runs")] + base, capsys, r"Not a directory")
    _one_line_error(["predict", str(run), "--data", str(folder / "test.csv"), "--out", str(tmp_path / "a-file")], capsys, r"exists: pass --force")
    _one_line_error(["predict", str(run), "--data", str(folder / "test.csv"), "--out", str(tmp_path)], capsys, r"is a folder: expected a CSV file")
    _one_line_error(["evaluate", str(tmp_path), "--data", "yeast"], capsys, r"no model\.json")
    _one_line_error(["evaluate", str(run), "--data", "yeast"], capsys, r"feature column|features do not match|missing feature")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_fails_before_training(tmp_path, capsys):
    _write_csv(tmp_path / "train.csv", _table())
    (tmp_path / "ro").mkdir(mode=0o500)
    _one_line_error(["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "ro")] + FAST,
                    capsys, r"Permission denied")  # fmt: skip


def test_a_broken_pipe_is_not_a_traceback(trained):
    folder, run = trained
    command = [sys.executable, "-m", "softmargin", "predict", str(run), "--data", str(folder / "test.csv"), "--out", "-"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.readline()
    process.stdout.close()  # like `| head -1`
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0 and "Traceback" not in err, err


# --- what users asked for ------------------------------------------------------------------------------------------


def test_predict_reads_unlabeled_arff_and_csv(trained, tmp_path, capsys):
    folder, run = trained
    table = _table(5, seed=3)
    _write_csv(tmp_path / "new.csv", table[:, :6], columns=COLUMNS[:6], order=COLUMNS[5::-1])
    attributes = "".join(f"@attribute {c} numeric\n" for c in COLUMNS[:6])
    rows = "\n".join(",".join(f"{v:.5f}" for v in row[:6]) for row in table)
    (tmp_path / "new.arff").write_text(f"@relation new\n{attributes}@data\n{rows}\n")
    outputs = []
    for name in ("new.csv", "new.arff"):
        code, out, _ = _run(["predict", str(run), "--data", str(tmp_path / name), "--out", "-"], capsys)
        assert code == 0 and len(out.splitlines()) == 6
        outputs.append(out)
    assert outputs[0] == outputs[1]
    _one_line_error(["evaluate", str(run), "--data", str(tmp_path / "new.csv")], capsys,
                    r"no label column\(s\) \['ya', 'yb', 'yc'\] to evaluate against")  # fmt: skip
    _write_csv(tmp_path / "some.csv", _table(5, seed=3)[:, :8], columns=COLUMNS[:8])  # ya and yb, not yc
    _one_line_error(["evaluate", str(run), "--data", str(tmp_path / "some.csv")], capsys, r"no label column\(s\) \['yc'\] to")
    (tmp_path / "empty.csv").write_text(",".join(COLUMNS) + "\n")
    _one_line_error(["evaluate", str(run), "--data", str(tmp_path / "empty.csv")], capsys, r"empty\.csv: no rows to evaluate")


def _bag_of_words(path: Path, rows: int = 150, seed: int = 0) -> Path:
    """A LIBSVM file of counts (4 labels): its default run is the Newton-solved linear model with tuned thresholds."""
    path.write_text("\n".join(bag_of_words(rows, seed, num_labels=4, num_features=40, rate=0.3, per_row=8)) + "\n")
    return path


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--threshold", "0.2"], r"--threshold 0\.2: this run would ignore it \(it is the threshold of --thresholds fixed; "
                                 r"this run: --model linear, --optimizer newton, --thresholds tuned"),
        (["--k", "3"], r"--k 3: this run would ignore it \(it is the labels per sample of --thresholds top-k"),
        (["--epochs", "7"], r"--epochs 7: this run would ignore it \(it belongs to --optimizer adamw / lbfgs"),
        (["--lr", "0.5"], r"--lr 0\.5: this run would ignore it \(it belongs to --optimizer adamw \(lbfgs takes full-batch "
                          r"steps sized by its line search.*; this run: --model linear, --optimizer newton"),
        *[(["--optimizer", "lbfgs", option, value], rf"{option} {value}: this run would ignore it \(it belongs to --optimizer "
           r"adamw \(lbfgs takes full-batch steps sized by its line search, with no early stopping, weight decay or fused "
           r"head.*; this run: --model linear, --optimizer lbfgs")
          for option, value in (("--lr", "0.5"), ("--batch-size", "7"), ("--patience", "3"), ("--weight-decay", "0.5"),
                                ("--head", "fused"))],
        (["--optimizer", "lbfgs", "--valid-fraction", "0.3"], r"--valid-fraction 0\.3: this run would ignore it \(validation "
         r"rows serve adamw's early stopping and the tuned thresholds"),
        (["--ensemble", "2"], r"--ensemble 2: this run would ignore it"),
        (["--thresholds", "fixed", "--macro-weight", "1"], r"--macro-weight 1\.0: this run would ignore it \(it sets --thresholds tuned's"),
        (["--thresholds", "fixed", "--cut-counts", "observed"], r"--cut-counts observed: this run would ignore it"),
        (["--cut-counts", "observed", "--calibration-prior", "5"], r"--calibration-prior 5\.0: this run would ignore it \(it belongs to --cut-counts calibrated"),
        (["--model", "linear", "--optimizer", "adamw", "--dropout", "0.9"], r"--dropout 0\.9: this run would ignore it \(it is the MLP's"),
        (["--optimizer", "adamw", "--folds", "4"], r"--folds 4: this run would ignore it \(it belongs to the Newton solver"),
        (["--pos-weight-max", "3"], r"--pos-weight-max 3\.0: this run would ignore it \(it caps --pos-weight"),
        (["--pos-weight", "--rare-weight", "5"], r"--rare-weight 5\.0: this run would ignore it \(it weights the Newton solver's rare"),
        (["--thresholds", "rcut", "--at-least-one", "yes"], r"--at-least-one yes: this run would ignore it \(the rank rules"),
        (["--labels", "a,b"], r"--labels: .*bow\.txt is LIBSVM text"),
        (["--xml", "labels.xml"], r"--xml labels\.xml: it names the labels of a MULAN \.arff file"),
        (["--cv", "3", "--test-fraction", "0.5"], r"--test-fraction 0\.5 with --cv 3"),
        (["--calibration-prior", "-1"], r"--calibration-prior -1\.0: expected a positive finite shrinkage strength"),
        (["--fbr", "0.2"], r"--fbr 0\.2: the SCutfbr fallback belongs to --cut-counts 'observed'; the calibrated counts \(the default\) have none; set --cut-counts 'observed'$"),
        (["--seed", "-1"], r"--seed -1: expected an integer"),
        (["--weight-decay", "nan"], r"--weight-decay nan: expected a non-negative finite weight decay"),
    ],
)
def test_train_refuses_an_option_the_run_would_ignore(tmp_path, capsys, extra, pattern):
    """No option is silently ignored: each one given where the resolved run has no use for it (or a bad value) is a
    one-line error naming the option as typed; nothing is trained or written."""
    data = _bag_of_words(tmp_path / "bow.txt")
    _one_line_error(["train", "--data", str(data), "--out", str(tmp_path / "runs"), "--quiet", *extra], capsys, pattern)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_options_a_run_uses_are_accepted(tmp_path, capsys):
    """The other side of the refusals above: the same options where the run uses them."""
    data = _bag_of_words(tmp_path / "bow.txt")
    for extra in (["--thresholds", "fixed", "--threshold", "0.3"], ["--cut-counts", "observed", "--fbr", "0.2"],
                  ["--thresholds", "top-k", "--k", "2"], ["--macro-weight", "1", "--calibration-prior", "5"],
                  ["--optimizer", "lbfgs", "--epochs", "3", "--C", "1", "--ensemble", "2"],
                  ["--optimizer", "lbfgs", "--epochs", "3", "--thresholds", "tuned", "--valid-fraction", "0.3"],
                  ["--optimizer", "adamw", "--epochs", "2", "--lr", "0.01", "--batch-size", "7", "--patience", "3",
                   "--weight-decay", "0.5", "--head", "fused", "--ensemble", "1"]):  # fmt: skip
        code, _, err = _run(["train", "--data", str(data), "--out", str(tmp_path / "runs"), "--quiet", *extra], capsys)
        assert code == 0, (extra, err)


def test_train_refuses_an_empty_test_file_before_training(tmp_path, capsys):
    _write_csv(tmp_path / "train.csv", _table())
    (tmp_path / "test.csv").write_text(",".join(COLUMNS) + "\n")
    _one_line_error(["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--test", str(tmp_path / "test.csv"),
                     "--out", str(tmp_path / "runs")] + FAST, capsys, r"--test .*test\.csv: no rows to test on")  # fmt: skip
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_predict_refuses_threshold_and_k_the_decision_would_ignore(trained, tmp_path, capsys):
    """--threshold belongs to --thresholds fixed and --k to top-k: with another strategy they were ignored."""
    folder, run = trained
    base = ["predict", str(run), "--data", str(folder / "test.csv"), "--out", "-"]
    _one_line_error(base + ["--k", "2"], capsys, r"--k 2: it is the labels per sample of --thresholds top-k, and this model decides with tuned")
    _one_line_error(base + ["--thresholds", "rcut", "--threshold", "0.2"], capsys, r"--threshold 0\.2: it is the threshold of --thresholds fixed")
    _one_line_error(base + ["--threshold", "0"], capsys, r"--threshold 0\.0: expected a probability strictly between 0 and 1")
    code, out, _ = _run(base + ["--thresholds", "top-k", "--k", "2"], capsys)
    assert code == 0 and all(line.count(",1") + line.count(",0") for line in out.splitlines()[1:])
    code, low, _ = _run(base + ["--thresholds", "fixed", "--threshold", "0.01"], capsys)
    code2, high, _ = _run(base + ["--thresholds", "fixed", "--threshold", "0.99"], capsys)
    assert code == code2 == 0 and low != high


def test_hidden_without_a_size_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--hidden", ",,"])
    assert "--hidden ',,': no layer size" in capsys.readouterr().err


def test_predict_matches_load_run_and_top_k(trained, capsys):
    import softmargin

    folder, run = trained
    model = softmargin.load_run(run)
    data = np.loadtxt(folder / "test.csv", delimiter=",", skiprows=1)
    proba = model.predict_proba(data[:, :6])
    assert main(["predict", str(run), "--data", str(folder / "test.csv"), "--out", "-"]) == 0
    printed = np.loadtxt(capsys.readouterr().out.splitlines(), delimiter=",", skiprows=1)
    np.testing.assert_allclose(printed[:, 1:4], proba, atol=1e-6)
    np.testing.assert_array_equal(printed[:, 4:], model.predict(data[:, :6]))
    assert main(["predict", str(run), "--data", str(folder / "test.csv"), "--out", "-", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "row,label_1,p_1,label_2,p_2"
    for line, p in zip(lines[1:], proba):
        fields = line.split(",")
        best = np.argsort(-p, kind="stable")[:2]
        assert fields[1::2] == [["ya", "yb", "yc"][i] for i in best]
        np.testing.assert_allclose([float(v) for v in fields[2::2]], p[best], atol=1e-6)


def test_predict_announces_a_huge_dense_output_and_points_to_top_k(trained, tmp_path, capsys, monkeypatch):
    """10,000 samples x 100,000 labels wrote 11 GB of CSV over 400 s without a word: from LARGE_PREDICTIONS cells on
    the size is announced with --top-k's alternative (the output itself is what was asked for)."""
    from softmargin.app import runs

    folder, run = trained
    argv = ["predict", str(run), "--data", str(folder / "test.csv"), "--out", str(tmp_path / "p.csv")]
    assert main(argv) == 0
    assert "GB of CSV" not in capsys.readouterr().err
    rows = len((folder / "test.csv").read_text().splitlines()) - 1
    monkeypatch.setattr(runs, "LARGE_PREDICTIONS", rows * 3)
    assert main([*argv, "--force"]) == 0
    err = capsys.readouterr().err
    assert f"predict: {rows} samples x 3 labels" in err and "--top-k K writes each sample's K best labels instead" in err
    assert len((tmp_path / "p.csv").read_text().splitlines()) == rows + 1
    assert main([*argv, "--force", "--top-k", "1"]) == 0
    assert "GB of CSV" not in capsys.readouterr().err


def test_threshold_strategies_chosen_at_train_time_and_overridden_later(trained, tmp_path, capsys):
    import softmargin

    folder, run = trained
    X = np.loadtxt(folder / "test.csv", delimiter=",", skiprows=1)[:, :6]
    model = softmargin.load_run(run)
    assert model.decision["strategy"] == "tuned"
    p = model.predict_proba(X)
    train_Y = np.loadtxt(folder / "train.csv", delimiter=",", skiprows=1)[:, 6:]
    cardinality = int(round(train_Y.sum(1).mean()))
    cases = {("fixed", "0.3", None): (p >= 0.3), ("top-k", None, "2"): None, ("rcut", None, None): None}
    for (strategy, threshold, k), expected in cases.items():
        argv = ["predict", str(run), "--data", str(folder / "test.csv"), "--out", "-", "--thresholds", strategy]
        argv += ["--threshold", threshold] if threshold else []
        argv += ["--k", k] if k else []
        assert main(argv) == 0
        pred = np.loadtxt(capsys.readouterr().out.splitlines(), delimiter=",", skiprows=1)[:, 4:]
        if expected is not None:
            np.testing.assert_array_equal(pred, expected)
        else:
            count = int(k) if k else cardinality
            assert (pred.sum(1) == count).all()
            top = np.sort(p, axis=1)[:, ::-1]
            np.testing.assert_array_equal((p * pred).sum(1), top[:, :count].sum(1))
    # chosen at train time
    _write_csv(tmp_path / "train.csv", _table())
    assert main(["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs"),
                 "--thresholds", "top-k", "--k", "2"] + FAST) == 0  # fmt: skip
    (other,) = (tmp_path / "runs").iterdir()
    assert softmargin.load_run(other).predict(X).sum(1).tolist() == [2] * len(X)
    _one_line_error(["evaluate", str(other), "--data", str(folder / "test.csv"), "--labels", "ya,yb,yc", "--thresholds", "tuned"],
                    capsys, r"trained without tuned thresholds")  # fmt: skip


def test_hold_out_split_without_test(tmp_path, capsys):
    _write_csv(tmp_path / "train.csv", _table())
    code, out, err = _run(["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs")] + FAST, capsys)
    assert code == 0 and "24 samples held out for testing" in err and "held-out 20%" in out and "24 samples" in out
    (run,) = (tmp_path / "runs").iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["evaluated_on"].startswith("held-out 20%") and config["test_fraction"] == 0.2


def test_cross_validation_reports_mean_and_std(tmp_path, capsys):
    _write_csv(tmp_path / "train.csv", _table())
    code, out, _ = _run(["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--cv", "3", "--out", str(tmp_path / "runs")] + FAST, capsys)
    assert code == 0 and "3-fold cross-validation" in out
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "cv_metrics.json").read_text())
    folds = [f["micro_f1"] for f in summary["folds"]]
    assert len(folds) == 3
    assert summary["mean"]["micro_f1"] == pytest.approx(np.mean(folds)) and summary["std"]["micro_f1"] == pytest.approx(np.std(folds, ddof=1))
    assert f"{np.mean(folds):.4f} ± {np.std(folds, ddof=1):.4f}" in out


def test_config_records_versions_and_data_hashes(trained):
    import torch

    import softmargin

    folder, run = trained
    config = json.loads((run / "config.json").read_text())
    assert config["versions"]["softmargin"] == softmargin.__version__ and config["versions"]["torch"] == torch.__version__
    for name in ("train.csv", "test.csv"):
        assert config["data_sha256"][str(folder / name)] == hashlib.sha256((folder / name).read_bytes()).hexdigest()


def test_per_label_table_and_csv_sorted_by_support(trained, capsys):
    folder, run = trained
    assert main(["evaluate", str(run), "--data", str(folder / "test.csv"), "--labels", "ya,yb,yc"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.split("label ")[1].splitlines()[2:] if line.strip()]
    supports = [int(r[1]) for r in rows]
    Y = np.loadtxt(folder / "test.csv", delimiter=",", skiprows=1)[:, 6:]
    assert supports == sorted(Y.sum(0).astype(int).tolist(), reverse=True)
    csv_supports = [int(line.split(",")[1]) for line in (run / "per_label.csv").read_text().splitlines()[1:]]
    assert csv_supports == sorted(csv_supports, reverse=True)


def test_no_progress_bar_frames_when_stderr_is_not_a_terminal(tmp_path, capsys):
    _write_csv(tmp_path / "train.csv", _table())
    code, _, err = _run(["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs"),
                         "--epochs", "2", "--ensemble", "2"], capsys)  # fmt: skip
    assert code == 0 and "\r" not in err and "it/s" not in err
    assert "model 1/2 (seed 0): 2 epochs" in err and "model 2/2 (seed 1)" in err


def test_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 200)", "(default: 0.2)", "(default: auto)", "(default: 0.05)", "(default: runs)", "(default: 0.001)"):
        assert default in text, default
    # no "(default: None)": it stood after the required --data, and after "(default: the model's)"
    for command in ("train", "evaluate", "predict", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text, command
    done = subprocess.run([sys.executable, "-m", "softmargin", "--version"], capture_output=True, text=True, timeout=120)
    import softmargin

    assert done.returncode == 0 and done.stdout.strip() == f"softmargin {softmargin.__version__}"


def test_device_cpu_and_a_missing_cuda(trained, capsys):
    import torch

    folder, run = trained
    code, out, _ = _run(["evaluate", str(run), "--data", str(folder / "test.csv"), "--labels", "ya,yb,yc", "--device", "cpu"], capsys)
    assert code == 0
    if not torch.cuda.is_available():
        _one_line_error(["evaluate", str(run), "--data", str(folder / "test.csv"), "--labels", "ya,yb,yc", "--device", "cuda"],
                        capsys, r"no CUDA device")  # fmt: skip


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_bad_device_is_named_before_anything_is_read_or_written(trained, tmp_path, capsys, command):
    folder, run = trained
    argv = [command, str(run), "--data", str(tmp_path / "absent.csv"), "--device", "bogus"]
    argv += ["--out", "-"] if command == "predict" else []
    code, out, err = _run(argv, capsys)
    assert code == 2 and "--device bogus: expected 'auto', 'cpu', 'cuda' or 'cuda:N'" in err, err
    assert "absent.csv" not in err  # the data was not read yet
    assert out == ""  # and no CSV header went out


def test_holdout_is_seeded_and_disjoint():
    data = T.Dataset(np.arange(50, dtype=np.float32)[:, None], np.zeros((50, 2), np.uint8), ["x"], ["a", "b"])
    train, test = R.holdout(data, 0.2, seed=3)
    assert len(test) == 10 and len(train) == 40
    assert sorted(np.r_[train.X[:, 0], test.X[:, 0]].tolist()) == list(range(50))
    assert R.holdout(data, 0.2, seed=3)[1].X.tolist() == test.X.tolist()


def test_test_rows_that_are_training_rows_are_a_warning(tmp_path, capsys):
    """A test row that is a training row (features and labels) is not held out: the model was trained on it (on random
    labels, 33 such rows of 80 took a held-out micro-F1 from chance, 0.35, to 0.59). Nothing said so before. A row
    with a training row's features but other labels is not counted (binary word features coincide often: 871 of
    delicious' 3,185 test rows, 63 with the labels too)."""
    table = _table()
    test = _table(20, seed=1)
    test[3:10] = table[40:47]  # 7 test rows that are training rows
    test[12:14, :6] = table[50:52, :6]  # 2 with a training row's features only
    test[12:14, 6:] = 1 - table[50:52, 6:]
    _write_csv(tmp_path / "train.csv", table)
    _write_csv(tmp_path / "test.csv", test)
    _write_csv(tmp_path / "clean.csv", _table(20, seed=1))
    argv = ["train", "--data", str(tmp_path / "train.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs")] + FAST
    code, _, err = _run(argv + ["--test", str(tmp_path / "test.csv")], capsys)
    assert code == 0, err
    assert f"warning: --test {tmp_path / 'test.csv'}: 7 of the 20 test rows (35.0 %) are also training rows" in err
    code, _, err = _run(argv + ["--test", str(tmp_path / "clean.csv")], capsys)
    assert code == 0 and "warning" not in err, err


def test_held_out_and_cross_validated_rows_that_are_training_rows_are_counted(tmp_path, capsys):
    """Every row of --data twice: a held-out or fold test row whose twin is on the training side is counted, once."""
    twice = np.r_[_table(60), _table(60)]
    _write_csv(tmp_path / "twice.csv", twice)
    argv = ["train", "--data", str(tmp_path / "twice.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs")] + FAST
    data = T.Dataset(np.arange(120.0)[:, None], np.zeros((120, 2), np.uint8), ["row"], ["a", "b"])
    _, held_out = R.holdout(data, 0.2, seed=4)
    rows = held_out.X[:, 0].astype(int)
    expected = sum((row + 60) % 120 not in rows for row in rows)  # its twin trained on
    code, _, err = _run(argv + ["--seed", "4"], capsys)
    assert code == 0 and f"--test-fraction 0.2 (seed 4): {expected} of the 24 test rows (" in err
    from sklearn.model_selection import KFold

    folds = KFold(3, shuffle=True, random_state=0).split(np.zeros(120))
    expected = sum((row + 60) % 120 not in test for _, test in folds for row in test)
    code, _, err = _run(argv + ["--cv", "3"], capsys)
    assert code == 0 and f"--cv 3 (each fold's test rows against its training part): {expected} of the 120 test rows" in err


def test_seen_in_training_compares_feature_values_not_storage():
    """Dense and sparse rows, float32 and float64, stored zeros and unsorted indices: the same values are the same row."""
    train = T.Dataset(np.array([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0]]), None, ["a", "b", "c"])
    test = T.Dataset(np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 1.0], [-0.0, 1.5, 0.0]], np.float32), None, ["a", "b", "c"])
    assert R.seen_in_training(train, test) == 2
    import scipy.sparse as sp

    messy = sp.csr_matrix((np.array([-1.0, 0.0, 2.0]), np.array([2, 1, 0]), np.array([0, 3])), shape=(1, 3))
    assert R.seen_in_training(T.Dataset(sp.csr_matrix(train.X), None), T.Dataset(messy, None)) == 1
    assert R.seen_in_training(T.Dataset(sp.csr_matrix(train.X), None), T.Dataset(sp.csr_matrix(test.X), None)) == 2


def test_predict_on_headerless_libsvm_that_omits_the_last_feature(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(80):
        labels = ",".join(str(i) for i in range(4) if rng.random() < 0.4)
        lines.append(f"{labels} " + " ".join(f"{j}:{rng.random():.3f}" for j in sorted(rng.choice(30, 4, replace=False))))
    (tmp_path / "train.txt").write_text("80 30 4\n" + "\n".join(lines) + "\n")
    (tmp_path / "new.txt").write_text("0:1.5 3:0.25\n 7:1\n")  # no header, no labels, never mentions feature 29
    assert main(["train", "--data", str(tmp_path / "train.txt"), "--out", str(tmp_path / "runs"), "--quiet"]) == 0  # Newton: no epochs
    (run,) = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    code, out, _ = _run(["predict", str(run), "--data", str(tmp_path / "new.txt"), "--out", "-"], capsys)
    assert code == 0 and out.splitlines()[0] == "row,p_0,p_1,p_2,p_3,y_0,y_1,y_2,y_3" and len(out.splitlines()) == 3
    (tmp_path / "wide.txt").write_text("0:1.5 30:1\n")
    _one_line_error(["predict", str(run), "--data", str(tmp_path / "wide.txt"), "--out", "-"], capsys,
                    r"wide\.txt: feature index 30: the model has 30 features")  # fmt: skip


def test_the_command_line_defaults_are_the_configuration_defaults():
    """`softmargin train` without options trains TrainConfig()'s model: every default of the command (the new
    --fallback, --rare-weight and --rare-positives too) is the configuration's."""
    import dataclasses

    from softmargin.app.cli import build_parser

    from_command = R._config(build_parser().parse_args(["train"]))
    defaults = T.TrainConfig()
    differ = {f.name: (getattr(from_command, f.name), getattr(defaults, f.name)) for f in dataclasses.fields(defaults)
              if getattr(from_command, f.name) != getattr(defaults, f.name)}  # fmt: skip
    assert differ == {}
    flags = R._config(build_parser().parse_args(["train", "--cut-counts", "observed", "--fallback", "above", "--rare-weight", "1",
                                                 "--rare-positives", "5", "--macro-weight", "0.5"]))  # fmt: skip
    assert (flags.cut_counts, flags.fallback, flags.rare_weight, flags.rare_positives) == ("observed", "above", 1.0, 5)
    assert flags.macro_weight == 0.5
    flags = R._config(build_parser().parse_args(["train", "--calibration-prior", "3"]))
    assert (flags.cut_counts, flags.calibration_prior, flags.macro_weight) == ("calibrated", 3.0, None)


def test_fbr_options_without_observed_counts_are_a_one_line_error(capsys):
    """--fbr / --fallback / --fbr-positives have no meaning with the default calibrated counts: refused, not ignored."""
    _one_line_error(["train", "--data", "yeast", "--fallback", "above"], capsys, r"--fallback 'above': the SCutfbr fallback belongs to --cut-counts 'observed'")
    _one_line_error(["train", "--data", "yeast", "--fbr", "0.3"], capsys, r"--fbr 0\.3: .*--cut-counts 'observed'")


def test_data_errors_at_the_cli_are_one_line_not_tracebacks(tmp_path, capsys):
    """A CSV header that csv cannot read (its csv.Error is no ValueError) was a traceback and exit code 1; a LIBSVM
    header's F = 1e20 an OverflowError from scipy."""
    (tmp_path / "q.csv").write_text('"f0,f1,L0,L1\n' + "0.1,0.2,1,0\n" * 20_000)
    _one_line_error(["train", "--data", str(tmp_path / "q.csv"), "--labels", "L0,L1"] + FAST, capsys,
                    r"q\.csv:1: the header row cannot be read as CSV .*a quote opened here or below is never closed")  # fmt: skip
    (tmp_path / "g.txt").write_text("1 99999999999999999999 3\n0 0:1\n")
    _one_line_error(["train", "--data", str(tmp_path / "g.txt")] + FAST, capsys, r"g\.txt:1: the header 'N F L' says F = ")


@pytest.mark.parametrize("labels", [",", "", " , "])
def test_labels_naming_nothing_is_an_error_not_ignored(tmp_path, capsys, labels):
    """--labels ',' was an empty label list, --labels '' the option ignored."""
    _write_csv(tmp_path / "train.csv", _table())
    for command in (["train", "--data", str(tmp_path / "train.csv")], ["predict", str(tmp_path), "--data", "yeast", "--out", "-"]):
        _one_line_error(command + ["--labels", labels], capsys, r"--labels: no label name given: expected comma-separated names")


def test_predict_names_an_empty_out_and_a_file_given_as_the_run(trained, tmp_path, capsys):
    """--out '' was read as the current folder ('--out . is a folder'), a file as RUN 'no such run folder'."""
    folder, run = trained
    test_csv = str(folder / "test.csv")
    _one_line_error(["predict", str(run), "--data", test_csv, "--out", ""], capsys,
                    r"--out is empty: expected a CSV file name \(or - for standard output\)", quiet_stdout=True)  # fmt: skip
    for command in ("predict", "evaluate"):
        _one_line_error([command, test_csv, "--data", test_csv, "--out", str(tmp_path / "p.csv")], capsys,
                        rf"{re.escape(test_csv)} is a file, not a run folder: expected a folder written by 'softmargin train'$")  # fmt: skip
    _one_line_error(["predict", str(run / "model.json"), "--data", test_csv, "--out", str(tmp_path / "p.csv")], capsys,
                    rf"model\.json is a file, not a run folder: .*; give its folder, {re.escape(str(run))}$")  # fmt: skip
    assert not (tmp_path / "p.csv").exists()


def test_metrics_json_is_strict_json_when_a_metric_is_undefined(trained, tmp_path):
    """Test labels all 0: mAP and PSP@k are undefined. metrics.json held a bare NaN, which JSON.parse (and any strict
    parser) refuses; it now holds null."""
    folder, run = trained
    table = _table(40, seed=3)
    table[:, 6:] = 0
    _write_csv(tmp_path / "zeros.csv", table)
    assert main(["evaluate", str(run), "--data", str(tmp_path / "zeros.csv"), "--out", str(tmp_path / "ev")]) == 0

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["mAP"] is None and metrics["PSP@1"] is None
    assert isinstance(metrics["hamming_loss"], float)


@pytest.mark.parametrize("extra,pattern", [
    (["--lr", "3.5e38"], r"--lr 3\.5e\+38: expected a positive learning rate, at most float32's largest"),  # a torch traceback
    (["--valid-fraction", "0", "--patience", "1"], r"--patience 1: this run would ignore it \(early stopping watches the validation rows"),
    (["--rare-weight", "1", "--rare-positives", "20", "--model", "linear"], r"--rare-positives 20: this run would ignore it \(it says which labels --rare-weight weights"),
])  # fmt: skip
def test_options_a_run_would_ignore_or_torch_would_crash_on_are_named(tmp_path, capsys, extra, pattern):
    _write_csv(tmp_path / "t.csv", _table())
    fast = ["--quiet"] if "linear" in extra else FAST  # (the Newton solver refuses --epochs / --ensemble)
    _one_line_error(["train", "--data", str(tmp_path / "t.csv"), "--labels", "ya,yb,yc", "--out", str(tmp_path / "runs"),
                     *fast, *extra], capsys, pattern)  # fmt: skip


def test_test_fraction_with_a_builtin_data_set_is_refused(tmp_path, capsys):
    """yeast has its standard test split: --test-fraction 0.5 was silently ignored, and recorded in config.json."""
    _one_line_error(["train", "--data", "yeast", "--test-fraction", "0.5", "--out", str(tmp_path / "runs"), *FAST], capsys,
                    r"--test-fraction 0\.5 with --data yeast: a built-in data set comes with its standard test split")  # fmt: skip
