"""Metrics: scikit-learn's where it has them; the hand-written ones (one-error, P@k, thresholds) against hand counts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from softmargin import metrics as M

Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
S = np.array([[0.9, 0.2, 0.4], [0.6, 0.7, 0.1], [0.3, 0.8, 0.2], [0.1, 0.2, 0.3]])


def test_hand_counted_metrics():
    metrics, per_label = M.evaluate(Y, S, 0.5)
    pred = (S >= 0.5).astype(int)  # [[1,0,0],[1,1,0],[0,1,0],[0,0,0]]
    assert metrics["hamming_loss"] == np.mean(pred != Y) == 4 / 12
    assert metrics["subset_accuracy"] == 0.0
    assert metrics["one_error"] == 0.0  # every top-ranked label is right: 0, 1, 1, 2
    assert metrics["P@1"] == 1.0
    assert metrics["P@3"] == Y.sum() / 12
    assert [row["support"] for row in per_label] == [2, 2, 2]
    assert metrics["coverage"] >= Y.sum(1).mean()  # scikit-learn's 1-based convention


def test_tuned_thresholds_separate_perfectly_separable_labels():
    scores = np.array([[0.9, 0.1], [0.8, 0.3], [0.2, 0.6], [0.1, 0.7]])
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    thresholds = M.tune_thresholds(labels, scores)
    assert ((scores >= thresholds).astype(int) == labels).all()
    assert M.tune_thresholds(np.zeros((3, 1)), np.ones((3, 1)))[0] == 0.5  # no positive: the default


def test_map_skips_labels_without_positives():
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    metrics, _ = M.evaluate(labels, np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.4]]))
    assert metrics["mAP"] == 1.0


def test_psp_and_ndcg_against_hand_computation():
    labels = np.array([[1, 0, 0, 1], [0, 1, 0, 0]])
    scores = np.array([[0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.9, 0.3]])
    counts = np.array([100, 10, 5, 1])
    p = M.propensities(counts, 1000)
    c = (np.log(1000) - 1) * 2.5**0.55
    np.testing.assert_allclose(p, 1 / (1 + c * (counts + 1.5) ** -0.55))
    inv = 1 / p
    # top-1: sample 0 -> label 0 (right), sample 1 -> label 2 (wrong); ideal: label 3 for sample 0, label 1 for 1
    assert M.psp_at_k(labels, scores, inv, 1) == inv[0] / (inv[3] + inv[1])
    metrics, _ = M.evaluate(labels, scores, train_label_counts=counts, train_size=1000)
    assert metrics["PSP@1"] == M.psp_at_k(labels, scores, inv, 1)
    dcg0 = 1 / np.log2(2) + 1 / np.log2(4)  # sample 0 ranks labels 0, 1, 3, 2: its positives are 1st and 3rd
    idcg0 = 1 / np.log2(2) + 1 / np.log2(3)
    dcg1 = 1 / np.log2(4)  # label 1 is ranked 3rd in sample 1
    assert abs(metrics["nDCG@3"] - (dcg0 / idcg0 + dcg1 / 1.0) / 2) < 1e-12


def test_propensities_of_fewer_than_three_training_samples_are_one():
    """Jain et al.'s C = (log N - 1)(B + 1)^A is negative for N <= 2 (N < e): the propensities left (0, 1] (one was
    negative) and PSP@3 came out NaN. C is clamped at 0 there: every propensity is 1, PSP@k the normalised P@k."""
    counts = np.array([1, 0, 2, 1])
    for n in (1, 2, 2.0):
        np.testing.assert_array_equal(M.propensities(counts, n), np.ones(4))
    c3 = (np.log(3) - 1) * 2.5**0.55  # from N = 3 on, the formula as published (C > 0)
    np.testing.assert_allclose(M.propensities(counts, 3), 1 / (1 + c3 * (counts + 1.5) ** -0.55), rtol=1e-15)
    labels = np.array([[1, 0, 1, 0], [0, 1, 0, 1]])
    scores = np.array([[0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.9, 0.3]])
    metrics, _ = M.evaluate(labels, scores, train_label_counts=counts, train_size=1)
    # propensity 1: PSP@k is the hits among the k top-scored labels over min(k, positives), summed over the samples
    assert metrics["PSP@1"] == 1 / 2  # sample 0's top label 0 is right, sample 1's top label 2 is not
    assert metrics["PSP@3"] == (1 + 2) / (2 + 2)  # top 3: sample 0 {0, 1, 3} hits 0; sample 1 {2, 3, 1} hits 3 and 1
    for bad in (0, -5, 0.5, float("nan"), True, "10"):
        with pytest.raises(ValueError, match=r"num_samples=.*: expected the number of training samples, at least 1"):
            M.propensities(counts, bad)


def test_macro_f1_over_training_labels_against_hand_counts():
    """LibMultiLabel's "Macro-F1": the per-label F1 averaged over the labels seen in training only."""
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]])
    scores = np.array([[0.9, 0.6, 0.1], [0.2, 0.4, 0.7], [0.8, 0.1, 0.2], [0.1, 0.7, 0.1]])
    # at 0.5: label 0 tp 2 fp 0 fn 0 (F1 1); label 1 tp 0 fp 2 fn 1 (F1 0); label 2 tp 0 fp 1 fn 1 (F1 0)
    metrics, _ = M.evaluate(labels, scores, train_label_counts=np.array([5, 0, 3]), train_size=10)
    assert metrics["macro_f1"] == 1 / 3  # scikit-learn's: every label
    assert metrics["macro_f1_train_labels"] == 1 / 2  # label 1 never occurred in training: left out
    metrics, _ = M.evaluate(labels, np.where(scores > 0.5, 0.9, 0.1), train_label_counts=np.array([5, 2, 0]), train_size=10)
    assert metrics["macro_f1_train_labels"] == 1 / 2
    assert "macro_f1_train_labels" not in M.evaluate(labels, scores)[0]


INV_P = np.ones(3)
LABEL_FUNCTIONS = {
    "precision_at_k": lambda labels: M.precision_at_k(labels, S, 2),
    "psp_at_k": lambda labels: M.psp_at_k(labels, S, INV_P, 2),
    "evaluate": lambda labels: M.evaluate(labels, S)[0],
    "evaluate(pred)": lambda labels: M.evaluate(Y, S, pred=labels)[0],
    "tune_thresholds": lambda labels: M.tune_thresholds(labels, S),
}


@pytest.mark.parametrize("function", ["precision_at_k", "psp_at_k"])
@pytest.mark.parametrize("k", [0, -1, 1.0, 2.5, "3", None, True, np.float64(2.0)])
def test_k_must_be_an_integer_of_at_least_1(function, k):
    """k = 0 gave NaN and a RuntimeWarning; a float k was used as it came. Both are refused, naming k."""
    call = {"precision_at_k": lambda: M.precision_at_k(Y, S, k), "psp_at_k": lambda: M.psp_at_k(Y, S, INV_P, k)}
    with pytest.raises(ValueError, match=r"^k=.*: expected an integer >= 1$"):
        call[function]()


@pytest.mark.parametrize("k", [1, 2, np.int64(3), 10])
def test_integer_k_still_works(k):
    assert M.precision_at_k(Y, S, k) == M.precision_at_k(Y, S, int(k))
    assert 0 <= M.psp_at_k(Y, S, INV_P, k) <= 1
    assert M.precision_at_k(Y, S, 10) == M.precision_at_k(Y, S, 3)  # k beyond the labels: all of them


@pytest.mark.parametrize("function", sorted(LABEL_FUNCTIONS))
@pytest.mark.parametrize(("labels", "first", "position", "count"), [
    (np.eye(4, 3) * 0.5, "0.5", "[0, 0]", 3),  # soft labels were cast to int: 0.5 became 0
    (2 * Y - 1, "-1", "[0, 1]", 6),  # a {-1, +1} coding
    (np.where(Y == 1, 2, 0), "2", "[0, 0]", 6),
    (np.where(np.eye(4, 3) == 1, np.nan, Y), "nan", "[0, 0]", 3),
    (sp.csr_matrix(np.eye(4, 3) * 0.5), "0.5", "[0, 0]", 3),
    (np.array([[0, 1, 1], [0, 0, 1], [1, 0, 0.999], [1, 1, 0]]), "0.999", "[2, 2]", 1),
])  # fmt: skip
def test_labels_other_than_0_and_1_are_refused(function, labels, first, position, count):
    name = "pred" if function == "evaluate(pred)" else "Y"
    with pytest.raises(ValueError) as refused:
        LABEL_FUNCTIONS[function](labels)
    message = str(refused.value)
    expected = f"{name} holds {count} value(s) other than 0 and 1, the first {first} at {position}: "
    assert message.startswith(expected), message
    assert "expected a label matrix of 0 and 1" in message


@pytest.mark.parametrize("function", sorted(LABEL_FUNCTIONS))
@pytest.mark.parametrize(("labels", "message"), [
    (Y[0], "has shape (3,): expected a 2-D label matrix"),
    (Y.astype(str), "has dtype <U21: expected a label matrix of 0 and 1"),
])  # fmt: skip
def test_labels_must_be_a_numeric_matrix(function, labels, message):
    name = "pred" if function == "evaluate(pred)" else "Y"
    with pytest.raises(ValueError, match=f"^{name} " + message.replace("(", r"\(").replace(")", r"\)")):
        LABEL_FUNCTIONS[function](labels)


@pytest.mark.parametrize("function", sorted(LABEL_FUNCTIONS))
@pytest.mark.parametrize("convert", [
    lambda Y: Y.astype(bool), lambda Y: Y.astype(np.uint8), lambda Y: Y.astype(np.float32), lambda Y: Y.astype(float),
    lambda Y: Y.tolist(), sp.csr_matrix, sp.csc_matrix, lambda Y: sp.coo_array(Y.astype(float)),
])  # fmt: skip
def test_0_1_labels_of_every_kind_give_the_int_results(function, convert):
    """bool, int and float 0/1 matrices, lists and scipy.sparse 0/1 matrices: the same numbers as an int matrix."""
    expected, got = LABEL_FUNCTIONS[function](Y), LABEL_FUNCTIONS[function](convert(Y))
    if isinstance(expected, dict):
        assert got.keys() == expected.keys()
        np.testing.assert_array_equal([got[k] for k in expected], list(expected.values()))
    else:
        np.testing.assert_array_equal(got, expected)


def test_the_reported_soft_label_case_is_refused():
    with pytest.raises(ValueError, match=r"^Y holds 3 value\(s\) other than 0 and 1, the first 0.5 at \[0, 0\]"):
        M.evaluate(np.eye(3) * 0.5, np.eye(3))
    assert M.evaluate(np.eye(3), np.eye(3))[0]["micro_f1"] == 1.0
