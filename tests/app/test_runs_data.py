"""evaluate / predict against the data they read (the review of their readers): labels that are absent, empty or
partial, extra columns, --xml, --top-k with decision options, LIBSVM files without labels, with empty lines or with a
larger header, and `train --test` on LIBSVM text without labels. Each outcome is checked: a one-line error naming the
file, line or option (exit code 2), or the predictions, compared with those of the same data written plainly."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import bag_of_words, one_line_error
from cli_helpers import run as _run

pytest.importorskip("torch")

from softmargin.app.cli import main

_one_line_error = partial(one_line_error, quiet_stdout=True)  # and nothing on stdout, not even a CSV header

FEATURES = ["f0", "f1", "f2", "f3", "f4", "f5"]
LABELS = ["ya", "yb", "yc"]


def _table(n: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)) * [1, 2, 3, 4, 5, 6]
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] > 1]).astype(int)
    return np.column_stack([X, Y])


def _csv(path: Path, columns: list[str], rows: list[list[str]]) -> Path:
    path.write_text(",".join(columns) + "\n" + "".join(",".join(row) + "\n" for row in rows))
    return path


def _cells(table: np.ndarray) -> list[list[str]]:
    return [[f"{v:.5f}" for v in row[:6]] + [str(int(v)) for v in row[6:]] for row in table]


def _arff(path: Path, table: np.ndarray, extra: str | None = None) -> Path:
    """The table as ARFF; ``extra``: one more numeric attribute of that name (values 7)."""
    attributes = "".join(f"@attribute {c} numeric\n" for c in FEATURES) + "".join(f"@attribute {c} {{0,1}}\n" for c in LABELS)
    more = (f"@attribute {extra} numeric\n", ",7") if extra else ("", "")
    rows = "".join(",".join(row) + more[1] + "\n" for row in _cells(table))
    path.write_text(f"@relation t\n{attributes}{more[0]}@data\n{rows}")
    return path




@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small MLP trained on a CSV (f0..f5, labels ya, yb, yc), and the test rows as CSV and ARFF."""
    folder = tmp_path_factory.mktemp("trained")
    _csv(folder / "train.csv", FEATURES + LABELS, _cells(_table()))
    test = _table(20, seed=1)
    _csv(folder / "test.csv", FEATURES + LABELS, _cells(test))
    _arff(folder / "test.arff", test)
    argv = ["train", "--data", str(folder / "train.csv"), "--labels", ",".join(LABELS), "--out", str(folder / "runs"),
            "--epochs", "3", "--ensemble", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    (run,) = (folder / "runs").iterdir()
    return folder, run


def _bag_of_words(rows: int = 60, seed: int = 0) -> list[str]:
    return bag_of_words(rows, seed, num_labels=3, num_features=8, rate=0.4, per_row=4)


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """The Newton-solved linear model of a LIBSVM file (8 features, 3 labels, every index used)."""
    folder = tmp_path_factory.mktemp("linear")
    (folder / "train.txt").write_text("\n".join(_bag_of_words()) + "\n")
    assert main(["train", "--data", str(folder / "train.txt"), "--out", str(folder / "runs"), "--quiet"]) == 0
    (run,) = (folder / "runs").iterdir()
    return folder, run


def _predict(run: Path, data: Path, capsys, *extra: str) -> str:
    code, out, err = _run(["predict", str(run), "--data", str(data), "--out", "-", *extra], capsys)
    assert code == 0, err
    return out


# --- item 2: evaluate on LIBSVM text without any label -----------------------------------------------------------------


def test_evaluate_refuses_libsvm_text_in_which_no_row_has_a_label(linear, tmp_path, capsys):
    folder, run = linear
    (tmp_path / "unlabeled.txt").write_text("0:1.0 1:0.5\n2:1.0\n3:0.2 4:1\n")
    _one_line_error(["evaluate", str(run), "--data", str(tmp_path / "unlabeled.txt")], capsys,
                    r"--data .*unlabeled\.txt: no row has a label \(LIBSVM text: the ids before the features\): nothing to "
                    r"evaluate against \(predict needs no labels\)$")  # fmt: skip
    assert len(_predict(run, tmp_path / "unlabeled.txt", capsys).splitlines()) == 4  # header + 3 rows
    (tmp_path / "some.txt").write_text("0:1.0 1:0.5\n1 2:1.0\n")  # one row without labels is ordinary LIBSVM
    code, out, err = _run(["evaluate", str(run), "--data", str(tmp_path / "some.txt")], capsys)
    assert code == 0 and "micro_f1" in out, err
    _one_line_error(["train", "--data", str(folder / "train.txt"), "--test", str(tmp_path / "unlabeled.txt"), "--out",
                     str(tmp_path / "runs"), "--quiet"], capsys, r"--test .*unlabeled\.txt: no row has a label")  # fmt: skip
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- item 4: an empty LIBSVM line -------------------------------------------------------------------------------------


def test_an_empty_libsvm_line_is_a_sample_after_a_header_and_an_error_without(linear, tmp_path, capsys):
    _, run = linear
    (tmp_path / "gap.txt").write_text("0 0:1.0\n\n1 1:2.0\n2 2:0.5\n")
    _one_line_error(["predict", str(run), "--data", str(tmp_path / "gap.txt"), "--out", "-"], capsys,
                    r"gap\.txt:2: an empty line between samples: a sample needs labels or features")  # fmt: skip
    (tmp_path / "xc.txt").write_text("4 8 3\n0 0:1.0\n\n1 1:2.0\n2 2:0.5\n")
    (tmp_path / "zero.txt").write_text("0 0:1.0\n0:0\n1 1:2.0\n2 2:0.5\n")
    predicted = _predict(run, tmp_path / "xc.txt", capsys)
    assert [line.split(",")[0] for line in predicted.splitlines()[1:]] == ["0", "1", "2", "3"]
    assert predicted == _predict(run, tmp_path / "zero.txt", capsys)  # the empty sample, written as 0:0


def test_libsvm_text_in_which_no_row_gives_a_feature_is_named(linear, tmp_path, capsys):
    """A file of comma-separated integers without a header (a CSV file named .txt) reads as LIBSVM rows of labels
    only: predict gave every row the same probabilities, the model's biases, and train with an 'N F L' header trained
    on F all-zero columns, both silently."""
    folder, run = linear
    (tmp_path / "ints.txt").write_text("0,2\n1\n0,1,2\n")
    code, out, err = _run(["predict", str(run), "--data", str(tmp_path / "ints.txt"), "--out", "-"], capsys)
    assert code == 0 and len(out.splitlines()) == 4, err
    assert re.search(r"predict: warning: --data .*ints\.txt: no row gives a feature value \(LIBSVM text: the idx:val "
                     r"pairs after a row's labels\), so every row gets the same probabilities", err), err  # fmt: skip
    code, out, err = _run(["evaluate", str(run), "--data", str(tmp_path / "ints.txt")], capsys)
    assert code == 0 and "evaluate: warning: --data" in err and "no row gives a feature value" in err, err
    (tmp_path / "zero.txt").write_text("0:0\n1\n")
    code, out, err = _run(["predict", str(run), "--data", str(tmp_path / "zero.txt"), "--out", "-"], capsys)
    assert code == 0 and "warning" not in err, err  # one feature given, even an explicit 0: no warning
    (tmp_path / "header.txt").write_text("40 8 3\n" + "".join(line.split()[0] + "\n" for line in _bag_of_words(40)))
    _one_line_error(["train", "--data", str(tmp_path / "header.txt"), "--out", str(tmp_path / "runs"), "--quiet"], capsys,
                    r"header: no row gives a feature value \(the LIBSVM rows hold labels only.*nothing to learn from")  # fmt: skip
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_sparse_features_float32_would_lose_are_refused_by_train_as_dense_ones_are(tmp_path, capsys):
    """LIBSVM features of 1e-50 x N(0, 1) or 1.6e9 + 50 x N(0, 1), the only signal of label 0, trained silently with
    that feature lost in float32 (label 0's F1 0.67 and 0.70, against 0.985 from the same values x 1); the same data
    dense is refused (1e-50) or kept in float64 (timestamps)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(60)
    for name, column, pattern in (
        ("tiny", x * 1e-50, r"feature '0' \(column 0\) has values of magnitude up to .*e-50, below float32's smallest normal"),
        ("times", 1.6e9 + 50 * x, r"feature '0' \(column 0\) varies too little for its magnitude: float32, in which sparse "
                                  r"features are computed .*subtract a typical value from the column first"),
    ):  # fmt: skip
        lines = [("0," if v > 0 else "") + f"1 0:{float(c)!r} 1:{float(n)!r}" for v, c, n in zip(x, column, rng.standard_normal(60))]
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
        _one_line_error(["train", "--data", str(tmp_path / f"{name}.txt"), "--out", str(tmp_path / "runs"), "--quiet"], capsys,
                        rf"train: error: {name}: {pattern}")  # fmt: skip
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- items 5, 9, 17: numbers, extra columns, label columns predict does not need --------------------------------------


def test_numbers_that_only_pythons_float_reads_are_refused(trained, tmp_path, capsys):
    _, run = trained
    for cell in ("1_0", "\u0661\u0660"):
        data = _csv(tmp_path / "odd.csv", FEATURES, [[cell, "0", "0", "0", "0", "0"]])
        _one_line_error(["predict", str(run), "--data", str(data), "--out", "-"], capsys,
                        r"odd\.csv:2: column 'f0': expected a number .*plain ASCII decimal or scientific notation")  # fmt: skip


def test_an_extra_column_is_an_error_in_evaluate_and_predict(trained, tmp_path, capsys):
    folder, run = trained
    table = _table(20, seed=1)
    rows = [cells + ["9"] for cells in _cells(table)]
    _csv(tmp_path / "extra.csv", FEATURES + LABELS + ["f6"], rows)
    _arff(tmp_path / "extra.arff", table, extra="zz")
    for name, column in (("extra.csv", "f6"), ("extra.arff", "zz")):
        pattern = rf"{re.escape(name)}: extra column\(s\) \['{column}'\]: neither one of the model's 6 features nor one of its 3 labels"
        _one_line_error(["evaluate", str(run), "--data", str(tmp_path / name)], capsys, pattern)
        _one_line_error(["predict", str(run), "--data", str(tmp_path / name), "--out", "-"], capsys, pattern)
    _one_line_error(["train", "--data", str(folder / "train.csv"), "--labels", ",".join(LABELS), "--test",
                     str(tmp_path / "extra.csv"), "--out", str(tmp_path / "runs"), "--epochs", "1", "--ensemble", "1",
                     "--quiet"], capsys, r"extra feature\(s\) \['f6'\]")  # fmt: skip


def test_predict_skips_label_columns_whatever_they_hold(trained, tmp_path, capsys):
    """predict needs no labels: empty or odd label cells, some label columns or --labels naming some of them give the
    predictions of the features alone; evaluate, which needs them, still refuses."""
    folder, run = trained
    plain = _predict(run, folder / "test.csv", capsys)
    features = [cells[:6] for cells in _cells(_table(20, seed=1))]
    _csv(tmp_path / "features.csv", FEATURES, features)
    _csv(tmp_path / "empty.csv", FEATURES + LABELS, [cells + ["", "?", "yes"] for cells in features])
    _csv(tmp_path / "some.csv", ["yb"] + FEATURES, [[""] + cells for cells in features])
    assert _predict(run, tmp_path / "features.csv", capsys) == plain
    assert _predict(run, tmp_path / "empty.csv", capsys) == plain
    assert _predict(run, tmp_path / "some.csv", capsys) == plain
    assert _predict(run, folder / "test.csv", capsys, "--labels", "ya,yb") == plain
    assert _predict(run, folder / "test.arff", capsys, "--labels", "yc") == plain
    _one_line_error(["evaluate", str(run), "--data", str(tmp_path / "empty.csv")], capsys, r"empty\.csv:2: column '[^']+': expected a label, 0 or 1")
    _one_line_error(["evaluate", str(run), "--data", str(folder / "test.csv"), "--labels", "ya,yb"], capsys,
                    r"--labels ya,yb: the model's label\(s\) \['yc'\] are not named: evaluate needs all 3")  # fmt: skip
    _one_line_error(["predict", str(run), "--data", str(folder / "test.csv"), "--labels", "ya,f0", "--out", "-"], capsys,
                    r"--labels ya,f0: \['f0'\] not among the model's 3 labels \['ya', 'yb', 'yc'\]")  # fmt: skip
    code, out, err = _run(["evaluate", str(run), "--data", str(folder / "test.csv"), "--labels", "yc,ya,yb"], capsys)
    assert code == 0 and "micro_f1" in out, err


# --- item 10: --xml ---------------------------------------------------------------------------------------------------


def test_xml_is_read_and_checked_by_evaluate_and_predict(trained, tmp_path, capsys):
    folder, run = trained
    data = str(folder / "test.arff")
    for command in (["evaluate"], ["predict", "--out", "-"]):
        argv = [command[0], str(run), "--data", data, *command[1:]]
        _one_line_error(argv + ["--xml", str(tmp_path / "nonexistent.xml")], capsys,
                        r"nonexistent\.xml: not a readable MULAN label XML file \(.*No such file")  # fmt: skip
        (tmp_path / "other.xml").write_text('<labels><label name="ya"/><label name="zz"/></labels>')
        _one_line_error(argv + ["--xml", str(tmp_path / "other.xml")], capsys,
                        r"--xml .*other\.xml: \['zz'\] not among the model's 3 labels")  # fmt: skip
        _one_line_error(argv + ["--xml", str(tmp_path / "other.xml"), "--labels", "ya"], capsys,
                        r"--labels and --xml .*other\.xml both name the labels: give one of them")  # fmt: skip
    (tmp_path / "labels.xml").write_text('<labels><label name="yc"/><label name="ya"/><label name="yb"/></labels>')
    code, out, err = _run(["evaluate", str(run), "--data", data, "--xml", str(tmp_path / "labels.xml")], capsys)
    code2, out2, _ = _run(["evaluate", str(run), "--data", str(folder / "test.csv")], capsys)
    assert code == code2 == 0 and out.splitlines()[1:] == out2.splitlines()[1:], err
    (tmp_path / "two.xml").write_text('<labels><label name="ya"/><label name="yb"/></labels>')
    _one_line_error(["evaluate", str(run), "--data", data, "--xml", str(tmp_path / "two.xml")], capsys,
                    r"--xml .*two\.xml: the model's label\(s\) \['yc'\] are not named")  # fmt: skip
    assert _predict(run, folder / "test.arff", capsys, "--xml", str(tmp_path / "two.xml")) == _predict(run, folder / "test.csv", capsys)
    _one_line_error(["predict", str(run), "--data", str(folder / "test.csv"), "--xml", str(tmp_path / "labels.xml"),
                     "--out", "-"], capsys, r"--xml .*labels\.xml: it names the labels of a MULAN \.arff file")  # fmt: skip


# --- item 11: predict --top-k with the decision options -----------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, option",
    [(["--thresholds", "top-k", "--k", "3"], "--thresholds top-k"), (["--thresholds", "fixed", "--threshold", "0.3"], "--thresholds fixed"),
     (["--threshold", "0.3"], "--threshold 0.3"), (["--k", "3"], "--k 3")],
)  # fmt: skip
def test_predict_top_k_refuses_the_decision_options_it_would_ignore(trained, tmp_path, capsys, extra, option):
    folder, run = trained
    _one_line_error(["predict", str(run), "--data", str(folder / "test.csv"), "--out", str(tmp_path / "p.csv"), "--top-k", "2", *extra],
                    capsys, rf"{re.escape(option)}: --top-k 2 lists each sample's 2 best labels with their probabilities and "
                    r"decides nothing, so it would ignore it; drop one of them$")  # fmt: skip
    assert not (tmp_path / "p.csv").exists()


# --- item 16: LIBSVM headers ------------------------------------------------------------------------------------------


def test_libsvm_headers_larger_than_the_model_or_after_comments(linear, tmp_path, capsys):
    folder, run = linear
    body = "\n".join(_bag_of_words(10, seed=5)) + "\n"
    (tmp_path / "plain.txt").write_text(body)
    (tmp_path / "big.txt").write_text("10 12 7\n" + body)  # F and L beyond the model's, no index beyond them
    (tmp_path / "comment.txt").write_text("# made by hand\n\n10 8 3\n" + body)
    expected = _run(["evaluate", str(run), "--data", str(tmp_path / "plain.txt")], capsys)
    assert expected[0] == 0
    for name in ("big.txt", "comment.txt"):
        code, out, err = _run(["evaluate", str(run), "--data", str(tmp_path / name)], capsys)
        assert code == 0 and out.splitlines()[1:] == expected[1].splitlines()[1:], err
    (tmp_path / "wide.txt").write_text("2 12 7\n0 0:1 11:1\n1 9:2\n")
    _one_line_error(["evaluate", str(run), "--data", str(tmp_path / "wide.txt")], capsys,
                    r"wide\.txt: feature index 11: the model has 8 features \(0 to 7\)$")  # fmt: skip
    (tmp_path / "labels.txt").write_text("2 8 7\n0,5 0:1\n1 1:2\n")
    _one_line_error(["evaluate", str(run), "--data", str(tmp_path / "labels.txt")], capsys,
                    r"labels\.txt: label 5: the model has 3 labels \(0 to 2\)$")  # fmt: skip
    assert len(_predict(run, tmp_path / "labels.txt", capsys).splitlines()) == 3  # predict reads no labels


# --- item 18: --labels spelt in another Unicode normalisation -----------------------------------------------------------


def test_labels_option_spelt_in_another_normalisation_is_named_as_such():
    import argparse
    from types import SimpleNamespace

    from softmargin.app import runs as R

    model = SimpleNamespace(label_names=["caf\u00e9", "b"])
    args = argparse.Namespace(labels=["cafe\u0301", "b"], xml=None)
    with pytest.raises(ValueError, match=r"--labels .*: \['.+'\] not among the model's 2 labels .*\('.+' and the model's '.+' differ "
                       r"only in Unicode normalisation: NFD 'cafe\\u0301' against NFC 'caf\\xe9'"):  # fmt: skip
        R._given_labels(args, model, needed=False)
    R._given_labels(argparse.Namespace(labels=["b"], xml=None), model, needed=False)  # predict: some labels are fine
    with pytest.raises(ValueError, match=r"the model's label\(s\) \['café'\] are not named: evaluate needs all 2"):
        R._given_labels(argparse.Namespace(labels=["b"], xml=None), model, needed=True)


def test_train_refuses_data_without_features_and_an_ignored_test_fraction(tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("ya,yb\n1,0\n0,1\n1,1\n0,0\n")
    _one_line_error(["train", "--data", str(tmp_path / "labels.csv"), "--labels", "ya,yb", "--quiet",
                     "--out", str(tmp_path / "runs")], capsys, r"no feature columns")  # fmt: skip
    data = _csv(tmp_path / "d.csv", FEATURES + LABELS, _cells(_table(40)))
    _one_line_error(["train", "--data", str(data), "--test", str(data), "--labels", "ya,yb,yc", "--test-fraction", "0.5",
                     "--quiet", "--out", str(tmp_path / "runs")], capsys, r"--test-fraction 0\.5 with --test .*drop one")  # fmt: skip
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder, complete or not
