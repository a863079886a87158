"""Per-label thresholds from held-out predictions that are safe on small data: LibMultiLabel's micro+macro cut with
Fan & Lin's SCutfbr fallback (by default to the global threshold) and a floor.

For each label (most frequent first) the cut through its held-out scores is the one that maximises micro-F1 + macro-F1
(macro-F1 weighted by ``macro_weight``) of the labels cut so far (LibMultiLabel's ``train_thresholding``, "micromacro-freq", Lin et al., CIKM 2023): a rare
label's cut pays for its false positives in micro-F1, which a per-label F1 alone ignores. Then, as SCutfbr (Fan & Lin,
2007): a label whose F1 at its cut is below ``fbr`` on the held-out rows (optionally: only if it has fewer than
``fbr_positives`` held-out positives, where that F1 is a noisy estimate) falls back: by default (``fallback="global"``)
to the global threshold, the one threshold shared by every label that maximises the pooled held-out micro-F1 (what
a label with too few held-out positives to cut on its own is best given: its own cut is noise, the global one is
estimated on every label's held-out scores); with ``fallback="above"`` (SCutfbr's rule) to a threshold above every
held-out score (at least 0.5): predicted only when the model is more confident than it ever was on held-out data. A
label without any held-out positive always gets the latter. Finally no threshold is below ``floor``: a cut tuned on a handful of held-out positives can sit at 1e-7 and predict a label for
every sample (this is what made the old per-label F1 tuning wreck Hamming loss and micro-F1 on medical and enron).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp

#: Where a label that fails the SCutfbr test falls back to (:func:`cv_thresholds`).
FALLBACKS = ("global", "above")


def global_threshold(Y: Any, scores: np.ndarray) -> float:
    """The one threshold, shared by every label, that maximises the micro-F1 of ``scores >= threshold`` against ``Y``.

    Args:
        Y: 0/1 labels (N, L), dense or scipy.sparse.
        scores: probabilities (N, L).

    Returns:
        The midpoint between the lowest predicted score and the next lower score (the lowest predicted score if none
        is lower); 0.5 when ``Y`` has no positive.

    Example:
        >>> global_threshold(np.array([[1, 0], [0, 1], [0, 0]]), np.array([[0.9, 0.1], [0.3, 0.6], [0.5, 0.2]]))
        0.55
    """
    Yd = np.asarray(Y.toarray() if sp.issparse(Y) else Y).astype(bool)
    scores = np.asarray(scores, np.float64)
    positives = np.sort(scores[Yd])[::-1]  # candidate cuts: at a positive's score (F1 peaks there)
    if not len(positives):
        return 0.5
    everything = np.sort(scores, axis=None)
    # predicting scores >= positives[i]: true positives and predictions, ties included
    true_positives = len(positives) - np.searchsorted(positives[::-1], positives, side="left")
    predicted = everything.size - np.searchsorted(everything, positives, side="left")
    f1 = 2 * true_positives / (predicted + len(positives))
    best = float(positives[int(np.argmax(f1))])
    below = np.searchsorted(everything, best, side="left")
    return (best + float(everything[below - 1])) / 2 if below else best


def cv_thresholds(
    Y: Any,
    scores: np.ndarray,
    *,
    fbr: float = 0.1,
    floor: float = 0.05,
    macro_weight: float = 1.0,
    fbr_positives: int | None = None,
    fallback: str = "above",
) -> np.ndarray:
    """Per-label probability thresholds from held-out ``scores`` (N, L) against 0/1 labels ``Y`` (N, L).

    Args:
        Y: 0/1 labels (N, L), dense or scipy.sparse.
        scores: held-out probabilities (N, L) (each row predicted by a model that did not train on it).
        fbr: a label whose held-out F1 at its best cut is below this falls back to "above every held-out score".
        fbr_positives: the fallback is for labels with fewer held-out positives than this (None: every label): a
            label with more keeps its cut even at a low F1, its held-out estimate being reliable enough.
        fallback: "above" (SCutfbr: above every held-out score, at least 0.5) or "global" (:func:`global_threshold`
            of the held-out scores); a label without held-out positives always gets "above".
        floor: the lowest threshold returned, in (0, 1).
        macro_weight: each cut maximises micro-F1 + ``macro_weight`` x macro-F1 of the labels cut so far: 1 is
            LibMultiLabel's rule; below 1 a rare label's cut weighs its own F1 less against the false positives it
            adds (fewer labels predicted: lower Hamming loss, usually higher micro-F1, lower macro-F1); 0: micro-F1 alone.

    Returns:
        (L,) thresholds in [floor, 1]; a sample gets label l when its probability is at or above threshold l.

    Example:
        >>> Y = np.array([[1, 0], [1, 0], [0, 0], [0, 1]])
        >>> s = np.array([[0.9, 0.2], [0.7, 0.3], [0.2, 0.4], [0.1, 0.01]])
        >>> cv_thresholds(Y, s, fbr=0.5).round(3).tolist()   # label 1: best held-out F1 0.4 < fbr: fallback
        [0.45, 0.5]
    """
    if not 0 <= fbr < 1:
        raise ValueError(f"fbr={fbr!r}: expected an F1 floor in [0, 1)")
    if not 0 < floor < 1:
        raise ValueError(f"floor={floor!r}: expected a probability strictly between 0 and 1")
    if not (math.isfinite(macro_weight) and macro_weight >= 0):
        raise ValueError(f"macro_weight={macro_weight!r}: expected a non-negative finite weight")
    if fbr_positives is not None and not fbr_positives >= 1:
        raise ValueError(f"fbr_positives={fbr_positives!r}: expected a positive count of held-out positives, or None")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback={fallback!r}: expected one of {', '.join(FALLBACKS)}")
    Yd = np.asarray(Y.toarray() if sp.issparse(Y) else Y).astype(bool)
    scores = np.asarray(scores, np.float64)
    if Yd.shape != scores.shape or Yd.ndim != 2:
        raise ValueError(f"scores: expected the labels' shape {Yd.shape}, got {scores.shape}")
    num_labels = Yd.shape[1]
    shared = global_threshold(Yd, scores) if fallback == "global" else math.nan
    thresholds = np.empty(num_labels)
    totals = np.zeros(3)  # true positives, false positives, false negatives of the labels cut so far
    order = np.argsort(-Yd.sum(0), kind="stable")
    for done, j in enumerate(order, start=1):
        y = Yd[:, j]
        rank = np.argsort(-scores[:, j], kind="stable")
        s = scores[rank, j]
        tp = np.r_[0, np.cumsum(y[rank])]  # predicting the first i samples (in score order) positive
        fp = np.r_[0, np.cumsum(~y[rank])]
        fn = y.sum() - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * tp / (2 * tp + fp + fn))
            micro = np.nan_to_num(2 * (tp + totals[0]) / (2 * (tp + totals[0]) + fp + fn + totals[1] + totals[2]))
        cuttable = np.r_[True, s[1:] != s[:-1], True]  # a cut between equal scores cannot be made
        best = int(np.argmax(np.where(cuttable, micro + macro_weight * f1 / done, -np.inf)))
        unreliable = fbr_positives is None or y.sum() < fbr_positives
        if not y.any() or (f1[best] < fbr and unreliable) or best == 0:
            above = max(0.5, float(np.nextafter(s[0], np.inf)))  # SCutfbr: above every held-out score
            thresholds[j] = shared if fallback == "global" and y.any() else above
            best = 0  # the running micro-F1 counts the label as not predicted on held-out rows
        elif best == len(s):
            thresholds[j] = float(s[-1])
        else:
            thresholds[j] = (s[best - 1] + s[best]) / 2
        totals += (tp[best], fp[best], fn[best])
    return np.clip(thresholds, floor, 1.0)
