"""Quality of `softmargin train` against scikit-learn on the standard MULAN splits (yeast, scene), and what each step of
the bag-of-words default bought (medical, enron, bibtex, delicious).

    python benchmarks/quality.py [--mulan ../shared/data/mulan] [--seeds 0 1 2] [--out benchmarks/results/quality.md]
    python benchmarks/quality.py --datasets --text medical enron bibtex delicious --steps linear tuned-raw logistic svm fbr-positives global rare macro-0.3 calibrated-1 default

- linear model (per-label logistic regression, L-BFGS, C=1, decisions at 0.5) against
  OneVsRestClassifier(LogisticRegression()) on standardised features: must agree within 0.01;
- the default configuration of `softmargin train` against MLPClassifier(hidden_layer_sizes=(256,)) on standardised
  features: must be better on Hamming loss, micro-F1 and LRAP.
Both baselines are measured in the same run; the table goes to --out (docs/quality.md quotes it).

The steps on the bag-of-words sets (--text), each a `softmargin train` configuration, one seed:
- old: the previous default (ensemble of 5 MLPs, AdamW, early stopping on 15 %, decisions at 0.5);
- linear: logistic regression by truncated Newton on tf-idf features (`--linear-loss logistic`: C by held-out
  P@1 + micro-F1 + macro-F1 over AUTO_C_GRID on small data), decisions at 0.5;
- tuned-raw: + per-label thresholds cut on the 3-fold held-out predictions (micro-F1 + macro-F1), without the
  SCutfbr fallback or the floor;
- logistic: + the fallback (fbr 0.1) and the floor (0.05) for every label: the previous linear default;
- svm: the squared hinge (LIBLINEAR's L2-loss SVM) instead of the logistic loss, C chosen by held-out
  P@1 + P@3 + P@5 over SVM_C_GRID and its neighbour pairs;
- fbr-positives: + the fallback only for labels with fewer than 10 held-out positives (fbr_positives);
- global: + the fallback to the global threshold (the one threshold, shared by every label, that maximises the
  pooled held-out micro-F1) instead of above every held-out score (fallback="global");
- rare: + the positive weight min(10, n_neg / n_pos) for labels with fewer than 10 training positives
  (rare_weight, rare_positives): the default before the calibrated counts;
- macro-0.3: that with macro_weight 0.3 (each cut maximises micro-F1 + 0.3 x macro-F1): never the default;
- calibrated-1: + each cut counting the held-out labels' calibrated probabilities (cut_counts="calibrated": a Platt
  scaling per label shrunk toward a shared one, `softmargin.app.decisions.calibrate`) instead of the labels, with
  LibMultiLabel's macro weight 1 and no fbr fallback;
- default: + macro weight 2: today's `softmargin train`.
The table (micro/macro-F1, P@1/3/5, Hamming loss, training time, the load average when it ran) goes to --steps-out;
with several --step-seeds (the seed of the folds), a row per seed and their mean.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np

from softmargin.app import data as D
from softmargin.app import train as T
from softmargin.metrics import evaluate

KEYS = ("hamming_loss", "micro_f1", "lrap", "macro_f1", "subset_accuracy")


def load(name: str, mulan: Path) -> tuple[D.Dataset, D.Dataset]:
    if (mulan / name).exists():
        return D.load_arff(mulan / name / f"{name}-train.arff"), D.load_arff(mulan / name / f"{name}-test.arff")
    if name in D.BUILTIN:
        return D.load_builtin(name)
    raise FileNotFoundError(f"{mulan / name} not found")


def sklearn_scores(estimator, train: D.Dataset, test: D.Dataset) -> dict[str, float]:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_pipeline(StandardScaler(), estimator).fit(train.X, train.Y)
        return evaluate(test.Y, model.predict_proba(test.X))[0]


def ours(train: D.Dataset, test: D.Dataset, config: T.TrainConfig) -> dict[str, float]:
    return T.evaluate(T.fit(train, config, progress=False), test)[0]


#: the settings that reproduce the defaults before the calibrated counts, before the rare-label weight as well, and
#: before the global fallback as well
OBSERVED: dict[str, object] = dict(cut_counts="observed")
BEFORE_RARE: dict[str, object] = dict(rare_weight=1.0, **OBSERVED)
BEFORE_GLOBAL: dict[str, object] = dict(rare_weight=1.0, fallback="above", **OBSERVED)
STEPS = {
    "old": ("previous default: 5 MLPs (AdamW), decisions at 0.5",
            dict(model="mlp", optimizer="adamw", standardize="auto", thresholds="fixed")),
    "linear": ("logistic regression, truncated Newton on tf-idf, decisions at 0.5",
               dict(linear_loss="logistic", thresholds="fixed", **BEFORE_RARE)),
    "tuned-raw": ("+ per-label cut on held-out predictions (3 folds, 2 on delicious; no fallback, no floor)",
                  dict(linear_loss="logistic", thresholds="tuned", fbr=0.0, min_threshold=1e-9, **BEFORE_GLOBAL)),
    "logistic": ("+ SCutfbr fallback (0.1) and floor (0.05): the previous linear default",
                 dict(linear_loss="logistic", fbr_positives=None, **BEFORE_GLOBAL)),
    "svm": ("squared hinge (L2-loss SVM) instead of logistic", dict(fbr_positives=None, **BEFORE_GLOBAL)),
    "fbr-positives": ("+ fallback only for labels with < 10 held-out positives", dict(BEFORE_GLOBAL)),
    "global": ("+ fallback to the global threshold instead of above every held-out score", dict(BEFORE_RARE)),
    "rare": ("+ positive weight min(10, n_neg / n_pos) for labels with < 10 training positives", dict(OBSERVED)),
    "macro-0.3": ("the previous row with --macro-weight 0.3 (fewer rare labels predicted)", dict(macro_weight=0.3, **OBSERVED)),
    "calibrated-1": ("+ cuts on calibrated counts (per-label Platt scaling shrunk toward a shared one; no fbr fallback)",
                     dict(macro_weight=1.0)),
    "default": ("+ macro weight 2 in the cut: the default", dict()),
}  # fmt: skip
STEP_KEYS = ("micro_f1", "macro_f1", "P@1", "P@3", "P@5", "hamming_loss", "macro_f1_train_labels")


def steps(args: argparse.Namespace) -> None:
    lines = ["| data | step | micro-F1 | macro-F1 | P@1 | P@3 | P@5 | Hamming | macro-F1 (LibMultiLabel's: training labels) | train s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    print("\n".join(lines), flush=True)
    def cells(metrics: dict[str, float]) -> str:
        return " | ".join(
            "n/a" if k not in metrics else f"{metrics[k]:.4f}" if k == "hamming_loss" else f"{metrics[k]:.3f}"
            for k in STEP_KEYS
        )

    several = len(args.step_seeds) > 1
    for name in args.text:
        train, test = load(name, args.mulan)
        for step in args.steps:
            label, settings = STEPS[step]
            runs, times = [], []
            for seed in args.step_seeds:
                load_average = os.getloadavg()[0]
                started = time.perf_counter()
                model = T.fit(train, T.TrainConfig(**{"seed": seed, **settings}), progress=False)  # type: ignore[arg-type]
                times.append(time.perf_counter() - started)
                runs.append(T.evaluate(model, test)[0])
                seeded = f"{label} (seed {seed})" if several else label
                lines.append(f"| {name} | {seeded} | {cells(runs[-1])} | {times[-1]:.1f} | {load_average:.1f} |")
                print(lines[-1], flush=True)
            if several:
                mean = {k: float(np.mean([run[k] for run in runs])) for k in STEP_KEYS if all(k in run for run in runs)}
                lines.append(f"| {name} | {label} (mean of seeds {', '.join(map(str, args.step_seeds))}) | {cells(mean)} "
                             f"| {np.mean(times):.1f} | |")  # fmt: skip
                print(lines[-1], flush=True)
    args.steps_out.parent.mkdir(parents=True, exist_ok=True)
    args.steps_out.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {args.steps_out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mulan", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "mulan")
    parser.add_argument("--datasets", nargs="*", default=["yeast", "scene"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality.md"))
    parser.add_argument("--text", nargs="*", default=[], help="bag-of-words sets for the steps table (medical enron bibtex delicious)")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--step-seeds", nargs="+", type=int, default=[0], help="the steps' seeds (the folds' seed); several: their mean too")
    parser.add_argument("--steps-out", type=Path, default=Path("benchmarks/results/quality-steps.md"))
    args = parser.parse_args()
    if args.text:
        steps(args)
    if not args.datasets:
        return
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neural_network import MLPClassifier

    lines = ["| data | model | Hamming loss | micro-F1 | LRAP | macro-F1 | subset acc. | time |", "|---|---|---|---|---|---|---|---|"]

    def row(name: str, model: str, runs: list[dict[str, float]], seconds: float) -> None:
        cells = []
        for key in KEYS:
            values = np.array([r[key] for r in runs])
            cells.append(f"{values.mean():.4f}" + (f" ± {values.std():.4f}" if len(values) > 1 else ""))
        lines.append(f"| {name} | {model} | " + " | ".join(cells) + f" | {seconds:.1f} s |")
        print(lines[-1], flush=True)

    print("\n".join(lines))
    for name in args.datasets:
        train, test = load(name, args.mulan)
        started = time.perf_counter()
        row(name, "scikit-learn OneVsRest(LogisticRegression())", [sklearn_scores(OneVsRestClassifier(LogisticRegression(max_iter=2000)), train, test)], time.perf_counter() - started)
        linear = T.TrainConfig(model="linear", optimizer="lbfgs", C=1.0, valid_fraction=0, ensemble=1, at_least_one="no")
        started = time.perf_counter()
        row(name, "softmargin linear (L-BFGS, C=1)", [ours(train, test, linear)], time.perf_counter() - started)
        started = time.perf_counter()
        mlp = [sklearn_scores(MLPClassifier(hidden_layer_sizes=(256,), random_state=s), train, test) for s in args.seeds]
        row(name, f"scikit-learn MLPClassifier((256,)), {len(args.seeds)} seeds", mlp, (time.perf_counter() - started) / len(args.seeds))
        started = time.perf_counter()
        runs = [ours(train, test, T.TrainConfig(seed=s)) for s in args.seeds]
        row(name, f"softmargin train (default), {len(args.seeds)} seeds", runs, (time.perf_counter() - started) / len(args.seeds))
    header = (
        "# Quality against scikit-learn (standard MULAN splits)\n\n"
        "Produced by `python benchmarks/quality.py` (mean ± std over seeds where several). Features standardised for\n"
        "the scikit-learn models; decisions at 0.5 except where the default's at-least-one rule applies.\n\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n".join(lines) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
