"""Data loaders: built-in yeast against MULAN's own files, each format, and errors that name file and line."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from softmargin.app import data as D

MULAN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mulan"
needs_mulan = pytest.mark.skipif(not MULAN.exists(), reason="../shared/data/mulan is not on this machine")


def test_builtin_yeast_has_the_published_statistics():
    train, test = D.load_builtin("yeast")
    assert (len(train), len(test)) == (1500, 917)
    Y = np.vstack([train.Y, test.Y])
    assert Y.shape == (2417, 14) and train.X.shape[1] == 103
    assert abs(Y.sum(1).mean() - 4.237) < 1e-3  # label cardinality
    assert abs(Y.mean() - 0.303) < 1e-3  # label density


@needs_mulan
def test_rivers_yeast_is_mulans_split_test_rows_first():
    train, test = D.load_builtin("yeast")
    mulan_train = D.load_arff(MULAN / "yeast" / "yeast-train.arff")
    mulan_test = D.load_arff(MULAN / "yeast" / "yeast-test.arff")
    assert mulan_train.label_names == train.label_names
    np.testing.assert_array_equal(train.X, mulan_train.X)
    np.testing.assert_array_equal(train.Y, mulan_train.Y)
    np.testing.assert_array_equal(test.X, mulan_test.X)
    np.testing.assert_array_equal(test.Y, mulan_test.Y)


@needs_mulan
@pytest.mark.parametrize("name,n,features,labels", [("medical", 333, 1449, 45), ("enron", 1123, 1001, 53), ("scene", 1211, 294, 6)])
def test_mulan_arff_sparse_and_dense(name, n, features, labels):
    d = D.load_arff(MULAN / name / f"{name}-train.arff")
    assert (len(d), d.X.shape[1], d.Y.shape[1]) == (n, features, labels)
    assert d.sparse == (name != "scene")


ARFF = """@relation toy
@attribute f1 numeric
@attribute 'f 2' numeric
@attribute a {0,1}
@attribute b {0,1}
@data
1.5,2,1,0
-1,0.25,0,1
"""
SPARSE_ARFF = """@relation toy
@attribute f1 numeric
@attribute f2 numeric
@attribute a {0,1}
@attribute b {0,1}
@data
{0 1.5,2 1}
{1 0.25,3 1}
{}
"""


def test_arff_dense_and_sparse_agree(tmp_path):
    (tmp_path / "d.arff").write_text(ARFF)
    (tmp_path / "s.arff").write_text(SPARSE_ARFF)
    dense = D.load_arff(tmp_path / "d.arff", labels=["a", "b"])
    assert dense.feature_names == ["f1", "f 2"]
    np.testing.assert_array_equal(dense.X, [[1.5, 2], [-1, 0.25]])
    np.testing.assert_array_equal(dense.Y, [[1, 0], [0, 1]])
    sparse = D.load_arff(tmp_path / "s.arff", labels=["b", "a"])
    assert sparse.sparse and sparse.label_names == ["a", "b"]  # the file's order
    np.testing.assert_array_equal(sparse.X.toarray(), [[1.5, 0], [0, 0.25], [0, 0]])
    np.testing.assert_array_equal(sparse.Y, [[1, 0], [0, 1], [0, 0]])


def test_many_sparse_arff_labels_stay_sparse_and_are_checked(tmp_path, monkeypatch):
    """A sparse ARFF file's labels were made dense (float64 first) whatever their number: 20,000 labels of 10,000
    rows took 2 GB from a 1.6 MB file. From SPARSE_LABELS_FROM cells on they stay CSR, as LIBSVM labels do, with the
    same values and the same 0/1 check naming the line and the label."""
    (tmp_path / "s.arff").write_text(SPARSE_ARFF)
    dense = D.load_arff(tmp_path / "s.arff", labels=["a", "b"])
    monkeypatch.setattr(D, "SPARSE_LABELS_FROM", 6)  # 3 rows x 2 labels
    sparse = D.load_arff(tmp_path / "s.arff", labels=["a", "b"])
    assert sparse.sparse_labels and not dense.sparse_labels and sparse.Y.dtype == np.uint8
    np.testing.assert_array_equal(sparse.Y.toarray(), dense.Y)
    (tmp_path / "zero.arff").write_text(SPARSE_ARFF.replace("{}", "{3 0}"))  # a 0 written out is stored: not a label
    zero = D.load_arff(tmp_path / "zero.arff", labels=["a", "b"])
    assert zero.Y.nnz == 2 and zero.label_counts().tolist() == [1, 1]
    (tmp_path / "bad.arff").write_text(SPARSE_ARFF.replace("{1 0.25,3 1}", "{1 0.25,3 2}"))
    with pytest.raises(D.DataError, match=r"bad\.arff:8: label 'b' is 2\.0: expected 0 or 1"):
        D.load_arff(tmp_path / "bad.arff", labels=["a", "b"])
    (tmp_path / "missing.arff").write_text(SPARSE_ARFF.replace("{1 0.25,3 1}", "{1 0.25,3 ?}"))
    for threshold in (6, 1 << 26):  # sparse labels and dense ones: a '?' label cell is named missing, not "nan"
        monkeypatch.setattr(D, "SPARSE_LABELS_FROM", threshold)
        with pytest.raises(D.DataError, match=r"missing\.arff:8: label 'b' is missing \('\?', empty or NaN; 1 such"):
            D.load_arff(tmp_path / "missing.arff", labels=["a", "b"])
    monkeypatch.setattr(D, "SPARSE_LABELS_FROM", 1 << 26)
    with pytest.raises(D.DataError, match=r"bad\.arff:8: label 'b' is 2\.0: expected 0 or 1"):
        D.load_arff(tmp_path / "bad.arff", labels=["a", "b"])


def test_arff_labels_from_sibling_xml(tmp_path):
    (tmp_path / "toy-train.arff").write_text(ARFF)
    (tmp_path / "toy.xml").write_text('<labels xmlns="http://mulan.sourceforge.net/labels"><label name="a"></label><label name="b"></label></labels>')
    assert D.load_arff(tmp_path / "toy-train.arff").label_names == ["a", "b"]


@pytest.mark.parametrize(
    "body,message",
    [
        ("1.5,2,1\n", r"d\.arff:7: expected 4 comma-separated numbers"),
        ("1.5,x,1,0\n", r"d\.arff:7: expected 4 comma-separated numbers"),
        ("1,2,1,0\n{0 1}\n", r"d\.arff:8: a sparse row in a dense file"),
        ("1,2,1,3\n", r"d\.arff:7: label 'b' is 3\.0: expected 0 or 1"),
    ],
)
def test_malformed_arff_names_file_and_line(tmp_path, body, message):
    (tmp_path / "d.arff").write_text(ARFF.split("@data\n")[0] + "@data\n" + body)
    with pytest.raises(D.DataError, match=message):
        D.load_arff(tmp_path / "d.arff", labels=["a", "b"])


def test_arff_without_label_names_is_a_clear_error(tmp_path):
    (tmp_path / "lonely.arff").write_text(ARFF)
    with pytest.raises(D.DataError, match=r"which attributes are labels\? Pass --labels"):
        D.load_arff(tmp_path / "lonely.arff")


@pytest.mark.parametrize("header", [True, False])
def test_libsvm_multilabel_with_and_without_header(tmp_path, header):
    text = ("3 5 4\n" if header else "") + "0,2 0:1.5 3:2\n3 1:1\n 4:0.5\n"
    (tmp_path / "x.txt").write_text(text)
    d = D.load_libsvm(tmp_path / "x.txt")
    assert d.sparse
    np.testing.assert_array_equal(d.X.toarray()[:, :5], [[1.5, 0, 0, 2, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0.5]])
    assert d.X.shape[1] == 5 and d.Y.shape[1] == 4
    np.testing.assert_array_equal(d.Y, [[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])


def test_malformed_libsvm_names_line(tmp_path):
    (tmp_path / "x.txt").write_text("0 0:1\n1,a 2:3\n")
    with pytest.raises(D.DataError, match=r"x\.txt:2: expected 'l1,l2,\.\.\. idx:val"):
        D.load_libsvm(tmp_path / "x.txt")


def test_csv_with_named_label_columns(tmp_path):
    (tmp_path / "t.csv").write_text("f1,y1,f2,y2\n1,0,2,1\n3,1,4,1\n")
    d = D.load_csv(tmp_path / "t.csv", ["y1", "y2"])
    np.testing.assert_array_equal(d.X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(d.Y, [[0, 1], [1, 1]])
    (tmp_path / "bad.csv").write_text("f1,y1\n1,0\n2\n")
    with pytest.raises(D.DataError, match=r"bad\.csv:3: expected 2 fields"):
        D.load_csv(tmp_path / "bad.csv", ["y1"])
    with pytest.raises(D.DataError, match=r"t\.csv: label column\(s\) \['z'\] not in the file's columns"):
        D.load_csv(tmp_path / "t.csv", ["z"])


def test_unknown_data_spec():
    with pytest.raises(FileNotFoundError, match="not a built-in data set"):
        D.load_train_test("nope.arff")


# --- bad input: every defect a one-line DataError naming the file and line (issue 13) -------------------------------


@pytest.mark.parametrize(
    "body,message",
    [
        ("1.5,nan,1,0\n", r"d\.arff:7: feature 'f 2' is nan: expected a finite number"),
        ("1,2,1,0\ninf,2,1,0\n", r"d\.arff:8: feature 'f1' is inf"),
        ("1,?,1,0\n", r"d\.arff:7: feature 'f 2' is nan"),
        ("1,2,?,0\n", r"d\.arff:7: label 'a' is missing \('\?', empty or NaN; 1 such label cell\(s\) in the file\): expected 0 or 1"),
    ],
)
def test_non_finite_arff_features_are_rejected_with_file_and_line(tmp_path, body, message):
    (tmp_path / "d.arff").write_text(ARFF.split("@data\n")[0] + "@data\n" + body)
    with pytest.raises(D.DataError, match=message):
        D.load_arff(tmp_path / "d.arff", labels=["a", "b"])


def test_non_finite_sparse_arff_csv_and_libsvm_values_are_rejected(tmp_path):
    (tmp_path / "s.arff").write_text(SPARSE_ARFF.replace("{1 0.25,3 1}", "{1 -inf,3 1}"))
    with pytest.raises(D.DataError, match=r"s\.arff:8: feature 'f2' is -inf"):
        D.load_arff(tmp_path / "s.arff", labels=["a", "b"])
    (tmp_path / "t.csv").write_text("f1,f2,y1,y2\n1,2,0,1\n3,NaN,1,1\n")
    with pytest.raises(D.DataError, match=r"t\.csv:3: feature 'f2' is nan"):
        D.load_csv(tmp_path / "t.csv", ["y1", "y2"])
    (tmp_path / "x.txt").write_text("0 0:1\n1 2:inf\n")
    with pytest.raises(D.DataError, match=r"x\.txt:2: feature 2 is inf"):
        D.load_libsvm(tmp_path / "x.txt")


@pytest.mark.parametrize(
    "text,message",
    [
        ("0 0:1\n-1 1:1\n", r"x\.txt:2: label -1: expected 0 <= index"),
        ("0 0:1\n1 -3:1\n", r"x\.txt:2: feature index -3: expected 0 <= index"),
        ("3 5 2\n0 0:1\n1 1:1\n", r"x\.txt:1: the header says 3 samples, the file holds 2"),
        ("2 5 2\n0 0:1\n1 7:1\n", r"x\.txt:3: feature index 7: expected 0 <= index < 5 as the header"),
        ("2 5 2\n0 0:1\n2 1:1\n", r"x\.txt:3: label 2: expected 0 <= index < 2 as the header"),
        ("0 0:1\n1 999999999:1\n", r"x\.txt:2: feature index 999999999: .*'N F L' header line"),
        ("1 0:1\n0 0:1 0:2\n", r"x\.txt:2: feature index 0 is given twice: expected each index once"),
        ("1 3:1 0:1 3:1\n", r"x\.txt:1: feature index 3 is given twice"),
        ("1 0:1\n0,0 1:1\n", r"x\.txt:2: label 0 is listed twice: expected each label once"),
        ("2,1,2 0:1\n", r"x\.txt:1: label 2 is listed twice"),
    ],
)
def test_libsvm_indices_outside_their_range_or_given_twice_are_errors(tmp_path, text, message):
    (tmp_path / "x.txt").write_text(text)
    with pytest.raises(D.DataError, match=message):
        D.load_libsvm(tmp_path / "x.txt")


def test_duplicate_names_are_errors(tmp_path):
    (tmp_path / "d.arff").write_text(ARFF)
    with pytest.raises(D.DataError, match=r"--labels names 'a' twice"):
        D.load_arff(tmp_path / "d.arff", labels=["a", "a", "b"])
    (tmp_path / "t.csv").write_text("f1,f1,y1\n1,2,0\n")
    with pytest.raises(D.DataError, match=r"t\.csv:1: the header names 'f1' twice"):
        D.load_csv(tmp_path / "t.csv", ["y1"])
    (tmp_path / "twice.arff").write_text(ARFF.replace("@attribute 'f 2' numeric", "@attribute f1 numeric"))
    with pytest.raises(D.DataError, match=r"twice\.arff:3: attribute 'f1' is declared twice"):
        D.load_arff(tmp_path / "twice.arff", labels=["a", "b"])


def test_a_folder_as_data_is_an_error(tmp_path):
    with pytest.raises(D.DataError, match=r"is a folder: expected a data file"):
        D.load(str(tmp_path))


def test_test_file_columns_are_matched_by_name(tmp_path):
    (tmp_path / "train.csv").write_text("f1,f2,y1,y2\n1,2,0,1\n3,4,1,1\n")
    (tmp_path / "test.csv").write_text("y2,f2,y1,f1\n1,20,0,10\n0,40,1,30\n")  # same columns, another order
    train, test = D.load_train_test(str(tmp_path / "train.csv"), str(tmp_path / "test.csv"), ["y1", "y2"])
    assert test.feature_names == ["f1", "f2"] and test.label_names == ["y1", "y2"]
    np.testing.assert_array_equal(test.X, [[10, 20], [30, 40]])
    np.testing.assert_array_equal(test.Y, [[0, 1], [1, 0]])
    (tmp_path / "other.csv").write_text("f1,f3,y1,y2\n1,2,0,1\n")
    with pytest.raises(D.DataError, match=r"missing feature\(s\) \['f2'\]; extra feature\(s\) \['f3'\]"):
        D.load_train_test(str(tmp_path / "train.csv"), str(tmp_path / "other.csv"), ["y1", "y2"])


def test_libsvm_files_match_by_index_and_may_omit_the_last_columns(tmp_path):
    (tmp_path / "x.txt").write_text("0 1:1\n1 0:2\n")  # never mentions feature 2 nor label 2
    d = D.align(D.load_libsvm(tmp_path / "x.txt"), ["0", "1", "2"], ["0", "1", "2"], positional=True)
    np.testing.assert_array_equal(d.X.toarray(), [[0, 1, 0], [2, 0, 0]])
    np.testing.assert_array_equal(np.asarray(d.Y), [[1, 0, 0], [0, 1, 0]])
    with pytest.raises(D.DataError, match=r"feature index 1: the model has 1 features"):
        D.align(D.load_libsvm(tmp_path / "x.txt"), ["0"], ["0", "1"], positional=True)


def test_unlabeled_arff_and_csv_read_with_a_models_feature_names(tmp_path):
    (tmp_path / "u.arff").write_text("@relation u\n@attribute 'f 2' numeric\n@attribute f1 numeric\n@data\n2,1.5\n0.25,-1\n")
    d = D.load(str(tmp_path / "u.arff"), ["a", "b"], features=["f1", "f 2"])
    assert d.Y is None
    np.testing.assert_array_equal(d.X, [[1.5, 2], [-1, 0.25]])
    (tmp_path / "u.csv").write_text("f2,f1\n2,1\n")
    d = D.load(str(tmp_path / "u.csv"), ["y1"], features=["f1", "f2"])
    assert d.Y is None and d.X.tolist() == [[1, 2]]
    (tmp_path / "id.csv").write_text("id,f2,f1\n7,2,1\n")  # a column the model does not know would be ignored
    with pytest.raises(D.DataError, match=r"id\.csv: extra column\(s\) \['id'\]: neither one of the model's 2 features"):
        D.load(str(tmp_path / "id.csv"), ["y1"], features=["f1", "f2"])


def test_many_libsvm_labels_stay_sparse(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "SPARSE_LABELS_FROM", 1000)
    (tmp_path / "x.txt").write_text("2 3 100000\n5,99999 0:1\n7 2:1\n")
    d = D.load_libsvm(tmp_path / "x.txt")
    assert d.sparse_labels and d.Y.shape == (2, 100_000) and d.Y.nnz == 3
    assert d.label_counts()[99_999] == 1 and d.label_counts().sum() == 3


# --- values float32 cannot hold, byte-order marks, other encodings, indices given twice -----------------------------

WIDE_ARFF = "@relation t\n@attribute f0 numeric\n@attribute f1 numeric\n@attribute f2 numeric\n@attribute f3 numeric\n@data\n"


def test_values_beyond_float32_are_rejected_in_every_format(tmp_path):
    beyond = r"is 1e\+39, beyond float32's range: expected a magnitude of at most 3\.4028235e\+38"
    (tmp_path / "d.arff").write_text(WIDE_ARFF + "0.5,0,0,0\n1e39,0,0,0\n")
    with pytest.raises(D.DataError, match=rf"d\.arff:8: feature 'f0' {beyond}"):
        D.load_arff(tmp_path / "d.arff", labels=["f3"])
    (tmp_path / "s.arff").write_text(WIDE_ARFF + "{0 0.5}\n{1 -1e39,3 1}\n")
    with pytest.raises(D.DataError, match=r"s\.arff:8: feature 'f1' is -1e\+39, beyond float32's range"):
        D.load_arff(tmp_path / "s.arff", labels=["f3"])
    (tmp_path / "t.csv").write_text("f0,y\n0.5,0\n1e39,1\n")
    with pytest.raises(D.DataError, match=rf"t\.csv:3: feature 'f0' {beyond}"):
        D.load_csv(tmp_path / "t.csv", ["y"])
    (tmp_path / "x.txt").write_text("0 0:1\n1 2:1e300\n")
    with pytest.raises(D.DataError, match=r"x\.txt:2: feature 2 is 1e\+300, beyond float32's range"):
        D.load_libsvm(tmp_path / "x.txt")
    (tmp_path / "edge.txt").write_text("0 0:3.4028236e38\n")  # just past the value float32 rounds to its max
    with pytest.raises(D.DataError, match=r"edge\.txt:1: feature 0 is 3\.4028236e\+38, beyond float32's range"):
        D.load_libsvm(tmp_path / "edge.txt")


def test_tiny_values_and_float32s_own_max_still_load(tmp_path):
    top = float(np.finfo(np.float32).max)
    (tmp_path / "d.arff").write_text(WIDE_ARFF + "1e-40,1e-50,3.4028235e+38,0\n-3.4028235e38,0,0,1\n")
    (tmp_path / "t.csv").write_text("f0,f1,f2,y\n1e-40,1e-50,3.4028235e+38,0\n-3.4028235e38,0,0,1\n")
    (tmp_path / "x.txt").write_text("0 0:1e-40 1:1e-50 2:3.4028235e+38\n1 0:-3.4028235e38\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow in the cast either
        loaded = [D.load_arff(tmp_path / "d.arff", labels=["f3"]), D.load_csv(tmp_path / "t.csv", ["y"]),
                  D.load_libsvm(tmp_path / "x.txt")]  # fmt: skip
    for d in loaded:
        X = d.X.toarray() if d.sparse else d.X
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # dense features are read in float64 and cast for training: no overflow there
            as_trained = X.astype(np.float32)
        np.testing.assert_array_equal(as_trained[:, :3], np.array([[1e-40, 0, top], [-top, 0, 0]], np.float32))
        assert np.isfinite(as_trained).all()


def test_a_utf8_byte_order_mark_is_skipped(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbff1,y1\r\n1.5,1\r\n")  # Excel's "CSV UTF-8"
    d = D.load_csv(tmp_path / "t.csv", ["y1"])
    assert d.feature_names == ["f1"] and d.X.tolist() == [[1.5]]
    without_relation = ARFF.split("\n", 1)[1]  # the BOM right before '@attribute'
    for name, text in (("d.arff", ARFF), ("a.arff", without_relation), ("s.arff", SPARSE_ARFF)):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        d = D.load_arff(tmp_path / name, labels=["a", "b"])
        assert d.feature_names[0] == "f1" and d.label_names == ["a", "b"]
    (tmp_path / "x.txt").write_bytes(b"\xef\xbb\xbf3 5 4\n0,2 0:1.5 3:2\n3 1:1\n 4:0.5\n")  # before the header
    d = D.load_libsvm(tmp_path / "x.txt")
    assert d.X.shape == (3, 5) and d.Y.shape == (3, 4)
    (tmp_path / "y.txt").write_bytes(b"\xef\xbb\xbf0,2 0:1.5\n")  # before the first row
    np.testing.assert_array_equal(D.load_libsvm(tmp_path / "y.txt").Y, [[1, 0, 1]])


@pytest.mark.parametrize(
    "content,message",
    [
        (b"f1,y1\n1,0\ncaf\xe9,1\n", r"l\.csv:3: byte 0xe9 at character 4 is not UTF-8: expected a UTF-8 text file"),
        (b"f1,caf\xe9\n1,0\n", r"l\.csv:1: byte 0xe9 at character 7 is not UTF-8"),
        (b"f1,y1\n" + b"1,0\n" * 5000 + b"\xe9t\xe9,1\n", r"l\.csv:5002: byte 0xe9 at character 1 is not UTF-8"),
        (b"f1,y1\r\n1,0\r\n1,\xff\r\n", r"l\.csv:3: byte 0xff at character 3 is not UTF-8"),
    ],
)
def test_a_csv_that_is_not_utf8_is_a_one_line_error_naming_file_and_line(tmp_path, content, message):
    (tmp_path / "l.csv").write_bytes(content)
    with pytest.raises(D.DataError, match=message) as error:
        D.load_csv(tmp_path / "l.csv", ["y1"])
    assert "\n" not in str(error.value)


def test_libsvm_indices_in_any_order_still_load(tmp_path):
    (tmp_path / "x.txt").write_text("2,0 3:1 0:2\n")
    d = D.load_libsvm(tmp_path / "x.txt")
    np.testing.assert_array_equal(d.X.toarray(), [[2, 0, 0, 1]])
    np.testing.assert_array_equal(d.Y, [[1, 0, 1]])


@pytest.mark.parametrize(
    "row,message",
    [
        ("{0 3,0 4,2 1}", r"s\.arff:7: attribute 'f0' \(index 0\) is given twice in the row: expected each index once"),
        ("{0 1,3 1,3 1}", r"s\.arff:7: attribute 'f3' \(index 3\) is given twice"),  # a label: not 'is 2.0'
    ],
)
def test_sparse_arff_index_given_twice_in_a_row_is_an_error(tmp_path, row, message):
    (tmp_path / "s.arff").write_text(WIDE_ARFF + row + "\n")
    with pytest.raises(D.DataError, match=message):
        D.load_arff(tmp_path / "s.arff", labels=["f3"])


def test_a_file_lacking_some_label_columns_says_which(tmp_path):
    (tmp_path / "u.csv").write_text("f1,l0,f2,l1\n1,0,2,1\n3,1,4,0\n")  # no l2
    d = D.load(str(tmp_path / "u.csv"), ["l0", "l1", "l2"], features=["f1", "f2"])
    assert d.Y is None and d.missing_labels == ["l2"]  # unlabeled (predict needs none); evaluate names l2 only
    assert D.align(d, ["f1", "f2"], ["l0", "l1", "l2"]).missing_labels == ["l2"]
    assert d.subset(np.arange(1)).missing_labels == ["l2"]
    (tmp_path / "u.arff").write_text("@relation u\n@attribute f1 numeric\n@attribute l1 {0,1}\n@data\n1,0\n")
    d = D.load(str(tmp_path / "u.arff"), ["l0", "l1", "l2"], features=["f1"])
    assert d.Y is None and d.missing_labels == ["l0", "l2"]
    full = D.load(str(tmp_path / "u.csv"), ["l0", "l1"], features=["f1", "f2"])
    assert full.Y is not None and full.missing_labels == []


# --- the review of evaluate / predict's readers (numbers, LIBSVM empty lines and headers, extra columns, names) -------


@pytest.mark.parametrize("cell", ["1_0", "\u0661\u0660", "\u00a010", "１０", "1_0e1"])
def test_numbers_other_than_plain_ascii_are_refused_in_every_format(tmp_path, cell):
    """Python's float() reads '1_0' and other scripts' digits ('١٠', fullwidth '１０') as 10: a file that says so is
    refused with the line, never read as 10."""
    (tmp_path / "t.csv").write_text(f"f0,y\n10,0\n{cell},1\n", encoding="utf-8")
    with pytest.raises(D.DataError, match=r"t\.csv:3: column 'f0': expected a number .*plain ASCII"):
        D.load_csv(tmp_path / "t.csv", ["y"])
    (tmp_path / "d.arff").write_text(WIDE_ARFF + f"10,0,0,0\n0,{cell},0,1\n", encoding="utf-8")
    with pytest.raises(D.DataError, match=r"d\.arff:8: expected 4 comma-separated numbers"):
        D.load_arff(tmp_path / "d.arff", labels=["f3"])
    if not cell[0].isspace():  # a no-break space there separates the index from the value
        (tmp_path / "s.arff").write_text(WIDE_ARFF + f"{{0 {cell}}}\n", encoding="utf-8")
        with pytest.raises(D.DataError, match=r"s\.arff:7: expected '\{index value, \.\.\.\}'"):
            D.load_arff(tmp_path / "s.arff", labels=["f3"])
    (tmp_path / "x.txt").write_text(f"0 0:10\n1 0:{cell}\n", encoding="utf-8")
    with pytest.raises(D.DataError, match=r"x\.txt:2: expected 'l1,l2,\.\.\. idx:val .*plain ASCII numbers"):
        D.load_libsvm(tmp_path / "x.txt")


@pytest.mark.parametrize(
    "text, line",
    [("0 0:1\n1 1_0:1\n", 2), ("0 \u0661:1\n", 1), ("\u0661 0:1\n", 1), ("0 0:1\n1,2_0 0:1\n", 2), ("0 +1:1 ２:1\n", 1)],
)
def test_libsvm_indices_and_labels_are_ascii_integers(tmp_path, text, line):
    (tmp_path / "x.txt").write_text(text, encoding="utf-8")
    with pytest.raises(D.DataError, match=rf"x\.txt:{line}: expected 'l1,l2"):
        D.load_libsvm(tmp_path / "x.txt")
    (tmp_path / "s.arff").write_text(WIDE_ARFF + "{\u0661 1}\n", encoding="utf-8")
    with pytest.raises(D.DataError, match=r"s\.arff:7: expected '\{index value"):
        D.load_arff(tmp_path / "s.arff", labels=["f3"])


def test_plain_numbers_still_read_as_before(tmp_path):
    (tmp_path / "t.csv").write_text("f0,f1,f2,f3,y\n 1e1 ,+.5,-2E-3,7.,1\n\t10\t,5e-1,-0.002,7,0\n")
    d = D.load_csv(tmp_path / "t.csv", ["y"])
    np.testing.assert_array_equal(d.X, np.array([[10, 0.5, -0.002, 7]] * 2))
    (tmp_path / "x.txt").write_text("+1 0:1e1 2:.5\n")
    np.testing.assert_array_equal(D.load_libsvm(tmp_path / "x.txt").X.toarray(), [[10, 0, 0.5]])
    (tmp_path / "i.csv").write_text("f0,y\nInfinity,1\n")  # read, then refused as not finite
    with pytest.raises(D.DataError, match=r"i\.csv:2: feature 'f0' is inf: expected a finite number"):
        D.load_csv(tmp_path / "i.csv", ["y"])


def test_libsvm_without_any_label_is_unlabeled(tmp_path):
    """No row with a label: Y is None (unlabeled, like a CSV without its label columns), not an all-zero matrix that
    evaluate would score against. Some rows without labels are ordinary LIBSVM."""
    for text in ("0:1 1:0.5\n2:1\n", " 0:1\n 2:1\n", "2 3 4\n0:1\n2:1\n"):
        (tmp_path / "u.txt").write_text(text)
        d = D.load_libsvm(tmp_path / "u.txt")
        assert d.Y is None and d.label_names == [] and not d.labeled and d.X.shape[0] == 2
        aligned = D.align(d, ["0", "1", "2"], ["0", "1"], positional=True)
        assert aligned.Y is None and aligned.label_names == [] and aligned.X.shape == (2, 3)
    (tmp_path / "some.txt").write_text("0:1\n1 2:1\n")
    np.testing.assert_array_equal(D.load_libsvm(tmp_path / "some.txt").Y, [[0, 0], [0, 1]])


def test_libsvm_empty_lines_are_samples_after_a_header_and_errors_without(tmp_path):
    """Skipping an empty line would shift every later row (predict's row numbers). After an 'N F L' header it is a
    sample with no labels and no features (the extreme-classification repository's readers, N counting it); without a
    header it is an error naming it (LIBSVM's reader refuses it too). Empty lines at the end are dropped."""
    (tmp_path / "gap.txt").write_text("0 0:1.0\n\n1 1:2.0\n2 2:0.5\n")
    with pytest.raises(D.DataError, match=r"gap\.txt:2: an empty line between samples: .*'0:0'"):
        D.load_libsvm(tmp_path / "gap.txt")
    (tmp_path / "lead.txt").write_text("# made by X\n  \n\u00a0\n0 0:1.0\n")  # before the first sample: nothing to shift
    assert len(D.load_libsvm(tmp_path / "lead.txt")) == 1
    (tmp_path / "nbsp.txt").write_text("0 0:1.0\n\u00a0\n1 1:2.0\n")  # only a no-break space: an empty line too
    with pytest.raises(D.DataError, match=r"nbsp\.txt:2: an empty line between samples"):
        D.load_libsvm(tmp_path / "nbsp.txt")
    (tmp_path / "end.txt").write_text("0 0:1.0\n1 1:2.0\n\n \n")
    assert len(D.load_libsvm(tmp_path / "end.txt")) == 2
    (tmp_path / "zero.txt").write_text("0 0:1.0\n0:0\n1 1:2.0\n")  # the way to write an empty sample without a header
    d = D.load_libsvm(tmp_path / "zero.txt")
    assert len(d) == 3 and d.X[1].toarray().tolist() == [[0, 0]] and d.Y[1].tolist() == [0, 0]
    (tmp_path / "xc.txt").write_text("4 3 3\n0 0:1.0\n\n1 1:2.0\n2 2:0.5\n")
    d = D.load_libsvm(tmp_path / "xc.txt")
    np.testing.assert_array_equal(d.X.toarray(), [[1, 0, 0], [0, 0, 0], [0, 2, 0], [0, 0, 0.5]])
    np.testing.assert_array_equal(d.Y, [[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]])
    (tmp_path / "last.txt").write_text("2 3 3\n0 0:1.0\n\n")  # the last sample empty: one empty line is needed, taken
    assert len(D.load_libsvm(tmp_path / "last.txt")) == 2
    (tmp_path / "pad.txt").write_text("1 3 3\n0 0:1.0\n\n\n")  # not needed: end-of-file padding
    assert len(D.load_libsvm(tmp_path / "pad.txt")) == 1
    (tmp_path / "spaced.txt").write_text("2 3 3\n0 0:1.0\n\n1 1:2.0\n")  # N does not count the empty line
    with pytest.raises(D.DataError, match=r"spaced\.txt:1: the header says 2 samples, the file holds 3 \(the 1 empty line\(s\) among them count as samples\)"):
        D.load_libsvm(tmp_path / "spaced.txt")
    (tmp_path / "comments.txt").write_text("# made by hand\n0 0:1.0\n   # a note\n1 1:2.0 # another\n")
    assert len(D.load_libsvm(tmp_path / "comments.txt")) == 2  # comment lines are not samples


def test_libsvm_header_after_comment_lines(tmp_path):
    (tmp_path / "x.txt").write_text("# my data\n\n# made by hand\n3 5 4\n0,2 0:1.5 3:2\n3 1:1\n 4:0.5\n")
    d = D.load_libsvm(tmp_path / "x.txt")
    assert d.X.shape == (3, 5) and d.Y.shape == (3, 4)
    (tmp_path / "n.txt").write_text("# my data\n3 5 4\n0 0:1\n")
    with pytest.raises(D.DataError, match=r"n\.txt:2: the header says 3 samples, the file holds 1$"):
        D.load_libsvm(tmp_path / "n.txt")
    (tmp_path / "late.txt").write_text("0 0:1\n3 5 4\n")  # after a sample: not a header
    with pytest.raises(D.DataError, match=r"late\.txt:2: expected 'l1,l2"):
        D.load_libsvm(tmp_path / "late.txt")


def test_libsvm_align_names_the_largest_index_in_the_file_not_the_headers(tmp_path):
    (tmp_path / "big.txt").write_text("2 9 7\n0 0:1 4:1\n1,2 3:1\n")  # F and L beyond a 5-feature, 3-label model's
    d = D.align(D.load_libsvm(tmp_path / "big.txt"), [str(i) for i in range(5)], ["0", "1", "2"], positional=True)
    assert d.X.shape == (2, 5) and d.Y.shape == (2, 3)
    np.testing.assert_array_equal(d.X.toarray(), [[1, 0, 0, 0, 1], [0, 0, 0, 1, 0]])
    np.testing.assert_array_equal(d.Y, [[1, 0, 0], [0, 1, 1]])
    (tmp_path / "f.txt").write_text("2 9 7\n0 0:1 7:1\n1 8:0\n")  # an explicit zero still mentions feature 8
    with pytest.raises(D.DataError, match=r"f\.txt: feature index 8: the model has 5 features \(0 to 4\)"):
        D.align(D.load_libsvm(tmp_path / "f.txt"), [str(i) for i in range(5)], ["0", "1", "2"], positional=True)
    (tmp_path / "l.txt").write_text("2 9 7\n0,5 0:1\n1 1:1\n")
    with pytest.raises(D.DataError, match=r"l\.txt: label 5: the model has 3 labels \(0 to 2\)"):
        D.align(D.load_libsvm(tmp_path / "l.txt"), [str(i) for i in range(5)], ["0", "1", "2"], positional=True)


def test_a_models_columns_only_extra_ones_are_errors(tmp_path):
    """Read with a model's feature and label names, a column that is neither is an error (it would be ignored), as
    --test's extra column is; label columns may be there or not."""
    (tmp_path / "x.csv").write_text("f1,y1,f2,f5\n1,0,2,9\n")
    with pytest.raises(D.DataError, match=r"x\.csv: extra column\(s\) \['f5'\]: neither one of the model's 2 features nor one of its 2 labels"):
        D.load(str(tmp_path / "x.csv"), ["y1", "y2"], features=["f1", "f2"])
    (tmp_path / "both.csv").write_text("f1,f3,y1\n1,2,0\n")  # f2 missing and f3 extra: both said
    with pytest.raises(D.DataError, match=r"feature column\(s\) \['f2'\] not in the file's columns \['f1', 'f3', 'y1'\]; extra column\(s\) \['f3'\]"):
        D.load(str(tmp_path / "both.csv"), ["y1"], features=["f1", "f2"])
    (tmp_path / "x.arff").write_text("@relation x\n@attribute f1 numeric\n@attribute zz numeric\n@attribute y1 {0,1}\n@data\n1,2,0\n")
    with pytest.raises(D.DataError, match=r"x\.arff: extra column\(s\) \['zz'\]"):
        D.load(str(tmp_path / "x.arff"), ["y1"], features=["f1"])
    (tmp_path / "s.arff").write_text("@relation x\n@attribute f1 numeric\n@attribute zz numeric\n@data\n{0 1}\n")
    with pytest.raises(D.DataError, match=r"s\.arff: extra column\(s\) \['zz'\]"):
        D.load(str(tmp_path / "s.arff"), ["y1"], features=["f1"])
    (tmp_path / "ok.csv").write_text("y2,f2,f1\n1,2,1\n")  # some label columns: fine (unlabeled)
    d = D.load(str(tmp_path / "ok.csv"), ["y1", "y2"], features=["f1", "f2"])
    assert d.Y is None and d.missing_labels == ["y1"] and d.X.tolist() == [[1, 2]]


def test_label_cells_are_not_read_when_labels_are_not_needed(tmp_path):
    """predict reads no labels: empty, '?' or other cells in label columns are skipped, the columns still known."""
    (tmp_path / "e.csv").write_text("f1,y1,f2,y2\n1,,2,yes\n3,?,4,\n")
    with pytest.raises(D.DataError, match=r"e\.csv:2: column '[^']+': expected a label, 0 or 1"):
        D.load(str(tmp_path / "e.csv"), ["y1", "y2"], features=["f1", "f2"])  # evaluate reads them
    d = D.load(str(tmp_path / "e.csv"), ["y1", "y2"], features=["f1", "f2"], read_labels=False)
    assert d.Y is None and d.label_names == [] and d.X.tolist() == [[1, 2], [3, 4]]
    arff = "@relation x\n@attribute f1 numeric\n@attribute y1 {0,1}\n@attribute f2 numeric\n@data\n"
    (tmp_path / "d.arff").write_text(arff + "1,?,2\n3,x,4\n")
    d = D.load(str(tmp_path / "d.arff"), ["y1"], features=["f1", "f2"], read_labels=False)
    assert d.Y is None and d.X.tolist() == [[1, 2], [3, 4]]
    (tmp_path / "s.arff").write_text(arff + "{0 1,1 ?,2 2}\n{1 nope}\n")
    d = D.load(str(tmp_path / "s.arff"), ["y1"], features=["f1", "f2"], read_labels=False)
    assert d.Y is None and d.X.toarray().tolist() == [[1, 2], [0, 0]]
    (tmp_path / "f.csv").write_text("f1,y1,f2\n1,,x\n")  # feature cells are still read
    with pytest.raises(D.DataError, match=r"f\.csv:2: column 'f2': expected a number"):
        D.load(str(tmp_path / "f.csv"), ["y1"], features=["f1", "f2"], read_labels=False)


NFC, NFD = "caf\u00e9", "cafe\u0301"


def test_names_that_differ_only_in_unicode_normalisation_are_named_as_such(tmp_path):
    """Names match exactly; 'café' (NFC) and 'café' (NFD) print the same, so the error says what differs."""
    (tmp_path / "d.csv").write_text(f"{NFD},f2,y1\n1,2,0\n", encoding="utf-8")
    with pytest.raises(D.DataError, match=r"feature column\(s\) \['café'\] not in the file's columns .*differ only in Unicode "
                       r"normalisation: NFC 'caf\\xe9' against NFD 'cafe\\u0301'"):  # fmt: skip
        D.load(str(tmp_path / "d.csv"), ["y1"], features=[NFC, "f2"])
    (tmp_path / "train.csv").write_text(f"{NFC},f2,y1,y2\n1,2,0,1\n", encoding="utf-8")
    (tmp_path / "test.csv").write_text(f"{NFD},f2,y1,y2\n1,2,0,1\n", encoding="utf-8")
    with pytest.raises(D.DataError, match=r"missing feature\(s\) \['.*'\]; extra feature\(s\) \['.*'\] \(.*differ only in Unicode normalisation"):
        D.load_train_test(str(tmp_path / "train.csv"), str(tmp_path / "test.csv"), ["y1", "y2"])
    (tmp_path / "twice.csv").write_text(f"{NFC},{NFD},y1\n1,2,0\n", encoding="utf-8")
    with pytest.raises(D.DataError, match=r"twice\.csv:1: the header names '.+' and '.+', which differ only in Unicode normalisation"):
        D.load_csv(tmp_path / "twice.csv", ["y1"])
    (tmp_path / "twice.arff").write_text(f"@relation t\n@attribute {NFC} numeric\n@attribute {NFD} numeric\n@data\n1,0\n", encoding="utf-8")
    with pytest.raises(D.DataError, match=r"twice\.arff:3: attribute '.+' is declared twice: .* differ only in Unicode normalisation"):
        D.load_arff(tmp_path / "twice.arff", labels=[NFD])
    with pytest.raises(D.DataError, match=r"--labels names '.+' and '.+', which differ only"):
        D.load_csv(tmp_path / "train.csv", [NFC, NFD])
    (tmp_path / "same.csv").write_text(f"f2,{NFC},y1\n2,1,0\n", encoding="utf-8")  # the same spelling: matched
    assert D.load(str(tmp_path / "same.csv"), ["y1"], features=[NFC, "f2"]).X.tolist() == [[1, 2]]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"@relation t\n@attribute caf\xe9 numeric\n@attribute y {0,1}\n@data\n1,0\n", r"l\.arff:2: byte 0xe9 at character 15 is not UTF-8"),
        (b"@relation t\n@attribute f numeric\n@attribute y {0,1}\n@data\n% \xff\n1,0\n", r"l\.arff:5: byte 0xff at character 3 is not UTF-8"),
    ],
)
def test_an_arff_that_is_not_utf8_is_refused_not_read_with_replacement_characters(tmp_path, content, message):
    (tmp_path / "l.arff").write_bytes(content)
    with pytest.raises(D.DataError, match=message + r": expected a UTF-8 text file \(convert it, e\.g\. iconv") as error:
        D.load_arff(tmp_path / "l.arff", labels=["y"])
    assert "\n" not in str(error.value)


def test_arff_labels_and_xml_together_are_refused(tmp_path):
    (tmp_path / "d.arff").write_text(ARFF)
    (tmp_path / "d.xml").write_text('<labels><label name="a"/><label name="b"/></labels>')
    with pytest.raises(D.DataError, match=r"--labels and --xml .*d\.xml both name .*d\.arff's labels: give one of them"):
        D.load_arff(tmp_path / "d.arff", labels=["a", "b"], xml=tmp_path / "d.xml")
    assert D.load_arff(tmp_path / "d.arff", xml=tmp_path / "d.xml").label_names == ["a", "b"]


def test_a_label_column_spelt_in_another_normalisation_is_named_as_such(tmp_path):
    (tmp_path / "l.csv").write_text(f"f1,{NFD}\n1,0\n", encoding="utf-8")
    with pytest.raises(D.DataError, match=r"l\.csv: extra column\(s\) \['.+'\]: .* \('.+' and the model's '.+' differ only in "
                       r"Unicode normalisation: NFD 'cafe\\u0301' against NFC 'caf\\xe9'"):  # fmt: skip
        D.load(str(tmp_path / "l.csv"), [NFC], features=["f1"])


def test_an_unclosed_csv_quote_is_named_where_it_opens(tmp_path):
    (tmp_path / "q.csv").write_text('a,b,y\n1,2,0\n"3,4,1\n5,6,0\n7,8,1\n')
    with pytest.raises(D.DataError, match=r"q\.csv:3: expected 3 fields .*it runs from line 3: a quote opened there is never closed"):
        D.load_csv(tmp_path / "q.csv", ["y"])
    (tmp_path / "big.csv").write_text('a,b,y\n1,2,0\n"3,4,1\n' + "5,6,0\n" * 30000)  # past csv's field size limit
    with pytest.raises(D.DataError, match=r"big\.csv:3: this row cannot be read as CSV \(field larger than field limit"):
        D.load_csv(tmp_path / "big.csv", ["y"])


def test_a_csv_error_names_the_column(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,y\n1,2,0\n3,4,true\n")
    with pytest.raises(D.DataError, match=r"t\.csv:3: column 'y': expected a label, 0 or 1"):
        D.load_csv(tmp_path / "t.csv", ["y"])
    (tmp_path / "u.csv").write_text("a,b,y\n1,x,0\n")
    with pytest.raises(D.DataError, match=r"u\.csv:2: column 'b': expected a number"):
        D.load_csv(tmp_path / "u.csv", ["y"])


def test_an_arff_header_line_it_does_not_know_is_refused(tmp_path):
    # '@atribute b' skipped would shift every later attribute: in a sparse file b's values would land on c, silently
    head = "@relation t\n@attribute a numeric\n@atribute b numeric\n@attribute c numeric\n@attribute y {0,1}\n@data\n"
    (tmp_path / "typo.arff").write_text(head + "{0 1,1 5,3 1}\n")
    with pytest.raises(D.DataError, match=r"typo\.arff:3: expected '@relation', '@attribute', '@data' or a '%' comment"):
        D.load_arff(tmp_path / "typo.arff", labels=["y"])
    (tmp_path / "nodata.arff").write_text("@relation t\n@attribute a numeric\n@attribute y {0,1}\n")
    with pytest.raises(D.DataError, match=r"nodata\.arff: no '@data' line after the 2 attributes"):
        D.load_arff(tmp_path / "nodata.arff", labels=["y"])


def test_arff_nominal_attributes_other_than_0_1_are_refused(tmp_path):
    base = "@relation t\n@attribute a numeric\n"
    (tmp_path / "nominal.arff").write_text(base + "@attribute color {red,green}\n@attribute y {0,1}\n@data\n{0 1}\n")
    with pytest.raises(D.DataError, match=r"nominal\.arff:3: attribute type '\{red,green\}' is not numeric or \{0,1\}"):
        D.load_arff(tmp_path / "nominal.arff", labels=["y"])
    # ARFF: a value left out of a sparse row is the first declared one, 1 for {1,0}: refused rather than read as 0
    (tmp_path / "reversed.arff").write_text(base + "@attribute y {1,0}\n@data\n{0 1}\n")
    with pytest.raises(D.DataError, match=r"reversed\.arff:3: attribute 'y' is declared \{1,0\}: in a sparse file"):
        D.load_arff(tmp_path / "reversed.arff", labels=["y"])
    (tmp_path / "dense.arff").write_text(base + "@attribute y {1,0}\n@data\n1,0\n2,1\n")  # dense: every value written
    assert D.load_arff(tmp_path / "dense.arff", labels=["y"]).Y.tolist() == [[0], [1]]
    (tmp_path / "quoted.arff").write_text(base + "@attribute y {'0','1'}\n@data\n{0 1,1 1}\n")
    assert np.asarray(D.load_arff(tmp_path / "quoted.arff", labels=["y"]).Y).tolist() == [[1]]


@pytest.mark.parametrize("sparse", [False, True])
def test_arff_values_written_in_quotes_are_read(tmp_path, sparse):
    """Weka writes a nominal {0,1} attribute's values quoted ('1'); they were refused as not numbers."""
    head = "@relation t\n@attribute a numeric\n@attribute 'y a' {'0','1'}\n@attribute \"y b\" {0,1}\n@data\n"
    rows = "{0 '1.5',1 '1'}\n{0 \"2\",2 '1'}\n" if sparse else "'1.5','1',\"0\"\n2,'0',\"1\"\n"
    (tmp_path / "q.arff").write_text(head + rows)
    data = D.load_arff(tmp_path / "q.arff", labels=["y a", "y b"])
    dense = [np.asarray(M.todense() if scipy.sparse.issparse(M) else M).tolist() for M in (data.X, data.Y)]
    assert dense == [[[1.5], [2.0]], [[1, 0], [0, 1]]]
    # a quoted '?' is the text ?, not a missing value; a quote never closed is no number either
    for bad in ("'?'", "'1"):
        (tmp_path / "bad.arff").write_text(head + f"1,{bad},0\n")
        with pytest.raises(D.DataError, match=r"bad\.arff:6: expected 3 comma-separated numbers"):
            D.load_arff(tmp_path / "bad.arff", labels=["y a", "y b"])


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_csv_separated_by_another_character_is_named(tmp_path, separator):
    """A European (';') or tab-separated file was read as one column, and the error named a number it could not read
    in the column 'f1;f2;ya'; it now says what the file seems to be."""
    path = tmp_path / "other.csv"
    path.write_text(separator.join(["f1", "f2", "ya"]) + "\n" + separator.join(["1.5", "2", "1"]) + "\n")
    with pytest.raises(D.DataError, match=rf"other\.csv:1: the header .* is one column: .* seems separated by {re.escape(repr(separator))}"):
        D.load_csv(path, ["ya"])
    # a one-column file whose column is a model's feature (predict) is no such file (review)
    name = separator.join(["f1", "f2"])
    (tmp_path / "one.csv").write_text(f"{name}\n1.5\n2\n")
    assert D.load_csv(tmp_path / "one.csv", ["ya"], features=[name], read_labels=False).X.shape == (2, 1)


@pytest.mark.parametrize(
    "header",
    ['"f0,f1,L0,L1\n', "x" * 140_000 + ",f1,L0,L1\n"],  # a quote never closed; a name past csv's field size limit
    ids=["unclosed-quote", "long-name"],
)
def test_a_header_csv_cannot_read_is_a_data_error_naming_line_1(tmp_path, header):
    """csv.Error (not a ValueError) from the header row was a traceback and exit code 1."""
    (tmp_path / "h.csv").write_text(header + "0.1,0.2,1,0\n" * 20_000)
    with pytest.raises(D.DataError, match=r"h\.csv:1: the header row cannot be read as CSV \(field larger than field "
                       r"limit \(131072\)\): a quote opened here or below is never closed, or a field is longer"):  # fmt: skip
        D.load_csv(tmp_path / "h.csv", ["L0", "L1"])


@pytest.mark.parametrize(
    "header,message",
    [
        ("2 1000000000 3", r"h\.txt:2: the header 'N F L' says F = 1000000000 features: expected at most 16,777,216 \(the most a file without a header"),
        ("2 3 16777217", r"h\.txt:2: the header 'N F L' says L = 16777217 labels: expected at most 16,777,216"),
        ("2 99999999999999999999 3", r"h\.txt:2: the header 'N F L' says F = 99999999999999999999 features"),
        ("2 3 " + "9" * 5000, r"h\.txt:2: the header 'N F L' says L = a 5000-digit number, 9999999999\.\.\. labels"),
        ("1" * 5000 + " 3 3", r"h\.txt:2: the header 'N F L' says N = a 5000-digit number, 1111111111\.\.\. samples"),
    ],
)
def test_a_libsvm_header_with_an_absurd_width_is_refused_before_anything_is_made(tmp_path, header, message):
    """F = 1e9 built 1e9 feature names (tens of GB); F = 1e20 overflowed in scipy; a 5000-digit N could not even be
    printed in the count's error. F and L are bounded as a headerless file's indices are (2**24)."""
    (tmp_path / "h.txt").write_text(f"# comment\n{header}\n0,1 0:1\n1,2 1:1\n")
    with pytest.raises(D.DataError, match=message):
        D.load(str(tmp_path / "h.txt"))


def test_a_libsvm_header_at_the_width_limit_still_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "MAX_INDEX_WITHOUT_HEADER", 8)  # 2**24 names: a second and a gigabyte
    (tmp_path / "w.txt").write_text("1 8 8\n0,7 7:1\n")
    d = D.load_libsvm(tmp_path / "w.txt")
    assert d.X.shape == (1, 8) and d.Y.shape == (1, 8) and d.feature_names[-1] == "7"
    (tmp_path / "w.txt").write_text("1 9 8\n0,7 7:1\n")
    with pytest.raises(D.DataError, match=r"w\.txt:1: the header 'N F L' says F = 9 features: expected at most 8 \(the most"):
        D.load_libsvm(tmp_path / "w.txt")


@pytest.mark.parametrize("header,column", [(",f1,y1,y2", 1), ("f1, ,y1,y2", 2), ("f1,x,y1,y2,", 5)])
def test_an_unnamed_csv_column_is_refused_by_its_position(tmp_path, header, column):
    """pandas' to_csv writes its index as a column with an empty name: it became a feature '' (the row number)."""
    cells = "0,1.5,1,0\n1,2.5,0,1\n" if header.count(",") == 3 else "0,1.5,1,0,\n1,2.5,0,1,\n"
    (tmp_path / "u.csv").write_text(f"{header}\n{cells}")
    with pytest.raises(D.DataError, match=rf"u\.csv:1: column {column} of the header has no name \(a pandas index\? "
                       r"to_csv\(index=False\) leaves it out\): name the column, or drop it"):  # fmt: skip
        D.load(str(tmp_path / "u.csv"), ["y1", "y2"])
    # a model trained on such a column before (its feature '') still reads the file it was made for
    if column == 1:
        d = D.load(str(tmp_path / "u.csv"), ["y1", "y2"], features=["", "f1"], read_labels=False)
        assert d.feature_names == ["", "f1"]


@pytest.mark.parametrize("name", ["z.csv", "z.arff", "z.txt", "z.gz"])
def test_a_gzip_file_is_named_as_such_whatever_its_extension(tmp_path, name):
    """It gave a UTF-8 error (CSV, ARFF) or a LIBSVM format one."""
    import gzip

    (tmp_path / name).write_bytes(gzip.compress(b"f1,y1,y2\n1,0,1\n"))
    with pytest.raises(D.DataError, match=rf"{re.escape(name)}:1: the file is gzip-compressed, not text: decompress it first"):
        D.load(str(tmp_path / name), ["y1", "y2"])
    (tmp_path / "book.csv").write_bytes(b"PK\x03\x04" + bytes(40))  # an Excel workbook renamed
    with pytest.raises(D.DataError, match=r"book\.csv:1: the file is a zip archive \(an Excel \.xlsx workbook\?\)"):
        D.load(str(tmp_path / "book.csv"), ["y1", "y2"])


@pytest.mark.parametrize("encoding,mark", [("utf-16", "FF FE"), ("utf-16-be", "FE FF"), ("utf-32", "FF FE 00 00")])
@pytest.mark.parametrize("name", ["w.csv", "w.arff", "w.txt"])
def test_a_utf16_or_utf32_file_is_named_as_such(tmp_path, name, encoding, mark):
    """UTF-16 (Windows PowerShell's '>' writes it) gave 'byte 0xff ... is not UTF-8 ... iconv -f latin1' (CSV, ARFF),
    or a LIBSVM format error quoting the text with a NUL byte between every character."""
    text = {"w.csv": "f1,y1,y2\n1,0,1\n", "w.arff": "@relation r\n@attribute f1 numeric\n@data\n1\n", "w.txt": "0,1 0:1.5\n"}
    bom = "\ufeff" if encoding == "utf-16-be" else ""  # the plain codecs write their byte-order mark themselves
    (tmp_path / name).write_bytes((bom + text[name]).encode(encoding))
    with pytest.raises(D.DataError, match=rf"{re.escape(name)}:1: the file is UTF-{encoding[4:6]} text \(byte-order mark "
                       rf"{mark}.*\), not UTF-8: convert it \(iconv -f utf-{encoding[4:6]} -t utf-8"):  # fmt: skip
        D.load(str(tmp_path / name), ["y1", "y2"])


@pytest.mark.parametrize(
    "text,kind,suffix",
    [("f1,f2,y1\n1.5,2,0\n", "CSV", ".csv"), ("1.5,2,0\n", "CSV", ".csv"), ("% from Weka\n@relation r\n", "ARFF", ".arff"),
     ("@RELATION r\n@attribute f1 numeric\n", "ARFF", ".arff"), ("0 1:x\n", None, None), ("1;2;3\n", None, None)],
)  # fmt: skip
def test_csv_or_arff_text_read_as_libsvm_says_the_name_chose_the_format(tmp_path, text, kind, suffix):
    """A CSV or ARFF file named .txt (or .tsv, .dat) is read as LIBSVM: the error said only that a line was not
    LIBSVM, not why the file was read as such."""
    (tmp_path / "data.txt").write_text(text)
    hint = rf" \(is it {kind}\? data\.txt is read as LIBSVM text: a file is read as {kind} only when its name ends in \{suffix}\)$"
    with pytest.raises(D.DataError, match=r"data\.txt:\d: expected 'l1,l2,\.\.\. idx:val idx:val \.\.\.'") as error:
        D.load(str(tmp_path / "data.txt"))
    assert re.search(hint, str(error.value)) if kind else "(is it" not in str(error.value), str(error.value)


def _lost_in_float32(column: np.ndarray) -> bool:
    """A reference written here: float32 rounds the column to 0 (every non-zero below its smallest normal number), or
    by more than 1e-3 of its standard deviation (2**-24 of its mean)."""
    nonzero = np.abs(column[column != 0])
    tiny = len(nonzero) > 0 and nonzero.max() < np.finfo(np.float32).tiny
    return bool(tiny or (column.std() > 0 and abs(column.mean()) * 2.0**-24 > 1e-3 * column.std()))


@pytest.mark.parametrize("scale,offset,lost", [(1e-50, 0.0, True), (50.0, 1.6e9, True), (1.0, 0.0, False), (1e6, 1.6e9, False)])
@pytest.mark.parametrize("kind", ["libsvm", "sparse arff"])
def test_sparse_features_that_float32_would_lose_are_kept_as_read(tmp_path, kind, scale, offset, lost):
    """Sparse features were cast to float32 as they were read: a column of 1e-50s became 0 and timestamps 1.6e9 +- 50
    kept a few distinct values of 40, silently (the same data dense is refused by training, or kept in float64)."""
    column = offset + scale * np.random.default_rng(0).standard_normal(40)
    assert _lost_in_float32(column) == lost
    if kind == "libsvm":
        (tmp_path / "s.txt").write_text("".join(f"0 0:{float(v)!r} 1:1.5\n" for v in column))
        data = D.load(str(tmp_path / "s.txt"))
    else:
        head = "@relation s\n@attribute f0 numeric\n@attribute f1 numeric\n@attribute y {0,1}\n@data\n"
        (tmp_path / "s.arff").write_text(head + "".join(f"{{0 {float(v)!r},1 1.5,2 1}}\n" for v in column))
        data = D.load(str(tmp_path / "s.arff"), ["y"])
    assert data.sparse and data.X.dtype == (np.float64 if lost else np.float32)
    expected = column if lost else column.astype(np.float32)
    np.testing.assert_array_equal(data.X[:, 0].toarray().ravel(), expected)
    np.testing.assert_array_equal(data.X[:, 1].toarray().ravel(), 1.5)
    data.X.sort_indices()  # writable (LIBSVM's float64 values are not a read-only view of the parser's buffer)


def test_float32_blurred_sparse_matches_numpys_column_statistics():
    rng = np.random.default_rng(1)
    for _ in range(20):
        X = rng.normal(size=(int(rng.integers(2, 50)), 3)) * rng.uniform(1e-3, 1e3, 3) + rng.uniform(-1e7, 1e7, 3)
        X[rng.random(X.shape) < 0.3] = 0.0  # the zeros a sparse matrix leaves out count in the statistics
        expected = (np.abs(X.mean(0)) * 2.0**-24 > 1e-3 * X.std(0)) & (X.std(0) > 0)
        np.testing.assert_array_equal(D.float32_blurred(scipy.sparse.csr_matrix(X)), expected)
        np.testing.assert_array_equal(D.float32_blurred(X), expected)


def test_train_test_mismatch_names_the_training_file_not_a_model(tmp_path):
    """At train time there is no model yet: the test file's columns are --data's."""
    (tmp_path / "train.csv").write_text("f1,f2,y1,y2\n1,2,0,1\n3,4,1,1\n")
    (tmp_path / "test.csv").write_text("f1,y1,y2\n1,0,1\n")
    with pytest.raises(D.DataError, match=r"test\.csv: the features do not match --data's 2 by name: missing feature\(s\) \['f2'\]$"):
        D.load_train_test(str(tmp_path / "train.csv"), str(tmp_path / "test.csv"), ["y1", "y2"])
    (tmp_path / "train.txt").write_text("0 0:1\n1 2:1\n")
    (tmp_path / "test.txt").write_text("0 4:1\n1 0:1\n")
    with pytest.raises(D.DataError, match=r"test\.txt: feature index 4: --data has 3 features \(0 to 2\)$"):
        D.load_train_test(str(tmp_path / "train.txt"), str(tmp_path / "test.txt"))
    (tmp_path / "labels.txt").write_text("0 0:1\n5 0:1\n")
    with pytest.raises(D.DataError, match=r"labels\.txt: label 5: --data has 2 labels \(0 to 1\)$"):
        D.load_train_test(str(tmp_path / "train.txt"), str(tmp_path / "labels.txt"))
