"""Peers on the MULAN splits: LibMultiLabel (linear 1-vs-rest, thresholding, cost-sensitive), omikuji and napkinXC.

Runs in an environment of its own (softmargin never depends on these packages, and this script never imports
softmargin)::

    python3.11 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install libmultilabel==0.10.0 omikuji napkinxc scikit-learn
    /work/peers-venv/bin/python benchmarks/peers.py [--mulan ../shared/data/mulan] [--datasets medical enron ...]

Features as the peers' documentation recommends: tf-idf (scikit-learn's TfidfTransformer, fitted on the training
split) with rows scaled to unit L2 norm. Decisions: LibMultiLabel's own (a decision value above 0, after its
thresholds where it has them); omikuji and napkinXC: a score of at least 0.5 (their models rank; their F1 is shown for
completeness). omikuji cannot read a training row without a label or without a feature: those rows are left out
of its training set. P@k: the fraction of the top k labels that are true; F1 and Hamming loss by scikit-learn, over
every label of the data set. Other macro-F1 definitions, for comparison with figures quoted elsewhere:

- ``macro_f1_train_labels``: LibMultiLabel's own "Macro-F1" as its pipeline reports it. Its formula is scikit-learn's
  (``libmultilabel/linear/metrics.py``: the mean of 2 tp / (2 tp + fp + fn) over its labels, 0/0 counting 0), but its
  label set is the labels that occur in the training split (``linear/preprocessor.py``: ``include_test_labels=False``
  by default; a test-only label is dropped): on medical 38 of the 45 labels.
- ``another_macro_f1``: LibMultiLabel's "Another-Macro-F1", the F1 of the macro-averaged precision and recall (a label
  without predictions, or without positives, counting 0 in that mean), over the same training labels.
- ``macro_f1_present``: the mean per-label F1 over the labels with at least one positive in the test split.

Training time
is wall-clock on this machine (only the training call). Results go to ``benchmarks/results/peers.csv`` and
``benchmarks/results/peers.md``.

libmultilabel 0.10.0's ``train_thresholding`` calls ``np.sum(y, 2)`` on a 2-D sparse matrix, which fails with
current SciPy; the intent is the positives per label, ``y.sum(axis=0)``: this script patches that one call.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import scipy.sparse as sp

DATASETS = ("medical", "enron", "bibtex", "delicious")
METHODS = (
    "libmultilabel 1-vs-rest",
    "libmultilabel thresholding",
    "libmultilabel cost-sensitive",
    "omikuji",
    "napkinxc plt",
)
COLUMNS = (
    "data", "method", "micro_f1", "macro_f1", "P@1", "P@3", "P@5", "hamming_loss", "train_s",
    "macro_f1_train_labels", "another_macro_f1", "macro_f1_present",
)  # fmt: skip


def read_arff(path: Path, labels: set[str]) -> tuple[sp.csr_matrix, sp.csr_matrix, list[str]]:
    """(features, labels, label names) of a MULAN ARFF file (dense or sparse rows); ``labels``: the label names."""
    names: list[str] = []
    rows: list[dict[int, float]] = []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("%"):
                continue
            if not in_data:
                low = line.lower()
                if low.startswith("@attribute"):
                    m = re.match(r"@attribute\s+('(?:[^']|\\')*'|\"[^\"]*\"|\S+)\s+", line, re.IGNORECASE)
                    assert m, line
                    names.append(m.group(1).strip("'\""))
                elif low.startswith("@data"):
                    in_data = True
                continue
            if line.startswith("{"):
                row = {}
                for item in line[1:-1].split(","):
                    if item.strip():
                        i, v = item.split()
                        row[int(i)] = float(v)
            else:
                row = {i: float(v) for i, v in enumerate(line.split(",")) if float(v) != 0}
            rows.append(row)
    is_label = np.array([n in labels for n in names])
    feature_index = -np.ones(len(names), int)
    label_index = -np.ones(len(names), int)
    feature_index[~is_label] = np.arange((~is_label).sum())
    label_index[is_label] = np.arange(is_label.sum())
    fr, fc, fv, lr, lc = [], [], [], [], []
    for r, row in enumerate(rows):
        for i, v in row.items():
            if is_label[i]:
                if v:
                    lr.append(r)
                    lc.append(label_index[i])
            else:
                fr.append(r)
                fc.append(feature_index[i])
                fv.append(v)
    X = sp.csr_matrix((fv, (fr, fc)), shape=(len(rows), int((~is_label).sum())))
    Y = sp.csr_matrix((np.ones(len(lr)), (lr, lc)), shape=(len(rows), int(is_label.sum())))
    return X, Y, [n for n, b in zip(names, is_label) if b]


def load(mulan: Path, name: str) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """tf-idf + L2 features and labels of the train and test splits."""
    from sklearn.feature_extraction.text import TfidfTransformer

    folder = mulan / name
    xml = next(folder.glob("*.xml"))
    labels = {e.attrib["name"] for e in ET.parse(xml).getroot().iter() if e.tag.endswith("label")}
    stem = xml.stem
    Xtr, Ytr, _ = read_arff(folder / f"{stem}-train.arff", labels)
    Xte, Yte, _ = read_arff(folder / f"{stem}-test.arff", labels)
    tfidf = TfidfTransformer().fit(Xtr)
    return tfidf.transform(Xtr).tocsr(), Ytr, tfidf.transform(Xte).tocsr(), Yte


def scores_of(Y: sp.csr_matrix, pred: np.ndarray, scores: np.ndarray, Ytr: sp.csr_matrix) -> dict[str, float]:
    """micro / macro F1 (and the other macro-F1 definitions: see the module's docstring; ``Ytr`` the training
    labels) and Hamming loss of 0/1 ``pred``; P@1/3/5 of ``scores`` (N, L)."""
    from sklearn.metrics import f1_score, hamming_loss

    truth = Y.toarray().astype(int)
    out = {
        "micro_f1": f1_score(truth, pred, average="micro", zero_division=0),
        "macro_f1": f1_score(truth, pred, average="macro", zero_division=0),
        "hamming_loss": hamming_loss(truth, pred),
    }
    tp = (truth * pred).sum(0)
    positives, predicted = truth.sum(0), pred.sum(0)
    seen = np.asarray(Ytr.sum(0)).ravel() > 0  # LibMultiLabel's label set: the labels of the training split
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * tp / (positives + predicted))
        macro_precision = np.nan_to_num(tp / predicted)[seen].mean()
        macro_recall = np.nan_to_num(tp / positives)[seen].mean()
    out["macro_f1_train_labels"] = float(f1[seen].mean())
    total = macro_precision + macro_recall
    out["another_macro_f1"] = float(2 * macro_precision * macro_recall / total) if total else 0.0
    present = positives > 0
    out["macro_f1_present"] = float(f1[present].mean()) if present.any() else 0.0
    top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    hits = np.take_along_axis(truth, top, 1)
    for k in (1, 3, 5):
        out[f"P@{k}"] = float(hits[:, :k].sum(1).mean() / k)
    return out


def libmultilabel(method: str, Xtr, Ytr, Xte) -> tuple[np.ndarray, np.ndarray, float]:
    import libmultilabel.linear.linear as lml

    class _PatchedNumpy:  # np.sum(y, 2) on a 2-D sparse matrix: the positives per label (libmultilabel 0.10.0 bug)
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def sum(a, axis=None, *args, **kwargs):
            if axis == 2 and sp.issparse(a):
                return np.asarray(a.sum(axis=0)).ravel()
            return np.sum(a, axis, *args, **kwargs)

    lml.np = _PatchedNumpy()
    train = {
        "1-vs-rest": lml.train_1vsrest,
        "thresholding": lml.train_thresholding,
        "cost-sensitive": lml.train_cost_sensitive,
    }[method]
    started = time.perf_counter()
    model = train(Ytr, Xtr, options="", verbose=False)
    seconds = time.perf_counter() - started
    values = np.asarray(lml.predict_values(model, Xte))
    return (values > 0).astype(int), values, seconds


def to_lists(Y: sp.csr_matrix) -> list[list[int]]:
    Y = Y.tocsr()
    return [[int(j) for j in Y.indices[Y.indptr[i] : Y.indptr[i + 1]]] for i in range(Y.shape[0])]


def dense_from_pairs(pairs, num_labels: int) -> np.ndarray:
    scores = np.zeros((len(pairs), num_labels))
    for i, row in enumerate(pairs):
        for label, score in row:
            scores[i, int(label)] = score
    return scores


def omikuji_run(Xtr, Ytr, Xte) -> tuple[np.ndarray, np.ndarray, float]:
    import omikuji

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.txt")
        labels = to_lists(Ytr)
        keep = [i for i in range(Xtr.shape[0]) if labels[i] and Xtr[i].nnz]  # omikuji cannot read empty rows
        with open(path, "w") as f:
            f.write(f"{len(keep)} {Xtr.shape[1]} {Ytr.shape[1]}\n")
            for i in keep:
                row = Xtr[i]
                feats = " ".join(f"{j}:{v:.6g}" for j, v in zip(row.indices, row.data))
                f.write(",".join(map(str, labels[i])) + " " + feats + "\n")
        started = time.perf_counter()
        model = omikuji.Model.train_on_data(path, omikuji.Model.default_hyper_param())
        seconds = time.perf_counter() - started
    pairs = [
        model.predict(list(zip(Xte[i].indices.tolist(), Xte[i].data.tolist())), top_k=Ytr.shape[1])
        for i in range(Xte.shape[0])
    ]
    scores = dense_from_pairs(pairs, Ytr.shape[1])
    return (scores >= 0.5).astype(int), scores, seconds


def napkinxc_run(Xtr, Ytr, Xte) -> tuple[np.ndarray, np.ndarray, float]:
    from napkinxc.models import PLT

    with tempfile.TemporaryDirectory() as tmp:
        model = PLT(os.path.join(tmp, "plt"))
        started = time.perf_counter()
        model.fit(Xtr.astype(np.float32), to_lists(Ytr))
        seconds = time.perf_counter() - started
        pairs = model.predict_proba(Xte.astype(np.float32), top_k=Ytr.shape[1])
    scores = dense_from_pairs(pairs, Ytr.shape[1])
    return (scores >= 0.5).astype(int), scores, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mulan", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "mulan")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "peers.csv")
    parser.add_argument("--merge", action="store_true", help="keep --out's rows for the (data, method) pairs not rerun")
    args = parser.parse_args()
    np.random.seed(0)  # LibMultiLabel's thresholding draws its folds from NumPy's global generator
    rows = []
    load_average = os.getloadavg()[0]
    for name in args.datasets:
        Xtr, Ytr, Xte, Yte = load(args.mulan, name)
        for method in args.methods:
            if method.startswith("libmultilabel"):
                pred, scores, seconds = libmultilabel(method.split(" ", 1)[1], Xtr, Ytr, Xte)
            elif method == "omikuji":
                pred, scores, seconds = omikuji_run(Xtr, Ytr, Xte)
            else:
                pred, scores, seconds = napkinxc_run(Xtr, Ytr, Xte)
            row = {"data": name, "method": method, **scores_of(Yte, pred, scores, Ytr), "train_s": seconds}
            rows.append(row)
            print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    if args.merge and args.out.exists():
        with open(args.out, newline="") as f:
            old = [
                {k: (v if k in ("data", "method") else float(v) if v else float("nan")) for k, v in r.items()}
                for r in csv.DictReader(f)
            ]
        fresh = {(r["data"], r["method"]): r for r in rows}
        merged = [fresh.pop((r["data"], r["method"]), r) for r in old]
        rows = merged + list(fresh.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    lines = [f"Peers on tf-idf + L2 features (load average {load_average:.2f} at the start; `benchmarks/peers.py`)", "",
             "| data | method | micro-F1 | macro-F1 | P@1 | P@3 | P@5 | Hamming | train s | LibMultiLabel's Macro-F1 (training labels) | Another-Macro-F1 | macro-F1 (labels with test positives) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        extra = " | ".join("n/a" if np.isnan(r.get(k, np.nan)) else f"{r[k]:.3f}" for k in ("macro_f1_train_labels", "another_macro_f1", "macro_f1_present"))
        lines.append(f"| {r['data']} | {r['method']} | {r['micro_f1']:.3f} | {r['macro_f1']:.3f} | {r['P@1']:.3f} | "
                     f"{r['P@3']:.3f} | {r['P@5']:.3f} | {r['hamming_loss']:.4f} | {r['train_s']:.1f} | {extra} |")  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
