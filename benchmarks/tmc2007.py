"""tmc2007-500, the MULAN set that issue 17's tuning never saw: `softmargin train`'s default against scikit-learn's
one-vs-rest linear models on the same tf-idf features, one seed, on the standard train/test split.

    python benchmarks/tmc2007.py [--mulan ../shared/data/mulan]

Prints a Markdown table (docs/quality.md quotes it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, hamming_loss
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC

from softmargin.app import data as D
from softmargin.app import train as T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mulan", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "mulan")
    args = parser.parse_args()
    folder = args.mulan / "tmc2007"
    train, test = D.load(str(folder / "tmc2007-500-train.arff")), D.load(str(folder / "tmc2007-500-test.arff"))
    dense = lambda Y: np.asarray(Y.toarray() if sp.issparse(Y) else Y)
    Y_train, Y_test = dense(train.Y), dense(test.Y)
    rows = []
    started = time.perf_counter()
    model = T.fit(train, T.TrainConfig(), progress=False)
    metrics, _ = T.evaluate(model, test)
    rows.append(("softmargin train (default)", metrics["hamming_loss"], metrics["micro_f1"], metrics["macro_f1"],
                 time.perf_counter() - started))  # fmt: skip
    tfidf = TfidfTransformer().fit(sp.csr_matrix(train.X))
    A, B = tfidf.transform(sp.csr_matrix(train.X)), tfidf.transform(sp.csr_matrix(test.X))
    peers = {
        "OneVsRest(LogisticRegression(C=1)), tf-idf": LogisticRegression(C=1, max_iter=2000),
        "OneVsRest(LogisticRegression(C=10)), tf-idf": LogisticRegression(C=10, max_iter=2000),
        "OneVsRest(LinearSVC(C=1)), tf-idf": LinearSVC(C=1),
    }
    for name, estimator in peers.items():
        started = time.perf_counter()
        predicted = OneVsRestClassifier(estimator).fit(A, Y_train).predict(B)
        rows.append((name, hamming_loss(Y_test, predicted), f1_score(Y_test, predicted, average="micro"),
                     f1_score(Y_test, predicted, average="macro", zero_division=0), time.perf_counter() - started))  # fmt: skip
    print(f"tmc2007-500: {len(train)} training, {len(test)} test samples, {Y_train.shape[1]} labels\n")
    print("| model | Hamming loss | micro-F1 | macro-F1 | time |\n|---|---|---|---|---|")
    for name, hamming, micro, macro, seconds in rows:
        print(f"| {name} | {hamming:.4f} | {micro:.3f} | {macro:.3f} | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
