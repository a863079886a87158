"""How far per-label thresholds can trade macro-F1 against Hamming loss on the default model's scores (issue 17).

    python benchmarks/frontier.py [--mulan ../shared/data/mulan] [--datasets medical enron bibtex delicious] [--seed 0]

`softmargin train` is run with its defaults (tf-idf, the cross-fitted squared-hinge SVM, tuned thresholds); its
held-out predictions (the rows' out-of-fold probabilities that the tuned thresholds are cut on) are recorded on the
way. On those scores every decision rule below is measured on the test split (F1 and Hamming loss as scikit-learn
computes them):

- the default (each label cut to maximise micro-F1 + 2 x macro-F1 of the labels cut so far, on calibrated counts),
  the same rule at other macro weights, and decisions at 0.5;
- a Lagrangian family that spans the trade-off: each label's threshold maximises its expected F1 minus
  lam x its expected errors / N under the calibrated held-out probabilities (`decisions.calibrate`), floor 0.05;
  small lam approaches per-label F1, large lam the fewest errors;
- the same family with the *test* labels choosing each threshold (an oracle: in-sample on the rows it is measured on,
  so optimistic), and its honest version: thresholds chosen on the labels of a random half of the test rows and
  measured on the other half (20 splits, both ways), beside the held-out rule measured on the same halves.

Writes a table (--out, markdown) and a plot of macro-F1 against Hamming loss per set (--plot), with the peers of
`benchmarks/results/peers.csv` and the issue's targets (macro-F1 at least the best peer's, Hamming loss at most the
previous default's + 0.002) as the shaded corner.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import f1_score

from softmargin.app import data as D
from softmargin.app import train as T
from softmargin.app.decisions import calibrate, cv_thresholds

#: issue 17's targets: (macro-F1 at least, Hamming loss at most); delicious' Hamming loss has none
TARGETS = {"medical": (0.409, 0.0157), "enron": (0.261, 0.0472), "bibtex": (0.399, 0.0152), "delicious": (0.175, None)}
LAMBDAS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 20.0)
MACRO_WEIGHTS = (0.3, 0.5, 1.0, 1.5, 2.0, 3.0)
SPLITS = 20


def dense(Y: Any) -> np.ndarray:
    return np.asarray(Y.toarray() if sp.issparse(Y) else Y, np.float64)


def scores(Y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {"micro": float(f1_score(Y, pred, average="micro", zero_division=0)),
            "macro": float(f1_score(Y, pred, average="macro", zero_division=0)),
            "hamming": float(np.mean(Y != pred))}  # fmt: skip


def lagrangian(P: np.ndarray, Q: np.ndarray, lam: float, floor: float = 0.05) -> np.ndarray:
    """Per label j, the threshold on ``P[:, j]`` that maximises F1 - lam x errors / N, the counts being the expected
    ones under probabilities ``Q`` (or the labels themselves, for Q = Y); a label whose best is below predicting
    nothing (F1 0, the positives' errors) gets +inf. Only cuts between distinct scores count (ties go together)."""
    N = len(P)
    order = np.argsort(-P, axis=0, kind="stable")
    Ps, Qs = np.take_along_axis(P, order, 0), np.take_along_axis(Q, order, 0)
    tp, fp = np.cumsum(Qs, 0), np.cumsum(1 - Qs, 0)
    fn = Qs.sum(0) - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12)
    objective = f1 - lam * (fp + fn) / N
    objective[:-1][Ps[:-1] == Ps[1:]] = -np.inf  # a cut inside a run of equal scores is not a threshold
    best = objective.argmax(0)
    columns = np.arange(P.shape[1])
    thresholds = np.maximum(Ps[best, columns], floor)
    nothing = objective[best, columns] <= -lam * Qs.sum(0) / N
    return np.where(nothing, np.inf, thresholds)


def held_out_of(train: D.Dataset, config: T.TrainConfig) -> tuple[T.TrainedModel, np.ndarray, np.ndarray]:
    """The default model and the (labels, probabilities) of the held-out rows its tuned thresholds were cut on."""
    seen: list[tuple[Any, np.ndarray]] = []
    original = T._cut

    def recording(config: T.TrainConfig, Y: Any, probabilities: np.ndarray) -> np.ndarray:
        seen.append((Y, probabilities))
        return original(config, Y, probabilities)

    T._cut = recording  # type: ignore[assignment]
    try:
        model = T.fit(train, config, progress=False)
    finally:
        T._cut = original  # type: ignore[assignment]
    Y, probabilities = seen[-1]  # the last cut is the one the model keeps
    return model, dense(Y), np.asarray(probabilities, np.float64)


def measure(name: str, mulan: Path, seed: int) -> list[dict[str, Any]]:
    train, test = D.load_arff(mulan / name / f"{name}-train.arff"), D.load_arff(mulan / name / f"{name}-test.arff")
    started = time.perf_counter()
    model, Yh, Ph = held_out_of(train, T.TrainConfig(seed=seed))
    Yt, Pt = dense(test.Y), model.predict_proba(test.X)
    print(f"{name}: trained in {time.perf_counter() - started:.1f} s", flush=True)
    rows: list[dict[str, Any]] = []

    def add(rule: str, parameter: Any, thresholds: np.ndarray, Y: np.ndarray = Yt, P: np.ndarray = Pt) -> None:
        rows.append({"data": name, "rule": rule, "parameter": parameter,
                     **scores(Y, T.decide(P, thresholds, model.at_least_one))})  # fmt: skip

    add("default", "", model.thresholds)
    add("fixed 0.5", "", np.full(Pt.shape[1], 0.5))
    config = model.config
    for weight in MACRO_WEIGHTS:
        add("default rule, macro weight", weight,
            cv_thresholds(Yh, Ph, floor=config.min_threshold, macro_weight=weight, counts=config.cut_counts,
                          prior=config.calibration_prior))  # fmt: skip
    Q = calibrate(Yh, Ph, prior=config.calibration_prior)
    held_rules = {lam: lagrangian(Ph, Q, lam) for lam in LAMBDAS}
    for lam, thresholds in held_rules.items():
        add("lagrangian (held-out, calibrated)", lam, thresholds)
    for lam in LAMBDAS:
        add("oracle: lagrangian on the test labels (in-sample)", lam, lagrangian(Pt, Yt, lam))
    rng = np.random.default_rng(seed)
    halves = []
    for _ in range(SPLITS):
        permutation = rng.permutation(len(Yt))
        a, b = permutation[: len(Yt) // 2], permutation[len(Yt) // 2 :]
        halves += [(a, b), (b, a)]
    for lam in LAMBDAS:
        for rule, choose in (("oracle on one test half, measured on the other", lambda a: lagrangian(Pt[a], Yt[a], lam)),
                             ("lagrangian (held-out), measured on the same halves", lambda a: held_rules[lam])):  # fmt: skip
            runs = [scores(Yt[b], T.decide(Pt[b], choose(a), model.at_least_one)) for a, b in halves]
            rows.append({"data": name, "rule": rule, "parameter": lam,
                         **{k: float(np.mean([run[k] for run in runs])) for k in runs[0]}})  # fmt: skip
    return rows


def peers(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| data | rule | parameter | micro-F1 | macro-F1 | Hamming loss |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['data']} | {row['rule']} | {row['parameter']} | {row['micro']:.3f} | {row['macro']:.3f} "
                     f"| {row['hamming']:.4f} |")  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], peer_rows: list[dict[str, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(row["data"] for row in rows))
    columns = min(2, len(names))
    height = -(-len(names) // columns)
    figure, axes = plt.subplots(height, columns, figsize=(6.4 * columns, 4.8 * height), squeeze=False)
    curves = (("lagrangian (held-out, calibrated)", "C0", "-", "held-out rule (lam sweep)"),
              ("oracle: lagrangian on the test labels (in-sample)", "C3", "--", "test-label oracle (in-sample)"),
              ("oracle on one test half, measured on the other", "C3", ":", "oracle on half, other half"),
              ("lagrangian (held-out), measured on the same halves", "C0", ":", "held-out rule, same halves"),
              ("default rule, macro weight", "C2", "-", "default rule, macro weight 0.3 to 3"))  # fmt: skip
    for axis, name in zip(axes.flat, names):
        mine = [row for row in rows if row["data"] == name]
        for rule, color, style, label in curves:
            points = sorted((row["hamming"], row["macro"]) for row in mine if row["rule"] == rule)
            axis.plot(*zip(*points), style, color=color, marker=".", label=label)
        for rule, marker, label in (("default", "*", "softmargin default"), ("fixed 0.5", "s", "decisions at 0.5")):
            row = next(row for row in mine if row["rule"] == rule)
            axis.plot(
                row["hamming"], row["macro"], marker, color="k", markersize=11 if marker == "*" else 7, label=label
            )
        for peer in (peer for peer in peer_rows if peer["data"] == name):
            axis.plot(float(peer["hamming_loss"]), float(peer["macro_f1"]), "x", color="C7")
            axis.annotate(peer["method"].replace("libmultilabel ", "LibMultiLabel "), (float(peer["hamming_loss"]), float(peer["macro_f1"])),
                          fontsize=7, color="C7", ha="right", va="bottom")  # fmt: skip
        macro, hamming = TARGETS.get(name, (None, None))
        if macro is not None:  # the corner both targets allow, drawn to the plot's edges
            (left, right), (bottom, top) = axis.get_xlim(), axis.get_ylim()
            axis.fill_between([left, hamming if hamming is not None else right], macro, top, color="C1", alpha=0.15,
                              label="issue 17's targets")  # fmt: skip
            axis.set(xlim=(left, right), ylim=(bottom, top))
        axis.set(title=name, xlabel="Hamming loss (test)", ylabel="macro-F1 (test)")
        axis.grid(alpha=0.3)
    for axis in axes.flat[len(names) :]:
        axis.set_visible(False)
    axes[0][0].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mulan", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "mulan")
    parser.add_argument("--datasets", nargs="+", default=["medical", "enron", "bibtex", "delicious"])
    parser.add_argument("--seed", type=int, default=0, help="the folds' seed (and the test halves')")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/frontier.md"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/frontier.png"))
    parser.add_argument("--peers", type=Path, default=Path("benchmarks/results/peers.csv"))
    args = parser.parse_args()
    rows = [row for name in args.datasets for row in measure(name, args.mulan, args.seed)]
    text = table(rows)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"`python benchmarks/frontier.py --datasets {' '.join(args.datasets)} --seed {args.seed}`\n\n{text}\n"
    )
    plot(rows, peers(args.peers), args.plot)
    print(f"\nwritten to {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
