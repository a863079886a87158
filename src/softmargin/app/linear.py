"""Per-label L2-regularised logistic regression on the soft-margin loss, solved by a truncated Newton method, and the
tf-idf features it is meant for: the fast "linear" path of ``softmargin train`` for bag-of-words data.

The objective, for weights ``W`` (F, L) and biases ``b`` (L,), is LIBLINEAR's / scikit-learn's per-label logistic
regression summed over the labels::

    sum_n sum_l pw_l^{y_nl} softplus(-s_nl z_nl) + ||W||^2 / (2 C),     z = X W + b,  s = 2 y - 1

(the bias is not penalised; ``pw`` is an optional positive-class weight per label). The loss and its gradient with
respect to ``z`` come from :func:`softmargin.numpy.multilabel_soft_margin_loss_and_grad` (the fused C kernel); the
solver is a Newton-CG loop (conjugate gradients on Hessian-vector products, backtracking line search), as LIBLINEAR's
TRON: a few tens of sparse products reach the optimum where first-order methods need hundreds.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

#: The per-label losses :func:`fit_logistic` solves.
LOSSES = ("logistic", "squared_hinge")


@dataclass
class LinearSolution:
    """The solved problem: weights (F, L), biases (L,), Newton iterations, Hessian-vector products."""

    W: np.ndarray
    b: np.ndarray
    iterations: int
    hessian_products: int


def tfidf_weights(X: Any) -> np.ndarray:
    """scikit-learn's smoothed inverse document frequency of each column of ``X`` (N, F), non-negative features:
    ``1 + log((1 + N) / (1 + df))``, df the number of rows where the feature is non-zero.

    Example:
        >>> tfidf_weights(np.array([[1.0, 0.0], [2.0, 0.0]])).round(3).tolist()
        [1.0, 2.099]
    """
    n = X.shape[0]
    if sp.issparse(X):  # a stored entry is not a non-zero: stored zeros (sparse arithmetic, BSR blocks) are no occurrence
        counted = sp.csc_matrix(X, copy=True)
        counted.sum_duplicates()
        counted.eliminate_zeros()
        df = np.diff(counted.indptr)
    else:
        df = np.count_nonzero(np.asarray(X), axis=0)
    return (1.0 + np.log((1.0 + n) / (1.0 + df))).astype(np.float64)


def tfidf_transform(X: Any, idf: np.ndarray) -> sp.csr_matrix:
    """Rows of ``X`` (N, F) times ``idf`` (F,), then scaled to unit L2 norm (an all-zero row stays zero): CSR float64."""
    Z = sp.csr_matrix(X, dtype=np.float64).multiply(idf[None, :]).tocsr()
    norms = np.sqrt(np.asarray(Z.multiply(Z).sum(1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ Z)


def fit_logistic(
    X: Any,
    Y: Any,
    C: float,
    *,
    pos_weight: np.ndarray | None = None,
    tol: float = 1e-3,
    max_iter: int = 50,
    max_cg: int = 50,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    threads: int | None = None,
    bias: bool = True,
    loss: str = "logistic",
) -> LinearSolution:
    """Per-label logistic regression with an L2 penalty ``||W||^2 / (2 C)``: the labels' problems are independent,
    and are solved side by side (one sparse product serves every label; each label has its own conjugate-gradient
    step sizes, line search and stopping test, so an easy label does not wait on a hard one, nor a hard one stop early).

    Args:
        X: features (N, F), dense or scipy.sparse.
        Y: 0/1 labels (N, L), dense or scipy.sparse.
        C: inverse regularisation strength (scikit-learn's ``C``), positive.
        pos_weight: (L,) weight of each label's positive examples, or None.
        tol: a label is solved when its gradient's norm is below ``tol`` times its norm at zero.
        max_iter: Newton iterations at most; ``max_cg``: conjugate-gradient steps per iteration at most.
        bias: fit an (unpenalised) bias per label; False: b = 0, as LIBLINEAR without -B.
        loss: "logistic" (``softplus(-s z)``), or "squared_hinge" (``max(0, 1 - s z)^2``: LIBLINEAR's L2-loss SVM,
            ``-s 2``, with its ``C``; solved with the generalised Hessian, as LIBLINEAR's TRON).
        start: (W, b) to start from (a warm start, e.g. the mean of models fitted on parts of the data); zeros if None.
        threads: label blocks solved at once in threads (the sparse products and NumPy release the GIL); None: the
            CPUs this process may use, at most 8.

    Returns:
        :class:`LinearSolution` with ``W`` (F, L) and ``b`` (L,).

    Example:
        >>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); Y = np.array([[0], [0], [1], [1]])
        >>> s = fit_logistic(X, Y, C=100.0)
        >>> bool((X @ s.W + s.b)[2:].min() > 0 > (X @ s.W + s.b)[:2].max())
        True
    """
    if not (isinstance(C, (int, float)) and C > 0):
        raise ValueError(f"C={C!r}: expected a positive inverse regularisation strength")
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: expected one of {LOSSES}")
    X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.ascontiguousarray(X, dtype=np.float64)
    Yd = np.ascontiguousarray(Y.toarray() if sp.issparse(Y) else Y, dtype=np.float64)
    if Yd.ndim != 2 or Yd.shape[0] != X.shape[0]:
        raise ValueError(f"Y: expected shape ({X.shape[0]}, L) to match X's {X.shape[0]} rows, got {Yd.shape}")
    L = Yd.shape[1]
    count = threads or min(
        8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    blocks = [b for b in np.array_split(np.arange(L), max(1, min(count, L))) if len(b)]
    pw = None if pos_weight is None else np.asarray(pos_weight, np.float64)
    XT = X.T.tocsr() if sp.issparse(X) else np.ascontiguousarray(X.T)

    def solve(columns: np.ndarray) -> LinearSolution:
        begin = None if start is None else (np.asarray(start[0])[:, columns], np.asarray(start[1])[columns])
        return _fit_block(
            X, XT, Yd[:, columns], C, None if pw is None else pw[columns], tol, max_iter, max_cg, begin, bias, loss
        )

    if len(blocks) == 1:
        return solve(blocks[0])
    with ThreadPoolExecutor(len(blocks)) as pool:
        parts = list(pool.map(solve, blocks))
    return LinearSolution(np.concatenate([p.W for p in parts], 1), np.concatenate([p.b for p in parts]),
                          max(p.iterations for p in parts), sum(p.hessian_products for p in parts))  # fmt: skip


def _fit_block(
    X: Any,
    XT: Any,
    Yd: np.ndarray,
    C: float,
    pos_weight: np.ndarray | None,
    tol: float,
    max_iter: int,
    max_cg: int,
    start: tuple[np.ndarray, np.ndarray] | None,
    bias: bool = True,
    loss: str = "logistic",
) -> LinearSolution:
    """:func:`fit_logistic` on one block of labels, in this thread; ``XT`` is ``X`` transposed (CSR if sparse)."""
    Yd = np.ascontiguousarray(Yd)
    F, L = X.shape[1], Yd.shape[1]
    sign = 2.0 * Yd - 1.0
    # each element's weight in the loss (None: all 1)
    cost = None if pos_weight is None else np.where(Yd > 0, np.asarray(pos_weight, np.float64)[None, :], 1.0)
    W, b = (
        (np.zeros((F, L)), np.zeros(L))
        if start is None
        else (np.array(start[0], np.float64), np.array(start[1], np.float64))
    )
    D = np.zeros_like(Yd)
    hinge = loss == "squared_hinge"

    def part(A: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``A[:, cols]``, without a copy when ``cols`` is every label (N x L arrays are the costly ones)."""
        return A if len(cols) == A.shape[1] else A[:, cols]

    def colsum(A: np.ndarray, B: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->j", A, B)

    def objective(W: np.ndarray, b: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The objective of labels ``cols`` (len(cols),) at their weights W (F, len(cols)) and biases b."""
        Z = np.asarray(X @ W) + b
        Z *= part(sign, cols)
        if hinge:
            np.subtract(1.0, Z, out=Z)
            np.maximum(Z, 0.0, out=Z)
        else:
            np.negative(Z, out=Z)
            np.logaddexp(0.0, Z, out=Z)
        if hinge:
            Z *= Z
        data = Z.sum(0) if cost is None else colsum(part(cost, cols), Z)
        return data + 0.5 * colsum(W, W) / C

    def gradient(cols: np.ndarray) -> None:
        """The gradient of labels ``cols`` into gW, gb at (W, b), and the Hessian's weights into D."""
        P = np.asarray(X @ part(W, cols)) + b[cols]
        if hinge:  # d/dz max(0, 1 - s z)^2 = -2 s max(0, 1 - s z); generalised Hessian 2 where the margin is short
            signs = part(sign, cols)
            P *= signs
            np.subtract(1.0, P, out=P)
            np.maximum(P, 0.0, out=P)
            H = np.greater(P, 0.0).astype(np.float64)
            H *= 2.0
            P *= signs
            P *= -2.0
        else:
            P *= 0.5
            np.tanh(P, out=P)
            P += 1.0
            P *= 0.5  # the sigmoid, without overflow warnings
            H = P * (1.0 - P)
            P -= part(Yd, cols)
        if cost is not None:
            H *= part(cost, cols)
            P *= part(cost, cols)
        if len(cols) == L:
            D[...] = H
        else:
            D[:, cols] = H
        gW[:, cols] = np.asarray(XT @ P) + part(W, cols) / C
        gb[cols] = P.sum(0) if bias else 0.0

    def hessian_product(V: np.ndarray, v: np.ndarray, Dc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        U = np.asarray(X @ V) + v
        U *= Dc
        return np.asarray(XT @ U) + V / C, U.sum(0) if bias else np.zeros(U.shape[1])

    everything = np.arange(L)
    values = objective(W, b, everything)
    gW, gb = np.zeros_like(W), np.zeros_like(b)
    gradient(everything)
    if start is None:
        first = np.sqrt(colsum(gW, gW) + gb * gb)
    else:  # the stopping test is relative to the gradient at zero, wherever we start
        G0 = -2.0 * sign if hinge else 0.5 - Yd
        if cost is not None:
            G0 *= cost
        g0W = np.asarray(XT @ G0)
        first = np.sqrt(colsum(g0W, g0W) + (G0.sum(0) ** 2 if bias else 0.0))
    active = first > 0
    iterations = products = 0
    for iterations in range(1, max_iter + 1):
        norm = np.sqrt(colsum(gW, gW) + gb * gb)
        active &= norm > tol * first
        if not active.any():
            iterations -= 1
            break
        # conjugate gradients on H d = -g, per label, to an accuracy that tightens as the gradient shrinks; the
        # labels still being solved are compacted, so a product costs in proportion to them alone
        cols = np.flatnonzero(active)
        dW, db = np.zeros((F, len(cols))), np.zeros(len(cols))
        where = np.arange(len(cols))  # the position in dW / db of each label in cols
        rW, rb = -gW[:, cols], -gb[cols]
        pW, pb = rW.copy(), rb.copy()
        rr = colsum(rW, rW) + rb * rb
        target = (np.minimum(0.5, np.sqrt(norm / np.where(first > 0, first, 1.0))) * norm)[cols]
        Dc = part(D, cols)
        for _ in range(max_cg):
            hW, hb = hessian_product(pW, pb, Dc)
            products += 1
            curvature = colsum(pW, hW) + pb * hb
            ok = curvature > 0
            alpha = np.where(ok, rr / np.where(ok, curvature, 1.0), 0.0)
            dW[:, where] += alpha * pW
            db[where] += alpha * pb
            rW -= alpha * hW
            rb -= alpha * hb
            rr_new = colsum(rW, rW) + rb * rb
            keep = ok & (np.sqrt(rr_new) > target)
            if not keep.any():
                break
            beta = rr_new / np.where(rr > 0, rr, 1.0)
            pW = rW + beta * pW
            pb = rb + beta * pb
            rr = rr_new
            if not keep.all():
                where, rW, rb, pW, pb, rr, target, Dc = (where[keep], rW[:, keep], rb[keep], pW[:, keep], pb[keep],
                                                         rr[keep], target[keep], Dc[:, keep])  # fmt: skip
        slope = colsum(gW[:, cols], dW) + gb[cols] * db
        step = np.ones(len(cols))
        pending = np.ones(len(cols), bool)
        new_values = values[cols].copy()
        for _ in range(30):  # backtracking (Armijo) line search, per label
            at = np.flatnonzero(pending)
            trial = objective(W[:, cols[at]] + step[at] * dW[:, at], b[cols[at]] + step[at] * db[at], cols[at])
            new_values[at] = trial
            pending[at] = trial > values[cols[at]] + 1e-4 * step[at] * slope[at]
            if not pending.any():
                break
            step[pending] *= 0.5
        step[pending] = 0.0  # a label that cannot progress keeps its weights and is done
        active[cols[pending]] = False
        moved = ~pending
        W[:, cols[moved]] += step[moved] * dW[:, moved]
        b[cols[moved]] += step[moved] * db[moved]
        values[cols[moved]] = new_values[moved]
        if moved.any():
            gradient(cols[moved])
    return LinearSolution(W, b, iterations, products)
