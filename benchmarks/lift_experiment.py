"""LIFT label-specific features (Zhang & Wu, TPAMI 2015) against the macro-F1 / Hamming-loss frontier (issue 17).

    python benchmarks/lift_experiment.py [--mulan ../shared/data/mulan] [--data enron] [--seeds 0] [--r 0.1]

For each label j, k-means (scikit-learn ``KMeans``, ``k_j = ceil(r x min(|P_j|, |N_j|))``, at least 1 per non-empty
side, seeded, ``n_init`` 3) runs separately on the label's positive and negative training rows (the default's tf-idf
features: idf on the training rows, rows L2-normalised); the label's features are a row's Euclidean distances to
those ``2 k_j`` centres, standardised on the rows the k-means saw. Label j's classifier is softmargin's own per-label
model (``softmargin.app.linear.fit_logistic``, squared hinge, the default's rare-label positive weights), one C for
every label chosen as the default chooses it: over a grid and the means of neighbouring C's models, by the held-out
P@1 + P@3 + P@5. Variants:

- ``lift``: the LIFT features alone;
- ``tfidf+lift``: the tf-idf row (norm 1) with the label's standardised distances appended, scaled by
  ``beta / sqrt(2 k_j)`` (so the appended block's norm is about ``beta``);
- the default SVM's logits averaged with the LIFT variant's (each standardised by the mean and standard deviation of
  its held-out logits over every cell, the average mapped back to the SVM's scale) at LIFT weight 1/4 and 1/2.

Cross-fitting is the default's: the same folds (``np.array_split`` of ``default_rng(seed).permutation``, 3 folds);
within each fold the k-means, the standardisation and the classifier see only the fold's training rows, so every
training row's held-out score comes from a model (k-means included) that did not see it. The kept model is refitted
on all training rows (k-means included) and scores the test split.

On each variant's held-out and test scores, as ``benchmarks/frontier.py`` measures the default: the default rule
(``cv_thresholds`` on calibrated counts at macro weight 2, the default, and 1), the held-out rule's curve
(``frontier.lagrangian`` on the calibrated held-out probabilities over ``frontier.LAMBDAS``) and its macro-F1
interpolated at Hamming loss 0.0472 (issue 17's enron target), and P@1/3/5, micro-F1. The default model is trained
in the same run (``frontier.held_out_of``) and measured the same way. Prints markdown tables and writes them to --out.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_HAMMING, TARGET_MACRO, TARGET_MICRO, TARGET_P1 = 0.0472, 0.261, 0.574, 0.793
LIFT_C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # the default's SVM_C_GRID and 0.01 below it
AVERAGE_WEIGHTS = (0.25, 0.5)


def find_mulan(given: Path | None) -> Path | None:
    here = Path(__file__).resolve().parents[1]
    candidates = [given] if given is not None else [Path("/work/shared/data/mulan"), here.parent / "shared" / "data" / "mulan"]  # fmt: skip
    return next((c for c in candidates if c is not None and c.is_dir()), None)


def lift_block(Xfit: Any, yfit: np.ndarray, Xs: list[Any], r: float, seed: int) -> list[np.ndarray]:
    """The LIFT distances of each matrix in ``Xs`` to the k-means centres of ``Xfit``'s positive and negative rows
    (labels ``yfit``), standardised on ``Xfit``'s rows."""
    from sklearn.cluster import KMeans

    positive = yfit > 0
    k = max(1, math.ceil(r * min(int(positive.sum()), int((~positive).sum()))))
    centres = []
    for side in (positive, ~positive):
        rows = Xfit[np.flatnonzero(side)]
        if rows.shape[0] == 0:
            continue
        clusters = min(k, rows.shape[0])
        km = KMeans(n_clusters=clusters, n_init=3, random_state=seed).fit(rows)
        centres.append(km.cluster_centers_)
    centre = np.vstack(centres)

    def distances(X: Any) -> np.ndarray:
        squared = np.asarray(X.multiply(X).sum(1)).ravel() if sp.issparse(X) else (X**2).sum(1)
        cross = np.asarray(X @ centre.T)
        return np.sqrt(np.maximum(squared[:, None] - 2 * cross + (centre**2).sum(1)[None, :], 0.0))

    fit = distances(Xfit)
    mean, std = fit.mean(0), fit.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    return [(distances(X) - mean) / std for X in Xs]


def features(variant: str, Xs: Any, Z: np.ndarray, beta: float) -> Any:
    if variant == "lift":
        return Z
    return sp.hstack([Xs, sp.csr_matrix(Z * (beta / math.sqrt(Z.shape[1])))], format="csr")


def precision_at(Y: np.ndarray, scores: np.ndarray, k: int) -> float:
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.take_along_axis(Y, top, axis=1).sum(1).mean() / k)


def run_lift(train: Any, test: Any, config: Any, variants: list[tuple[str, float]], r: float, seed: int,
             log: Any) -> dict[str, tuple[np.ndarray, np.ndarray, str, float]]:  # fmt: skip
    """Per variant: (held-out logits (N, L), test logits (M, L), chosen C, seconds)."""
    from softmargin.app import train as T
    from softmargin.app.linear import fit_logistic

    Yd = np.asarray(train.Y.toarray() if sp.issparse(train.Y) else train.Y, np.float64)
    N, L = Yd.shape
    shift, scale = T._scaler(train.X, "tfidf")
    Xs, Xt = T._scaled(train.X, shift, scale, True), T._scaled(test.X, shift, scale, True)
    positive = T._rare_weights(Yd, config)
    folds = np.array_split(np.random.default_rng(config.seed).permutation(N), config.folds or T.FOLDS)
    rests = [np.setdiff1d(np.arange(N), fold) for fold in folds]
    started = time.perf_counter()
    # the k-means of every fold (on its training rows only) and of all training rows, per label
    fold_blocks = [[lift_block(Xs[rest], Yd[rest, j], [Xs[rest], Xs[fold]], r, seed) for j in range(L)]
                   for fold, rest in zip(folds, rests)]  # fmt: skip
    full_blocks = [lift_block(Xs, Yd[:, j], [Xs, Xt], r, seed) for j in range(L)]
    kmeans_s = time.perf_counter() - started
    widths = [full_blocks[j][0].shape[1] for j in range(L)]
    log(f"  k-means: {kmeans_s:.1f} s (4 x {L} labels x 2 sides; LIFT features per label {min(widths)} to {max(widths)}, "
        f"mean {np.mean(widths):.1f})")  # fmt: skip
    out = {}
    for variant, beta in variants:
        name = variant if variant == "lift" else f"tfidf+lift (beta {beta:g})"
        started = time.perf_counter()

        held = {C: np.zeros((N, L)) for C in LIFT_C_GRID}
        for f, (fold, rest) in enumerate(zip(folds, rests)):
            for j in range(L):
                Ztr, Zho = fold_blocks[f][j]
                Ftr, Fho = features(variant, Xs[rest], Ztr, beta), features(variant, Xs[fold], Zho, beta)
                pw = None if positive is None else positive[j : j + 1]
                for C in LIFT_C_GRID:
                    s = fit_logistic(Ftr, Yd[rest, j : j + 1], C, pos_weight=pw, threads=1, loss="squared_hinge")
                    held[C][fold, j] = (np.asarray(Fho @ s.W) + s.b).ravel()
        candidates = [(C,) for C in LIFT_C_GRID] + list(zip(LIFT_C_GRID, LIFT_C_GRID[1:]))
        best, chosen = -math.inf, candidates[0]
        for candidate in candidates:
            logits = np.mean([held[C] for C in candidate], 0)
            score = sum(precision_at(Yd, logits, k) for k in (1, 3, 5))
            if score > best:
                best, chosen = score, candidate
        held_out = np.mean([held[C] for C in chosen], 0)
        test_logits = np.zeros((Xt.shape[0], L))
        for j in range(L):
            Ztr, Zte = full_blocks[j]
            Ftr, Fte = features(variant, Xs, Ztr, beta), features(variant, Xt, Zte, beta)
            pw = None if positive is None else positive[j : j + 1]
            for C in chosen:
                s = fit_logistic(Ftr, Yd[:, j : j + 1], C, pos_weight=pw, threads=1, loss="squared_hinge")
                test_logits[:, j] += (np.asarray(Fte @ s.W) + s.b).ravel() / len(chosen)
        seconds = time.perf_counter() - started
        log(f"  {name}: C={'+'.join(f'{C:g}' for C in chosen)} (held-out P@1+3+5 {best:.3f}), {seconds:.1f} s "
            f"(+ the k-means)")  # fmt: skip
        out[name] = (held_out, test_logits, "+".join(f"{C:g}" for C in chosen), seconds + kmeans_s)
    return out


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return np.log(p) - np.log1p(-p)


def evaluate(name: str, Yh: np.ndarray, Ph: np.ndarray, Yt: np.ndarray, Pt: np.ndarray, model: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """The summary row of one score set and its held-out-rule curve."""
    import frontier as FR

    from softmargin.app import train as T
    from softmargin.app.decisions import calibrate, cv_thresholds

    config = model.config
    row: dict[str, Any] = {"variant": name, **{f"p{k}": precision_at(Yt, Pt, k) for k in (1, 3, 5)}}
    for weight in (2.0, 1.0):
        thresholds = cv_thresholds(Yh, Ph, floor=config.min_threshold, macro_weight=weight, counts=config.cut_counts,
                                   prior=config.calibration_prior)  # fmt: skip
        row[f"w{weight:g}"] = FR.scores(Yt, T.decide(Pt, thresholds, model.at_least_one))
    Q = calibrate(Yh, Ph, prior=config.calibration_prior)
    curve = [{"lam": lam, **FR.scores(Yt, T.decide(Pt, FR.lagrangian(Ph, Q, lam), model.at_least_one))}
             for lam in FR.LAMBDAS]  # fmt: skip
    points = sorted((c["hamming"], c["macro"], c["micro"]) for c in curve)
    h, ma, mi = (np.array(v) for v in zip(*points))
    row["at_macro"] = float(np.interp(TARGET_HAMMING, h, ma))
    row["at_micro"] = float(np.interp(TARGET_HAMMING, h, mi))
    inside = [c for c in curve if c["hamming"] <= TARGET_HAMMING and c["micro"] >= TARGET_MICRO]
    row["best_inside"] = max(inside, key=lambda c: c["macro"]) if inside else None
    meets = [c for c in curve + [row["w2"], row["w1"]]
             if c["hamming"] <= TARGET_HAMMING and c["macro"] >= TARGET_MACRO and c["micro"] >= TARGET_MICRO]  # fmt: skip
    row["meets"] = bool(meets) and row["p1"] >= TARGET_P1
    return row, curve


def measure(data: str, mulan: Path, seed: int, r: float, betas: list[float], log: Any) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:  # fmt: skip
    import frontier as FR

    from softmargin.app import data as D
    from softmargin.app import train as T

    train = D.load_arff(mulan / data / f"{data}-train.arff")
    test = D.load_arff(mulan / data / f"{data}-test.arff")
    started = time.perf_counter()
    model, Yh, Ph = FR.held_out_of(train, T.TrainConfig(seed=seed))
    log(f"{data}, seed {seed}: default trained in {time.perf_counter() - started:.1f} s (C={model.config.C:g})")
    Yt, Pt = FR.dense(test.Y), model.predict_proba(test.X)
    Zh, Zt = logit(Ph), model.decision_function(test.X)
    rows, curves = [], {}
    row, curves["default SVM"] = evaluate("default SVM (tf-idf)", Yh, Ph, Yt, Pt, model)
    rows.append({**row, "C": f"{model.config.C:g}", "seconds": time.perf_counter() - started})
    variants = [("lift", 0.0)] + [("tfidf+lift", b) for b in betas]
    lifted = run_lift(train, test, model.config, variants, r, seed, log)
    svm_mean, svm_std = Zh.mean(), Zh.std()
    for name, (held, tested, C, seconds) in lifted.items():
        row, curves[name] = evaluate(name, Yh, sigmoid(held), Yt, sigmoid(tested), model)
        rows.append({**row, "C": C, "seconds": seconds})
        mean, std = held.mean(), held.std()
        for weight in AVERAGE_WEIGHTS:
            average = f"default SVM + {name} at {weight:g}"
            mix = [((1 - weight) * (z - svm_mean) / svm_std + weight * (y - mean) / std) * svm_std + svm_mean
                   for z, y in ((Zh, held), (Zt, tested))]  # fmt: skip
            row, curves[average] = evaluate(average, Yh, sigmoid(mix[0]), Yt, sigmoid(mix[1]), model)
            rows.append({**row, "C": "", "seconds": math.nan})
    for row in rows:
        row["seed"] = seed
    return rows, curves


def summary(rows: list[dict[str, Any]]) -> str:
    lines = ["| seed | scores | C | fit s | P@1 | P@3 | P@5 | default rule (w 2): micro / macro / Hamming | w 1: micro / "
             "macro / Hamming | held-out rule at Hamming 0.0472: macro-F1 (micro-F1) | best curve point with Hamming "
             "<= 0.0472, micro >= 0.574: lam, macro-F1 | all targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        w2, w1, best = row["w2"], row["w1"], row["best_inside"]
        seconds = "" if math.isnan(row["seconds"]) else f"{row['seconds']:.0f}"
        lines.append(
            f"| {row['seed']} | {row['variant']} | {row['C']} | {seconds} | {row['p1']:.3f} | {row['p3']:.3f} | "
            f"{row['p5']:.3f} | {w2['micro']:.3f} / {w2['macro']:.3f} / {w2['hamming']:.4f} | {w1['micro']:.3f} / "
            f"{w1['macro']:.3f} / {w1['hamming']:.4f} | **{row['at_macro']:.3f}** ({row['at_micro']:.3f}) | "
            + (f"{best['lam']:g}, {best['macro']:.3f} | " if best else "none | ")
            + ("yes" if row["meets"] else "no") + " |"
        )  # fmt: skip
    return "\n".join(lines)


def means(rows: list[dict[str, Any]]) -> str:
    """Each score set's mean over the seeds, and its held-out-rule macro-F1 at 0.0472 against the default's."""
    seeds = sorted({row["seed"] for row in rows})
    default = {row["seed"]: row["at_macro"] for row in rows if row["variant"].startswith("default SVM (")}
    lines = [f"| scores (mean over seeds {', '.join(map(str, seeds))}) | P@1 (lowest) | P@3 | P@5 | default rule (w 2): "
             "micro / macro / Hamming | held-out rule at 0.0472: macro-F1 | minus the default's (per seed) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in dict.fromkeys(row["variant"] for row in rows):
        mine = [row for row in rows if row["variant"] == name]
        mean = {key: float(np.mean([row[key] for row in mine])) for key in ("p1", "p3", "p5", "at_macro")}
        w2 = {key: float(np.mean([row["w2"][key] for row in mine])) for key in ("micro", "macro", "hamming")}
        deltas = ", ".join(f"{row['at_macro'] - default[row['seed']]:+.3f}" for row in mine)
        lines.append(f"| {name} | {mean['p1']:.3f} ({min(row['p1'] for row in mine):.3f}) | {mean['p3']:.3f} | "
                     f"{mean['p5']:.3f} | {w2['micro']:.3f} / {w2['macro']:.3f} / {w2['hamming']:.4f} | "
                     f"**{mean['at_macro']:.3f}** | {deltas} |")  # fmt: skip
    return "\n".join(lines)


def curve_table(seed: int, curves: dict[str, list[dict[str, Any]]]) -> str:
    import frontier as FR

    names = list(curves)
    lines = [f"| seed {seed}: lam | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, lam in enumerate(FR.LAMBDAS):
        cells = [f"{c['macro']:.3f} / {c['hamming']:.4f} / {c['micro']:.3f}" for c in (curves[n][i] for n in names)]
        lines.append(f"| {lam:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mulan", type=Path, default=None, help="MULAN folder (default: /work/shared/data/mulan or "
                        "../shared/data/mulan beside the project)")  # fmt: skip
    parser.add_argument("--data", default="enron")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="fold seeds (the k-means' seed too)")
    parser.add_argument("--r", type=float, default=0.1, help="LIFT's ratio: k_j = ceil(r x min(|P_j|, |N_j|))")
    parser.add_argument("--betas", type=float, nargs="*", default=[1.0], help="the appended LIFT block's norm")
    parser.add_argument("--out", type=Path, default=None, help="write the tables here (markdown)")
    args = parser.parse_args()
    mulan = find_mulan(args.mulan)
    if mulan is None or not (mulan / args.data / f"{args.data}-train.arff").exists():
        print(f"skipped: no MULAN data ({args.mulan or '/work/shared/data/mulan, ../shared/data/mulan'}; "
              f"{args.data}-train.arff)")  # fmt: skip
        return

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows, tables = [], []
    for seed in args.seeds:
        seeded, curves = measure(args.data, mulan, seed, args.r, args.betas, log)
        rows += seeded
        tables.append(curve_table(seed, curves))
    command = f"python benchmarks/lift_experiment.py --data {args.data} --seeds {' '.join(map(str, args.seeds))} " \
              f"--r {args.r:g} --betas {' '.join(f'{b:g}' for b in args.betas)}"  # fmt: skip
    text = (f"`{command}`\n\n## {args.data}: mean over seeds\n\n{means(rows)}\n\n## {args.data}: per seed\n\n"
            f"{summary(rows)}\n\n## Held-out rule's curve on the test split (macro-F1 / Hamming loss / micro-F1 per "
            "lam)\n\n" + "\n\n".join(tables) + "\n")  # fmt: skip
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
