"""Metrics: scikit-learn's where it has them; the hand-written ones (one-error, P@k, thresholds) against hand counts."""

from __future__ import annotations

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")  # softmargin.metrics needs scipy and scikit-learn (the app extra)
pytest.importorskip("sklearn")
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


SCORE_FUNCTIONS = {
    "precision_at_k": lambda scores: M.precision_at_k(Y, scores, 2),
    "psp_at_k": lambda scores: M.psp_at_k(Y, scores, INV_P, 2),
    "evaluate": lambda scores: M.evaluate(Y, scores, 5)[0],
    "tune_thresholds": lambda scores: M.tune_thresholds(Y, scores),
}
S10 = np.rint(S * 10)  # [[9, 2, 4], [6, 7, 1], [3, 8, 2], [1, 2, 3]]: every kind of number holds these


@pytest.mark.parametrize("function", sorted(SCORE_FUNCTIONS))
@pytest.mark.parametrize("convert", [
    lambda s: s.astype(np.uint8), lambda s: s.astype(np.int64), lambda s: s.astype(np.float32), lambda s: s.tolist(),
    lambda s: s.astype(int).tolist(), sp.csr_matrix,
])  # fmt: skip
def test_scores_of_every_kind_give_the_float_results(function, convert):
    """Unsigned scores were negated with wraparound (P@k 0 for right rankings), a list of lists raised TypeError."""
    expected, got = SCORE_FUNCTIONS[function](S10), SCORE_FUNCTIONS[function](convert(S10))
    if isinstance(expected, dict):
        assert got.keys() == expected.keys()
        np.testing.assert_array_equal([got[k] for k in expected], list(expected.values()))
    else:
        np.testing.assert_array_equal(got, expected)


def test_the_reported_unsigned_scores_rank_as_numbers():
    labels = np.array([[0, 0, 1], [1, 0, 0]])
    assert M.precision_at_k(labels, np.array([[0, 1, 5], [3, 0, 1]], np.uint8), 1) == 1.0
    assert M.psp_at_k(labels, np.array([[0, 1, 5], [3, 0, 1]], np.uint8), INV_P, 1) == 1.0


@pytest.mark.parametrize("function", sorted(SCORE_FUNCTIONS))
@pytest.mark.parametrize(("scores", "message"), [
    (S[:1], "scores has shape (1, 3): expected Y's shape (4, 3)"),  # was broadcast: P@k of the first row's ranking
    (S[:, :2], "scores has shape (4, 2): expected Y's shape (4, 3)"),  # was read past: IndexError or truncation
    (S.T, "scores has shape (3, 4): expected Y's shape (4, 3)"),
    (S[0], "scores has shape (3,): expected Y's shape (4, 3)"),
    (S.astype(str), "scores has dtype <U32: expected real numbers (booleans, ints or floats)"),
    (np.where(np.eye(4, 3) == 1, np.nan, S), "scores holds 3 NaN value(s), the first nan at [0, 0]: expected numbers"),
    (np.where(S == 0.1, np.nan, S), "scores holds 2 NaN value(s), the first nan at [1, 2]: expected numbers"),
])  # fmt: skip
def test_scores_of_another_shape_or_with_nan_are_refused(function, scores, message):
    with pytest.raises(ValueError) as refused:
        SCORE_FUNCTIONS[function](scores)
    assert str(refused.value).startswith(message), str(refused.value)


def test_the_reported_broadcast_scores_are_refused():
    with pytest.raises(ValueError, match=r"^scores has shape \(1, 3\): expected Y's shape \(3, 3\)$"):
        M.precision_at_k(np.eye(3, dtype=int), np.array([[0.9, 0.1, 0.1]]), 1)  # gave 1/3


def test_infinite_scores_rank_in_p_at_k_and_are_refused_by_evaluate():
    """scikit-learn's ranking metrics refuse infinities: evaluate says so first, naming scores and the first one."""
    scores = np.where(S == 0.9, np.inf, np.where(S == 0.1, -np.inf, S))
    assert M.precision_at_k(Y, scores, 2) == M.precision_at_k(Y, S, 2)
    assert M.psp_at_k(Y, scores, INV_P, 2) == M.psp_at_k(Y, S, INV_P, 2)
    with pytest.raises(ValueError, match=r"^scores holds 3 infinite value\(s\), the first inf at \[0, 0\]: expected"):
        M.evaluate(Y, scores)


@pytest.mark.parametrize(("inv_propensity", "message"), [
    (np.ones(2), r"^inv_propensity has shape \(2,\): expected one value per label of Y, shape \(3,\)$"),
    (np.ones((1, 3)), r"^inv_propensity has shape \(1, 3\): expected one value per label of Y, shape \(3,\)$"),
    (np.array([1.0, np.nan, 2.0]), r"^inv_propensity holds 1 NaN value\(s\), the first nan at \[1\]"),
])  # fmt: skip
def test_inverse_propensities_are_one_number_per_label(inv_propensity, message):
    with pytest.raises(ValueError, match=message):
        M.psp_at_k(Y, S, inv_propensity, 1)
    assert M.psp_at_k(Y, S, [1, 1, 1], 1) == M.psp_at_k(Y, S, INV_P, 1)


def test_predictions_of_another_shape_are_refused():
    with pytest.raises(ValueError, match=r"^pred has shape \(4, 2\): expected Y's shape \(4, 3\)$"):
        M.evaluate(Y, S, pred=Y[:, :2])


def _f1(y, predicted):
    tp = int((y & predicted).sum())
    return 2 * tp / (tp + int(predicted.sum()) + int(y.sum()))


@pytest.mark.parametrize("seed", range(40))
def test_tuned_thresholds_reproduce_the_best_cut_for_scores_of_either_sign(seed):
    """Predicting ``scores >= tune_thresholds(Y, scores)`` gives, per label, the best F1 of any cut (brute force over
    every distinct score), with the fewest samples among equally good cuts. Half the lowest score, the threshold where
    predicting everything was best, lay above that score when it was negative, leaving its sample out."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    labels = (rng.random((n, 6)) < rng.uniform(0.1, 0.9)).astype(int)
    scores = np.c_[
        rng.normal(size=(n, 2)), rng.normal(-3, 1, size=(n, 2)),  # logits of both signs, all negative
        rng.integers(-3, 3, size=(n, 2)) / 2,  # ties
    ]  # fmt: skip
    scores[:, 1] += 2.0 * labels[:, 1]  # a label the scores separate
    thresholds = M.tune_thresholds(labels, scores)
    predicted = scores >= thresholds
    for j in range(labels.shape[1]):
        y = labels[:, j].astype(bool)
        if not y.any():
            assert thresholds[j] == 0.5
            continue
        cuts = [scores[:, j] >= value for value in np.unique(scores[:, j])]
        best = max(_f1(y, cut) for cut in cuts)
        assert _f1(y, predicted[:, j]) == best, (j, thresholds[j], scores[:, j], y)
        assert predicted[:, j].sum() == min(cut.sum() for cut in cuts if _f1(y, cut) == best)


def test_the_reported_negative_scores_are_all_predicted():
    np.testing.assert_array_equal(M.tune_thresholds(np.array([[1], [1]]), np.array([[-0.2], [-0.4]])), [-0.4])  # -0.2
    np.testing.assert_array_equal(M.tune_thresholds(np.array([[1]]), np.array([[-0.2]])), [-0.2])  # was -0.1
    assert M.tune_thresholds(np.array([[1], [0]]), np.array([[0.8], [0.2]]))[0] == 0.5  # the midpoint, as before


def test_tuned_threshold_between_neighbouring_floats_keeps_the_cut():
    """The midpoint of two neighbouring floats rounds onto one of them: onto the lower, it predicted both."""
    high = np.nextafter(1.0, 2.0)
    assert (1.0 + high) / 2 == 1.0  # round half to even
    labels, scores = np.array([[1], [0]]), np.array([[high], [1.0]])
    assert M.tune_thresholds(labels, scores)[0] == high
    huge = np.array([[1.5e308], [1e308]])  # their sum overflows
    np.testing.assert_array_equal(huge >= M.tune_thresholds(labels, huge), labels.astype(bool))


Y1 = np.array([[1], [0], [1], [0], [1]])
S1 = np.array([[0.9], [0.2], [0.4], [0.6], [0.3]])


def test_one_label_against_hand_counts():
    """scikit-learn types an (N, 1) matrix as binary: evaluate raised on the samples average (and would have averaged
    the rest over the classes 0 and 1). Each metric is now its definition's value for the one label."""
    metrics, per_label = M.evaluate(Y1, S1, 0.5, train_label_counts=np.array([5]), train_size=10)
    # predicted [1, 0, 0, 1, 0]: tp 1 (sample 0), fp 1 (sample 3), fn 2 (samples 2, 4)
    assert metrics["hamming_loss"] == 3 / 5
    assert metrics["subset_accuracy"] == 2 / 5
    for average in ("micro", "macro"):
        assert metrics[f"{average}_precision"] == 1 / 2
        assert metrics[f"{average}_recall"] == 1 / 3
        assert metrics[f"{average}_f1"] == 2 / 5
    assert metrics["macro_f1_train_labels"] == 2 / 5
    assert metrics["samples_f1"] == 1 / 5  # 1 for sample 0; 0 for the others (wrong, or nothing true nor predicted)
    assert metrics["lrap"] == 1.0  # every sample has all or none of its labels right at the top
    assert metrics["ranking_loss"] == 0.0  # no (true, false) label pairs
    assert metrics["coverage"] == 3 / 5  # one label for a sample with it, none for one without
    assert metrics["one_error"] == 1 - 3 / 5
    assert metrics["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3, abs=1e-15)  # ranked 0.9 0.6 0.4 0.3 0.2: 1 0 1 1 0
    for k in (1, 3, 5):
        assert metrics[f"P@{k}"] == metrics[f"nDCG@{k}"] == 3 / 5  # nDCG 0 without a positive, as scikit-learn's
        assert metrics[f"PSP@{k}"] == 1.0
    assert per_label == [{"support": 3, "precision": 0.5, "recall": 1 / 3, "f1": 0.4, "threshold": 0.5}]
    assert np.isnan(M.evaluate(Y1, S1, train_label_counts=np.array([0]), train_size=10)[0]["macro_f1_train_labels"])


@pytest.mark.parametrize("seed", range(5))
def test_one_label_as_two_with_a_second_never_true_nor_predicted(seed):
    """scikit-learn on a second label that is never true, never predicted and scored lowest: the same metrics, but for
    those that average over labels (halved by the second's zeros) and P@k for k >= 2 (divided by 2, not 1)."""
    rng = np.random.default_rng(seed)
    labels, scores = (rng.random((20, 1)) < 0.4).astype(int), rng.normal(size=(20, 1))
    counts = np.array([7])
    pred = None if seed % 2 else (rng.random((20, 1)) < 0.5).astype(int)
    one, per_label = M.evaluate(labels, scores, 0.0, pred, counts, 50)
    two, per_label_two = M.evaluate(
        np.c_[labels, np.zeros_like(labels)], np.c_[scores, np.full(20, scores.min() - 1)], [0.0, np.inf],
        None if pred is None else np.c_[pred, np.zeros_like(pred)], np.r_[counts, 7], 50,
    )  # fmt: skip
    halved = {"hamming_loss", "macro_f1", "macro_precision", "macro_recall", "macro_f1_train_labels", "P@3", "P@5"}
    assert one.keys() == two.keys()
    for key in one:
        assert one[key] == pytest.approx(two[key] * (2 if key in halved else 1), rel=1e-15, abs=0), key
    assert per_label == per_label_two[:1]


@pytest.mark.parametrize(("kwargs", "message"), [
    # NumPy's "operands could not be broadcast together with remapped shapes", naming no argument
    ({"thresholds": [0.5, 0.5]}, r"^thresholds has shape \(2,\): expected one threshold, or one per label of Y, shape \(3,\)$"),
    ({"thresholds": np.full((4, 3), 0.5)}, r"^thresholds has shape \(4, 3\): expected one threshold"),
    # a NaN threshold predicted nothing for its label: micro-F1 0.25 (0.6 at 0.5), silently
    ({"thresholds": [0.5, np.nan, 0.5]}, r"^thresholds holds 1 NaN value\(s\), the first nan at \[1\]"),
    # a longer list was read for its first labels: PSP@k computed, silently, with another label's propensities
    ({"train_label_counts": np.array([5, 2, 3, 0]), "train_size": 10},
     r"^train_label_counts has shape \(4,\): expected one count per label of Y, shape \(3,\)$"),
    ({"train_label_counts": np.array([5, 2]), "train_size": 10}, r"^train_label_counts has shape \(2,\): expected one count"),
])  # fmt: skip
def test_evaluate_refuses_thresholds_and_label_counts_of_another_length(kwargs, message):
    with pytest.raises(ValueError, match=message):
        M.evaluate(Y, S, **kwargs)


def test_evaluate_takes_one_threshold_or_one_per_label():
    pred = (S >= np.array([0.5, 0.3, 0.7])).astype(int)
    assert M.evaluate(Y, S, thresholds=[0.5, 0.3, 0.7])[0] == M.evaluate(Y, S, pred=pred)[0]
    assert M.evaluate(Y, S, thresholds=np.array([0.5]))[0] == M.evaluate(Y, S, thresholds=0.5)[0]
    # with pred the thresholds decide nothing: a rank rule's (top-k, rcut) are NaN, as the trainer passes them
    metrics, per_label = M.evaluate(Y, S, thresholds=np.full(3, np.nan), pred=pred)
    assert metrics == M.evaluate(Y, S, pred=pred)[0] and all(np.isnan(r["threshold"]) for r in per_label)


def test_propensities_refuse_negative_or_nan_label_counts():
    """A count of -1.5 made log(N_l + B) -inf (propensity 0, PSP@k infinite), one below it NaN: refused by name."""
    with pytest.raises(ValueError, match=r"label_counts holds 1 negative value\(s\), the first -1.5 at \[1\]"):
        M.propensities(np.array([3, -1.5, 0]), 100)
    with pytest.raises(ValueError, match=r"label_counts holds 1 NaN value\(s\)"):
        M.propensities(np.array([3, np.nan]), 100)
    with pytest.raises(ValueError, match=r"train_label_counts holds 1 negative|label_counts holds 1 negative"):
        M.evaluate(np.eye(2), np.eye(2), train_label_counts=np.array([1, -2]), train_size=10)


@pytest.mark.parametrize("metric", ["evaluate", "precision_at_k", "psp_at_k"])
def test_metrics_on_zero_samples_are_refused_by_name(metric):
    """P@k of no rows was NaN behind NumPy's "Mean of empty slice"; evaluate failed inside scikit-learn."""
    Y, scores = np.zeros((0, 3)), np.zeros((0, 3))
    call = {
        "evaluate": lambda: M.evaluate(Y, scores),
        "precision_at_k": lambda: M.precision_at_k(Y, scores, 1),
        "psp_at_k": lambda: M.psp_at_k(Y, scores, np.ones(3), 1),
    }[metric]
    with pytest.raises(ValueError, match=r"Y has shape \(0, 3\): expected at least one sample"):
        call()
