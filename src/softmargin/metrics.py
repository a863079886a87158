"""Multi-label evaluation metrics, from scikit-learn wherever it has them.

Extreme-classification metrics: P@k, nDCG@k (scikit-learn's ``ndcg_score``) and propensity-scored PSP@k (Jain et
al., KDD 2016, with the usual A = 0.55, B = 1.5), normalised by its best value.

Conventions: ``coverage`` is scikit-learn's ``coverage_error`` (1-based: the mean number of top-ranked labels needed to
cover every true label, so its best value is the label cardinality; MULAN's coverage is this minus 1). ``one_error``
is the fraction of samples whose top-ranked label is wrong, and ``P@k`` the mean fraction of true labels among each
sample's k top-ranked ones; scikit-learn has neither, so they are computed here. ``mAP`` is the macro average
precision over the labels that have at least one positive in the evaluated data (the others have none defined).

``macro_f1`` is scikit-learn's: the mean per-label F1 over every label, a label without positives or predictions
counting 0. With the training set's label counts, ``macro_f1_train_labels`` is the same mean over the labels that
occur in the training data only: what LibMultiLabel reports as "Macro-F1" (its pipeline keeps the training split's
labels and drops the others), for comparison with its published figures.

Label matrices (``Y``, and ``pred`` in :func:`evaluate`) hold 0 and 1: bool, int or float, dense or scipy.sparse (made
dense). Any other value (soft labels, a {-1, +1} coding, NaN) is refused with a ValueError naming the argument and the
first such value, rather than truncated; ``k`` (P@k, PSP@k) is an integer >= 1. ``scores`` are real numbers (bool, int
or float, made float64; scipy.sparse is made dense, a missing entry scoring 0) of ``Y``'s shape, NaN refused (and
infinities in :func:`evaluate`, whose scikit-learn metrics refuse them), with a ValueError naming the argument.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._extras import needed

with needed("app", by="softmargin.metrics"):  # scipy and scikit-learn
    import scipy.sparse as sp
    from sklearn import metrics as skm


def _label_matrix(Y: Any, name: str) -> np.ndarray:
    """``Y`` as a dense 2-D array (its dtype kept), checked to hold only 0 and 1 (or booleans); scipy.sparse is
    densified. The error names the argument, the expected values and the first other value (row-major)."""
    dense = np.asarray(Y.toarray()) if sp.issparse(Y) else np.asarray(Y)
    if dense.ndim != 2:
        raise ValueError(
            f"{name} has shape {dense.shape}: expected a 2-D label matrix (n_samples, n_labels) of 0 and 1"
        )
    if dense.dtype.kind not in "biuf":
        raise ValueError(
            f"{name} has dtype {dense.dtype}: expected a label matrix of 0 and 1 (booleans, ints or floats)"
        )
    if dense.dtype.kind == "b" or dense.size == 0:
        return dense
    if dense.dtype.kind in "iu" and dense.min() >= 0 and dense.max() <= 1:  # the common case, without a mask
        return dense
    bad = dense != 0
    bad &= dense != 1  # NaN too
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} holds {int(bad.sum())} value(s) other than 0 and 1, the first {dense[row, column].item()!r} at "
            f"[{row}, {column}]: expected a label matrix of 0 and 1 (or booleans); soft labels are not evaluated"
        )
    return dense


def _real_array(
    values: Any, name: str, shape: tuple[int, ...], expected: str, finite: bool = False
) -> NDArray[np.float64]:
    """``values`` as a float64 array (scipy.sparse made dense), checked to have ``shape`` (``expected`` says so in the
    error) and to hold no NaN (with ``finite``, no infinity either). The error names the argument and the first bad
    value (row-major)."""
    dense = np.asarray(values.toarray()) if sp.issparse(values) else np.asarray(values)
    if dense.shape != shape:
        raise ValueError(f"{name} has shape {dense.shape}: expected {expected}")
    if dense.dtype.kind not in "biuf":
        raise ValueError(f"{name} has dtype {dense.dtype}: expected real numbers (booleans, ints or floats)")
    array: NDArray[np.float64] = dense.astype(np.float64, copy=False)
    if array.size == 0:
        return array
    low = array.min()  # NaN if any is: a pass or two, and no mask, unless something is wrong
    if not np.isnan(low) and not (finite and (np.isinf(low) or np.isinf(array.max()))):
        return array
    bad, kind, expected = np.isnan(array), "NaN", "numbers, not NaN"
    if not bad.any():
        bad, kind, expected = np.isinf(array), "infinite", "finite numbers"
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    where = "[" + ", ".join(map(str, first)) + "]"
    raise ValueError(
        f"{name} holds {int(bad.sum())} {kind} value(s), the first {array[first].item()!r} at {where}: "
        f"expected {expected}"
    )


def _scores(scores: Any, Y: np.ndarray, finite: bool = False) -> NDArray[np.float64]:
    return _real_array(scores, "scores", Y.shape, f"Y's shape {Y.shape}", finite)


def _check_rows(Y: np.ndarray) -> None:
    if len(Y) == 0:  # P@k was NaN with NumPy's "Mean of empty slice"; evaluate failed in scikit-learn naming no argument
        raise ValueError(f"Y has shape {Y.shape}: expected at least one sample (row) to evaluate")


def _check_k(k: Any) -> int:
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"k={k!r}: expected an integer >= 1")
    return int(k)


def precision_at_k(Y: Any, scores: Any, k: int) -> float:
    """Mean fraction of true labels among each sample's ``k`` top-scored ones (``k`` at most the number of labels).

    Args:
        Y: (N, L) true labels of 0 and 1 (bool, int or float; dense or scipy.sparse).
        scores: (N, L) real scores, higher meaning more likely (any real dtype or a nested list; no NaN).
        k: an integer >= 1.
    """
    k = _check_k(k)
    Y = _label_matrix(Y, "Y")
    _check_rows(Y)
    return _precision_at_k(Y, _scores(scores, Y), k)


def _precision_at_k(Y: np.ndarray, scores: np.ndarray, k: int) -> float:
    k = min(k, Y.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.take_along_axis(Y, top, axis=1).sum(1).mean() / k)


def propensities(label_counts: np.ndarray, num_samples: int, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """Jain, Prabhu & Varma (KDD 2016) label propensities p_l = 1 / (1 + C exp(-A log(N_l + B))), with
    C = (log N - 1)(B + 1)^A; A=0.55, B=1.5 are the usual constants (0.6 / 2.6 for Amazon, 0.5 / 0.4 for Wikipedia).

    ``num_samples`` N is the number of training samples, at least 1 (ValueError otherwise). For N <= 2 (N < e)
    the formula's log N - 1 is negative, which would give propensities outside (0, 1] (negative, or above 1) and PSP@k
    NaN; C is clamped at 0 there, so every propensity is 1: so little data says nothing about missing labels, and
    PSP@k reduces to the normalised P@k. ``label_counts`` are non-negative numbers (ValueError otherwise: a count
    of -1.5 gave the propensity 0, one below that NaN)."""
    if not (isinstance(num_samples, (int, float, np.integer, np.floating)) and not isinstance(num_samples, bool)
            and num_samples >= 1 and np.isfinite(num_samples)):  # fmt: skip
        raise ValueError(f"num_samples={num_samples!r}: expected the number of training samples, at least 1")
    counts = _real_array(label_counts, "label_counts", np.shape(label_counts), "its own shape", finite=True)
    if counts.size and counts.min() < 0:
        first = tuple(int(i) for i in np.argwhere(counts < 0)[0])
        raise ValueError(
            f"label_counts holds {int((counts < 0).sum())} negative value(s), the first {counts[first].item()!r} at "
            f"{list(first)}: expected each label's number of training positives (>= 0)"
        )
    c = max(float(np.log(num_samples)) - 1.0, 0.0) * (B + 1) ** A
    propensity: NDArray[np.float64] = 1.0 / (1.0 + c * np.exp(-A * np.log(counts + B)))
    return propensity


def psp_at_k(Y: Any, scores: Any, inv_propensity: Any, k: int) -> float:
    """Propensity-scored precision@k, normalised by its best possible value (as the extreme classification
    repository reports it): sum of y / p over the k top-scored labels over the same for the k best labels.

    ``Y`` holds 0 and 1 (bool, int or float; dense or scipy.sparse), ``scores`` real numbers of its shape (no NaN),
    ``inv_propensity`` one 1 / p per label (shape (L,), no NaN); ``k`` is an integer >= 1 (at most the number of
    labels is used)."""
    k = _check_k(k)
    Y = _label_matrix(Y, "Y")
    _check_rows(Y)
    L = Y.shape[1]
    inv_propensity = _real_array(inv_propensity, "inv_propensity", (L,), f"one value per label of Y, shape ({L},)")
    return _psp_at_k(Y, _scores(scores, Y), inv_propensity, k)


def _psp_at_k(Y: np.ndarray, scores: np.ndarray, inv_propensity: np.ndarray, k: int) -> float:
    k = min(k, Y.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    gain = (np.take_along_axis(Y, top, axis=1) * inv_propensity[top]).sum()
    ideal = -np.sort(-(Y * inv_propensity), axis=1)[:, :k].sum()
    return float(gain / ideal) if ideal > 0 else float("nan")


def evaluate(
    Y: Any,
    scores: Any,
    thresholds: Any = 0.5,
    pred: Any = None,
    train_label_counts: np.ndarray | None = None,
    train_size: int | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, per-label rows) for true labels ``Y`` (N, L), scores (probabilities, N x L) and the 0/1 predictions
    ``pred`` (default: ``scores >= thresholds``). With the training set's label counts and size, also PSP@k and
    ``macro_f1_train_labels`` (the macro-F1 over the labels with a training positive: LibMultiLabel's "Macro-F1").

    ``Y`` and ``pred`` hold 0 and 1 (bool, int or float; dense or scipy.sparse): any other value (soft labels, a
    {-1, +1} coding, NaN) is refused with a ValueError; ``scores`` and ``pred`` have ``Y``'s shape, the scores finite.
    One label (L = 1) is evaluated too, each metric taking its definition's value for that label (a sample without
    it scoring 1 in LRAP and 0 in nDCG, as scikit-learn counts samples without positives)."""
    Y = _label_matrix(Y, "Y").astype(np.int64)
    _check_rows(Y)
    scores = _scores(scores, Y, finite=True)
    num_labels = Y.shape[1]
    given = np.asarray(thresholds)
    if given.ndim > 1 or given.size not in (1, num_labels):  # NumPy's broadcast error named no argument
        raise ValueError(f"thresholds has shape {given.shape}: expected one threshold, or one per label of Y, shape ({num_labels},)")
    if pred is None:  # a NaN threshold predicted nothing for its label, silently
        given = _real_array(given.reshape(-1), "thresholds", (given.size,), "its own shape")
    # (with ``pred`` the thresholds are only reported per label: a rank rule's are NaN, none applies)
    thresholds = np.broadcast_to(given.reshape(-1).astype(np.float64), (num_labels,))
    if pred is None:
        pred = (scores >= thresholds).astype(np.int64)
    else:
        pred = _label_matrix(pred, "pred").astype(np.int64)
        if pred.shape != Y.shape:
            raise ValueError(f"pred has shape {pred.shape}: expected Y's shape {Y.shape}")
    # scikit-learn types a one-column matrix as binary (classes 0 and 1: its averages and per-label rows would be over
    # both) and refuses samples averages and rankings on it: one label is evaluated beside a second that is never true
    # nor predicted and scored below every score, which changes no metric computed over labels=[0] (or over samples)
    labels, Yw, predw, scoresw = None, Y, pred, scores
    if Y.shape[1] == 1:
        labels, Yw, predw = [0], np.c_[Y, np.zeros_like(Y)], np.c_[pred, np.zeros_like(pred)]
        scoresw = np.c_[scores, np.full(len(Y), np.nextafter(scores.min(initial=0.0), -np.inf))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # labels without positives: handled below
        has_positive = Y.sum(0) > 0
        result = {
            "hamming_loss": skm.hamming_loss(Y, pred),
            "subset_accuracy": skm.accuracy_score(Y, pred),
            "micro_f1": skm.f1_score(Yw, predw, labels=labels, average="micro", zero_division=0),
            "macro_f1": skm.f1_score(Yw, predw, labels=labels, average="macro", zero_division=0),
            "samples_f1": skm.f1_score(Yw, predw, average="samples", zero_division=0),
            "micro_precision": skm.precision_score(Yw, predw, labels=labels, average="micro", zero_division=0),
            "micro_recall": skm.recall_score(Yw, predw, labels=labels, average="micro", zero_division=0),
            "macro_precision": skm.precision_score(Yw, predw, labels=labels, average="macro", zero_division=0),
            "macro_recall": skm.recall_score(Yw, predw, labels=labels, average="macro", zero_division=0),
            "lrap": skm.label_ranking_average_precision_score(Yw, scoresw),
            "ranking_loss": skm.label_ranking_loss(Yw, scoresw),
            "coverage": skm.coverage_error(Yw, scoresw),
            "one_error": float(1.0 - Y[np.arange(len(Y)), scores.argmax(1)].mean()) if len(Y) else float("nan"),
            # C order: a fancy-indexed column subset is Fortran-ordered, and scikit-learn's per-column loop over it
            # took 31 s on delicious' test set (2 s in C order)
            "mAP": skm.average_precision_score(
                np.ascontiguousarray(Y[:, has_positive]), np.ascontiguousarray(scores[:, has_positive]), average="macro"
            )
            if has_positive.any()
            else float("nan"),
        }
        for k in (1, 3, 5):
            result[f"P@{k}"] = _precision_at_k(Y, scores, k)
        for k in (1, 3, 5):
            result[f"nDCG@{k}"] = skm.ndcg_score(Yw, scoresw, k=k)
        if train_label_counts is not None and train_size:
            # a longer one was read for its first labels (its last ones' only as macro-F1 labels), a shorter one failed
            train_label_counts = _real_array(
                train_label_counts, "train_label_counts", (Y.shape[1],), f"one count per label of Y, shape ({Y.shape[1]},)"
            )  # fmt: skip
            inv_p = 1.0 / propensities(train_label_counts, train_size)
            for k in (1, 3, 5):
                result[f"PSP@{k}"] = _psp_at_k(Y, scores, inv_p, k)
            seen = np.flatnonzero(np.asarray(train_label_counts) > 0)
            result["macro_f1_train_labels"] = (
                skm.f1_score(Yw, predw, labels=seen, average="macro", zero_division=0) if len(seen) else float("nan")
            )
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            Yw, predw, labels=labels, average=None, zero_division=0
        )
    per_label = [
        {"support": int(s), "precision": float(p), "recall": float(r), "f1": float(f), "threshold": float(t)}
        for p, r, f, s, t in zip(precision, recall, f1, support, thresholds)
    ]
    return {k: float(v) for k, v in result.items()}, per_label


def tune_thresholds(Y: Any, scores: Any) -> np.ndarray:
    """Per label, the threshold t for which predicting ``scores >= t`` maximises that label's F1 on (Y, scores), the
    fewest samples predicted among equally good cuts; 0.5 for a label with no positive example. ``Y`` holds 0 and 1
    (bool, int or float; dense or scipy.sparse), ``scores`` real numbers of its shape (no NaN; any sign).

    t is the midpoint between the lowest score predicted and the next lower one (the lowest score predicted itself
    where the midpoint rounds onto the lower one), or the lowest score of all where predicting every sample is best."""
    Y = _label_matrix(Y, "Y")
    scores = _scores(scores, Y)
    thresholds = np.full(Y.shape[1], 0.5)
    for j in range(Y.shape[1]):
        y = Y[:, j].astype(bool)
        if not y.any():
            continue
        order = np.argsort(-scores[:, j], kind="stable")
        s = scores[order, j]
        tp = np.cumsum(y[order])
        fp = np.cumsum(~y[order])
        f1 = 2 * tp / (tp + fp + y.sum())  # predicting the top i+1 as positive
        distinct = np.r_[s[1:] != s[:-1], True]  # only cut between different scores
        best = int(np.argmax(np.where(distinct, f1, -1)))
        if best + 1 == len(s):  # every sample (half the lowest score, as before, was above it when negative)
            thresholds[j] = s[best]
        else:
            middle = s[best] / 2 + s[best + 1] / 2  # halves first: no overflow
            thresholds[j] = middle if s[best + 1] < middle <= s[best] else s[best]
    return thresholds


TABLE_ORDER = (
    "hamming_loss", "subset_accuracy", "micro_f1", "macro_f1", "macro_f1_train_labels", "samples_f1", "micro_precision", "micro_recall",
    "macro_precision", "macro_recall", "lrap", "ranking_loss", "coverage", "one_error", "mAP", "P@1", "P@3", "P@5",
    "nDCG@1", "nDCG@3", "nDCG@5", "PSP@1", "PSP@3", "PSP@5",
)  # fmt: skip
LOWER_IS_BETTER = {"hamming_loss", "ranking_loss", "coverage", "one_error"}
