"""Metrics: scikit-learn's where it has them; the hand-written ones (one-error, P@k, thresholds) against hand counts."""

from __future__ import annotations

import numpy as np

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
