"""The ``softmargin train``, ``evaluate`` and ``predict`` commands: argument handling, tables and run folders.

Every check that can fail runs before any work: the data is read and matched to the model by name, the output
folder is made (so a read-only ``--out`` fails at once, not after training). A run folder is assembled under a
temporary name and renamed into place whole; only rank 0 of a ``torchrun`` job writes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import scipy.sparse as sp

from .. import metrics as M
from . import data as D
from . import train as T
from .compare import format_table
from .files import atomic_open, check_out


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def metrics_table(metrics: dict[str, float], title: str, spread: dict[str, float] | None = None) -> str:
    """The metrics in a fixed order, with the better direction; ``spread``: a ± column (cross-validation)."""
    rows = []
    for name in M.TABLE_ORDER:
        if name in metrics:
            value = f"{metrics[name]:.4f}" + (f" ± {spread[name]:.4f}" if spread else "")
            rows.append([name, value, "lower" if name in M.LOWER_IS_BETTER else "higher"])
    return f"{title}\n" + format_table(["metric", "value", "better"], rows)


def per_label_table(per_label: list[dict[str, Any]], names: list[str], limit: int = 20) -> str:
    """The labels by support in the evaluated data, most frequent first (the first ``limit``)."""
    order = sorted(range(len(per_label)), key=lambda i: -per_label[i]["support"])
    rows = [
        [names[i], r["support"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", f"{r['threshold']:.3f}"]
        for i in order
        for r in [per_label[i]]
    ]
    more = f"\n... and {len(rows) - limit} more labels (per_label.csv has them all)" if len(rows) > limit else ""
    return format_table(["label", "support", "precision", "recall", "F1", "threshold"], rows[:limit]) + more


def as_options(message: str) -> str:
    """A TrainConfig error in the command's words: ``calibration_prior=-1.0`` becomes ``--calibration-prior -1.0``."""
    import dataclasses
    import re

    fields = "|".join(sorted((f.name for f in dataclasses.fields(T.TrainConfig)), key=len, reverse=True))
    return re.sub(rf"\b({fields})=", lambda m: f"--{m.group(1).replace('_', '-')} ", message)


#: Options that only some runs use, with the TrainConfig field behind each and when (on the resolved config) it is
#: used: given where it would be ignored, it is an error (never silently ignored)
_USED_WHEN: list[tuple[str, str, Any, str]] = [
    ("--threshold", "threshold", lambda c: c.thresholds == "fixed", "it is the threshold of --thresholds fixed"),
    ("--k", "k", lambda c: c.thresholds == "top-k", "it is the labels per sample of --thresholds top-k"),
    *[(f"--{name.replace('_', '-')}", name, lambda c: c.thresholds == "tuned", "it sets --thresholds tuned's cuts")
      for name in ("cut_counts", "calibration_prior", "macro_weight", "min_threshold", "fbr", "fbr_positives", "fallback")],
    ("--calibration-prior", "calibration_prior", lambda c: c.cut_counts == "calibrated", "it belongs to --cut-counts calibrated"),
    ("--dropout", "dropout", lambda c: c.model == "mlp", "it is the MLP's"),
    *[(f"--{name.replace('_', '-')}", name, lambda c: c.optimizer != "newton",
       "it belongs to --optimizer adamw / lbfgs (the Newton solver runs to convergence on every row, one model)")
      for name in ("epochs", "ensemble")],
    ("--valid-fraction", "valid_fraction", lambda c: c.optimizer == "adamw" or (c.optimizer == "lbfgs" and c.thresholds == "tuned"),
     "validation rows serve adamw's early stopping and the tuned thresholds (lbfgs runs to convergence on every row "
     "otherwise; the Newton solver cross-fits)"),
    *[(f"--{name.replace('_', '-')}", name, lambda c: c.optimizer == "adamw",
       "it belongs to --optimizer adamw (lbfgs takes full-batch steps sized by its line search, with no early stopping, "
       "weight decay or fused head; the Newton solver runs to convergence on every row, one model)")
      for name in ("batch_size", "lr", "weight_decay", "patience", "head")],
    *[(f"--{name.replace('_', '-')}", name, lambda c: c.optimizer == "newton", "it belongs to the Newton solver (--optimizer newton)")
      for name in ("folds", "linear_loss")],
    *[(f"--{name.replace('_', '-')}", name, lambda c: c.optimizer == "newton" and not c.pos_weight,
       "it weights the Newton solver's rare labels, and --pos-weight replaces it") for name in ("rare_weight", "rare_positives")],
    ("--rare-positives", "rare_positives", lambda c: c.rare_weight > 1, "it says which labels --rare-weight weights, and 1 weights none"),
    ("--patience", "patience", lambda c: c.valid_fraction > 0, "early stopping watches the validation rows, and --valid-fraction 0 holds none out"),
    ("--pos-weight-max", "pos_weight_max", lambda c: c.pos_weight, "it caps --pos-weight"),
    ("--at-least-one", "at_least_one", lambda c: c.thresholds in ("fixed", "tuned"),
     "the rank rules top-k and rcut give every sample labels anyway"),
]  # fmt: skip


def ignored_options(config: T.TrainConfig, resolved: T.TrainConfig) -> None:
    """Refuse an option given a value other than its default where the run (``resolved``: its ``auto`` settings
    decided) would not use it: ``--threshold 0.2`` with tuned thresholds, ``--epochs`` with the Newton solver, ..."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(T.TrainConfig)}
    for option, name, used, why in _USED_WHEN:
        value = getattr(config, name)
        if value != defaults[name] and not used(resolved):
            raise ValueError(
                f"{option} {value}: this run would ignore it ({why}; this run: --model {resolved.model}, --optimizer "
                f"{resolved.optimizer}, --thresholds {resolved.thresholds}, --cut-counts {resolved.cut_counts}); drop it, or "
                "set the options it belongs to"
            )


def _config(args: argparse.Namespace) -> T.TrainConfig:
    if args.model == "linear" and args.hidden is not None:
        raise ValueError("--hidden sets the MLP's layers: it has no meaning with --model linear; drop one of them")
    model = "mlp" if args.model == "auto" and args.hidden is not None else args.model  # --hidden means the MLP
    if args.fbr_positives < 0:
        raise ValueError(f"--fbr-positives {args.fbr_positives}: expected a count of held-out positives, or 0 for every label")
    try:
        return _settings(args, model).check()
    except ValueError as exc:  # the command's 0 is the config's None (every label)
        raise ValueError(as_options(str(exc)).replace("--fbr-positives None", "--fbr-positives 0")) from None


def _settings(args: argparse.Namespace, model: str) -> T.TrainConfig:
    return T.TrainConfig(
        model=model, hidden=tuple(args.hidden or (512,)), dropout=args.dropout, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, C=args.C,
        valid_fraction=args.valid_fraction, patience=args.patience, standardize=args.standardize,
        class_weight=args.class_weight, pos_weight=args.pos_weight, pos_weight_max=args.pos_weight_max,
        label_smoothing=args.label_smoothing, gamma_pos=args.gamma_pos, gamma_neg=args.gamma_neg, clip=args.clip,
        thresholds=args.thresholds, threshold=args.threshold, k=args.k, at_least_one=args.at_least_one,
        ensemble=args.ensemble, head=args.head, seed=args.seed, threads=args.threads, device=args.device,
        folds=args.folds, fbr=args.fbr, min_threshold=args.min_threshold, macro_weight=args.macro_weight,
        linear_loss=args.linear_loss, fbr_positives=args.fbr_positives or None, fallback=args.fallback,
        rare_weight=args.rare_weight, rare_positives=args.rare_positives, cut_counts=args.cut_counts,
        calibration_prior=args.calibration_prior,
    )  # fmt: skip


def _hashes(*specs: str | None) -> dict[str, str]:
    """SHA-256 of each data file named (built-in names have none)."""
    return {spec: T.file_sha256(Path(spec)) for spec in specs if spec and Path(spec).is_file()}


def holdout(data: D.Dataset, fraction: float, seed: int) -> tuple[D.Dataset, D.Dataset]:
    """(train, test): a seeded random ``fraction`` of the samples held out for testing."""
    order = np.random.default_rng(seed).permutation(len(data))
    num_test = int(round(len(data) * fraction))
    if num_test < 1 or num_test >= len(data):
        raise ValueError(f"--test-fraction {fraction} of {len(data)} samples leaves {num_test} for testing: expected at least one on each side")
    return data.subset(np.sort(order[num_test:])), data.subset(np.sort(order[:num_test]))


def _row_keys(X: Any) -> list[bytes]:
    """Each row's features as a 128-bit digest of their bytes (float64; a sparse row as its sorted column indices and
    values, stored zeros dropped): equal for rows with the same features, dense or sparse, float32 or float64. Dense
    rows are hashed a block at a time (a float64 copy of the whole matrix would double a large data set's memory)."""
    digest = lambda raw: hashlib.blake2b(raw, digest_size=16).digest()
    if not sp.issparse(X):
        step = max(1, (1 << 20) // max(1, X.shape[1]))  # about 8 MiB of float64 at a time
        keys: list[bytes] = []
        for start in range(0, X.shape[0], step):
            block = np.asarray(X[start:start + step], np.float64) + 0.0  # + 0.0: -0.0 becomes 0.0, the same value
            keys.extend(digest(row.tobytes()) for row in block)
        return keys
    rows = sp.csr_matrix(X, dtype=np.float64, copy=True)
    rows.sum_duplicates()
    rows.eliminate_zeros()
    indices, data, starts = rows.indices.astype(np.int64), rows.data, rows.indptr
    return [digest(indices[a:b].tobytes() + data[a:b].tobytes()) for a, b in zip(starts[:-1], starts[1:])]


def seen_in_training(train: D.Dataset, test: D.Dataset) -> int:
    """How many rows of ``test`` are also rows of ``train``: the same features and, where both have labels, the same
    labels (duplicate samples in the data). The model was trained on such a row, so metrics on it are not held out.
    (Features alone coincide often without any duplication: 871 of delicious' 3,185 test rows have a training row's
    500 binary features, 63 its labels too.)"""
    labelled = train.Y is not None and test.Y is not None
    known = set(_sample_keys(train, labelled))
    return sum(key in known for key in _sample_keys(test, labelled))


def _sample_keys(data: D.Dataset, labelled: bool) -> list[bytes]:
    """Each row's key for :func:`seen_in_training`: its features' digest, followed by its labels' where ``labelled``."""
    features = _row_keys(data.X)
    return [f + y for f, y in zip(features, _row_keys(sp.csr_matrix(data.Y)))] if labelled else features


def _warn_seen(count: int, tested: int, where: str) -> None:
    if count:
        warnings.warn(f"{where}: {count} of the {tested} test rows ({100 * count / tested:.1f} %) are also training rows "
                      "(the same features and labels: duplicate samples in the data); the model was trained on them, so "
                      "the metrics on them are not held out", UserWarning, stacklevel=3)  # fmt: skip


def train_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    config = _config(args)
    if not 0 <= args.test_fraction < 1:
        raise ValueError(f"--test-fraction {args.test_fraction}: expected a fraction in [0, 1)")
    if args.cv is not None and (args.cv < 2 or args.test):
        raise ValueError(f"--cv {args.cv}: expected K >= 2 folds, and no --test (cross-validation tests on each fold)")
    if args.cv is not None and args.test_fraction != 0.2:
        raise ValueError(f"--test-fraction {args.test_fraction} with --cv {args.cv}: cross-validation tests on each fold; drop one")
    if args.test and args.test_fraction != 0.2:
        raise ValueError(f"--test-fraction {args.test_fraction} with --test {args.test}: the test data is given, nothing is "
                         "held out of --data; drop one")  # fmt: skip
    if args.data in D.BUILTIN and args.test_fraction != 0.2 and args.cv is None:
        raise ValueError(f"--test-fraction {args.test_fraction} with --data {args.data}: a built-in data set comes with "
                         "its standard test split, nothing is held out; drop --test-fraction")  # fmt: skip
    _check_label_options(args, args.data, args.test)
    train, test = D.load_train_test(args.data, args.test, args.labels, args.xml)
    if train.Y is None or train.Y.shape[1] < 2:
        raise ValueError(f"--data {args.data}: {0 if train.Y is None else train.Y.shape[1]} label column(s): multi-label "
                         "training needs at least 2 (for one binary label, use a binary classifier)")  # fmt: skip
    if test is not None and len(test) == 0:
        raise ValueError(f"--test {args.test}: no rows to test on")
    if test is not None and test.Y is None:  # LIBSVM text in which no row has a label
        raise ValueError(f"--test {args.test}: no row has a label (LIBSVM text: the ids before the features): nothing to test against")
    try:
        ignored_options(config, config.resolve(train))
        if config.thresholds == "top-k":
            T.check_k(config.k, train.Y.shape[1])
    except ValueError as exc:
        raise ValueError(as_options(str(exc))) from None
    dist = T.Distributed.from_env(T._device(config))
    say = _say if dist.writer else (lambda s: None)
    say(f"train: {train.describe()}")
    evaluated_on = "test"
    if test is None and args.cv is None:
        if args.test_fraction > 0:
            train, test = holdout(train, args.test_fraction, args.seed)
            evaluated_on = f"held-out {args.test_fraction:.0%} (--test-fraction, seed {args.seed})"
            say(f"no --test: {len(test)} samples held out for testing (--test-fraction {args.test_fraction})")
        else:
            evaluated_on = "train"
            say("--test-fraction 0 and no --test: the metrics below are on the training data")
    if test is not None:
        say(f"test:  {test.describe()}")
        if dist.writer:
            split = (f"--test {args.test}" if args.test else f"--data {args.data}'s test split" if args.data in D.BUILTIN
                     else f"--test-fraction {args.test_fraction} (seed {args.seed})")  # fmt: skip
            _warn_seen(seen_in_training(train, test), len(test), split)
    folder = T.RunFolder(Path(args.out), Path(str(args.data)).stem) if dist.writer else None
    try:
        log = say if not args.quiet else (lambda s: None)
        extra = dict(data=args.data, test=args.test, labels=args.labels, xml=args.xml, test_fraction=args.test_fraction,
                     cv=args.cv, evaluated_on=evaluated_on, data_sha256=_hashes(args.data, args.test), command=sys.argv)  # fmt: skip
        if args.cv is not None:
            summary = _cross_validate(train, config, args.cv, args.seed, not args.quiet, log, folder)
            if folder is not None:
                T.write_json(folder.path / "config.json", T.config_dict(config, **extra))
                T.write_json(folder.path / "cv_metrics.json", summary, strict=True)
                run = folder.commit()
                print(metrics_table(summary["mean"], f"{args.cv}-fold cross-validation on {train.name} ({len(train)} samples), mean ± std:", summary["std"]))
                print(f"\nrun folder: {run}  ({time.perf_counter() - started:.1f} s)")
            return 0
        model = T.fit(train, config, progress=not args.quiet, log=log)
        evaluated = test if test is not None else train
        metrics, per_label = T.evaluate(model, evaluated, config.device)
        if folder is None:
            return 0
        T.write_json(folder.path / "config.json", T.config_dict(model.config, **extra))  # "auto" settings decided
        T.save_model(model, folder.path)
        T.write_report(folder.path, metrics, per_label, model.label_names, T.train_frequency(model))
        T.write_csv(folder.path / "history.csv", ["member", "epoch", "train_loss", "valid_loss"],
                    [[h.get("member", 0), h["epoch"], h["train_loss"], h.get("valid_loss", "")] for h in model.history])  # fmt: skip
        T.plot_history(model.history, folder.path / "loss.png")
        run = folder.commit()
    except BaseException:
        if folder is not None:
            folder.discard()
        raise
    print(metrics_table(metrics, f"Test metrics ({evaluated_on} data, {len(evaluated)} samples):"))
    print()
    print(per_label_table(per_label, model.label_names))
    print(f"\nrun folder: {run}  ({time.perf_counter() - started:.1f} s)")
    return 0


def _cross_validate(
    data: D.Dataset, config: T.TrainConfig, folds: int, seed: int, progress: bool, log: Any, folder: Any
) -> dict[str, Any]:
    """K-fold cross-validation (seeded, shuffled): each fold's metrics, their mean and standard deviation."""
    from sklearn.model_selection import KFold

    if len(data) < folds:
        raise ValueError(f"--cv {folds}: the data has only {len(data)} samples")
    splits = list(KFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(data))))
    if folder is not None:  # the writer (rank 0 of a torchrun job) alone says it
        # each row's key once (a row's key is the same in any subset), not each fold's two subsets copied and hashed
        keys = _sample_keys(data, data.Y is not None)
        seen = 0
        for train_index, test_index in splits:
            known = {keys[i] for i in train_index}
            seen += sum(keys[i] in known for i in test_index)
        _warn_seen(seen, len(data), f"--cv {folds} (each fold's test rows against its training part)")
    results = []
    for i, (train_index, test_index) in enumerate(splits):
        try:
            model = T.fit(data.subset(train_index), config, progress=progress, log=log)
        except ValueError as error:  # "N training samples": the fold's, not the file's
            raise ValueError(f"--cv {folds}, fold {i + 1}/{folds} (trained on {len(train_index)} of the {len(data)} "
                             f"samples): {error}") from error  # fmt: skip
        metrics, _ = T.evaluate(model, data.subset(test_index), config.device)
        log(f"fold {i + 1}/{folds}: micro_f1 {metrics['micro_f1']:.4f}, hamming_loss {metrics['hamming_loss']:.4f}")
        results.append(metrics)
    names = [k for k in results[0] if all(math.isfinite(r[k]) for r in results)]
    mean = {k: float(np.mean([r[k] for r in results])) for k in names}
    std = {k: float(np.std([r[k] for r in results], ddof=1)) for k in names}
    return {"folds": results, "mean": mean, "std": std}


def _check_label_options(args: argparse.Namespace, *specs: str | None) -> None:
    """--labels names ARFF or CSV columns and --xml an ARFF file's labels: with other data they would be ignored."""
    files = [Path(spec) for spec in specs if spec and spec not in D.BUILTIN and Path(spec).is_file()]  # else: the loader says
    kinds = {path.suffix.lower() for path in files}
    if args.labels and files and not kinds & {".arff", ".csv"}:
        raise ValueError(f"--labels: {files[0]} is LIBSVM text, whose labels are the ids before the features; drop --labels")
    if args.xml and files and ".arff" not in kinds:
        raise ValueError(f"--xml {args.xml}: it names the labels of a MULAN .arff file, and {files[0]} is not one; drop --xml")


def _given_labels(args: argparse.Namespace, model: T.TrainedModel, needed: bool) -> None:
    """--labels / --xml at evaluate / predict time: the model knows its labels, so these can only name them (any order).
    A name the model lacks is an error; evaluate needs all of them (predict, which reads no labels, a few)."""
    if args.labels and args.xml:
        raise ValueError(f"--labels and --xml {args.xml} both name the labels: give one of them")
    if args.xml:
        given, option = D.mulan_labels(args.xml), f"--xml {args.xml}"  # a missing or broken file: an error naming it
    elif args.labels:
        D._check_unique(args.labels, "--labels")
        given, option = list(args.labels), f"--labels {','.join(args.labels)}"
    else:
        return
    known = model.label_names
    known_set, given_set = set(known), set(given)
    unknown = [name for name in given if name not in known_set]
    if unknown:
        hint = D._normalisation_hint(unknown, known, "the model's")
        raise ValueError(f"{option}: {_few(unknown)} not among the model's {len(known)} labels {_few(known)}{hint}")
    lacking = [name for name in known if name not in given_set]
    if needed and lacking:
        raise ValueError(f"{option}: the model's label(s) {_few(lacking)} are not named: evaluate needs all {len(known)} "
                         "(the model's names are the default: drop the option)")  # fmt: skip


def _load_for(args: argparse.Namespace, labels_needed: bool = True) -> tuple[T.TrainedModel, D.Dataset]:
    """The run's model (with the decision options applied) and ``--data`` matched to it by name. The model's label
    names say which columns are labels; ``labels_needed`` False (predict): they are recognised but not read."""
    model = T.load_model(Path(args.run))
    try:
        model = model.with_decision(args.thresholds, args.threshold, args.k)
    except ValueError as exc:
        raise ValueError(as_options(str(exc))) from None
    strategy = model.decision["strategy"]
    if args.threshold is not None and strategy != "fixed":
        raise ValueError(f"--threshold {args.threshold}: it is the threshold of --thresholds fixed, and this model decides "
                         f"with {strategy}; add --thresholds fixed, or drop --threshold")  # fmt: skip
    if args.k is not None and strategy != "top-k":
        raise ValueError(f"--k {args.k}: it is the labels per sample of --thresholds top-k, and this model decides with "
                         f"{strategy}; add --thresholds top-k, or drop --k")  # fmt: skip
    _check_label_options(args, args.data)
    if args.data in D.BUILTIN:
        if args.labels or args.xml:
            raise ValueError(f"--data {args.data} is built in, with its own labels: --labels / --xml would be ignored; drop them")
        data = D.load_builtin(args.data)[1]  # a built-in name means its test split
    else:
        _given_labels(args, model, labels_needed)
        data = D.load(args.data, model.label_names, features=None if model.positional else model.feature_names,
                      read_labels=labels_needed)  # fmt: skip
    if data.sparse and len(data) and data.X.nnz == 0:  # labels only: a comma-separated file of integers is such text
        warnings.warn(f"--data {args.data}: no row gives a feature value (LIBSVM text: the idx:val pairs after a row's "
                      "labels), so every row gets the same probabilities, the model's biases alone", UserWarning, stacklevel=2)  # fmt: skip
    if not labels_needed and data.Y is not None:  # LIBSVM labels (parsed with the row) or a built-in's: not used
        data = D.Dataset(data.X, None, data.feature_names, [], data.name, data.path, data.positional)
    return model, D.align(data, model.feature_names, model.label_names, positional=model.positional)


def _few(names: list[str], limit: int = 5) -> str:
    return repr(names[:limit])[:-1] + (f", ... {len(names) - limit} more]" if len(names) > limit else "]")


def _same_path(a: Path | str, b: Path | str) -> bool:
    """Whether ``a`` and ``b`` both exist and are the same file or folder (through links and other spellings)."""
    try:
        return Path(a).exists() and Path(b).exists() and Path(a).samefile(b)
    except OSError:
        return False


def _check_device(device: str) -> None:
    """``--device``, checked before the model and the data are read (and before a CSV header is written)."""
    try:
        T.resolve_device(device)
    except ValueError as exc:
        raise ValueError(str(exc).replace(f"device={device!r}", f"--device {device}", 1)) from None


def evaluate_command(args: argparse.Namespace) -> int:
    _check_device(args.device)
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file: expected a folder for metrics.json, per_label.csv and the plot")
        if _same_path(out, args.run):  # --force or not: the run's own report of its test split
            raise ValueError(f"--out {out} is the run folder: its metrics.json, per_label.csv and plot are the run's own "
                             "report of the data it was tested on (config.json's evaluated_on); give another folder")  # fmt: skip
        if (out / "model.json").is_file():  # another run's report, as above
            raise ValueError(f"--out {out} is a run folder (it holds model.json): its metrics.json, per_label.csv and plot "
                             "are that run's own report; give another folder")  # fmt: skip
        taken = [n for n in ("metrics.json", "per_label.csv", "f1_vs_frequency.png") if (out / n).exists()]
        if taken and not args.force:
            raise ValueError(f"--out {out} already holds {', '.join(taken)}: pass --force to overwrite, or another --out")
    model, data = _load_for(args)
    if len(data) == 0:
        raise ValueError(f"--data {args.data}: no rows to evaluate")
    if data.Y is None and model.positional:
        raise ValueError(f"--data {args.data}: no row has a label (LIBSVM text: the ids before the features): nothing to "
                         "evaluate against (predict needs no labels)")  # fmt: skip
    if data.Y is None:
        missing = list(data.missing_labels or model.label_names)
        raise ValueError(f"--data {args.data}: no label column(s) {_few(missing)} to evaluate against "
                         f"(the model's {len(model.label_names)} labels are needed; predict needs none)")  # fmt: skip
    metrics, per_label = T.evaluate(model, data, args.device)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        T.write_report(out, metrics, per_label, model.label_names, T.train_frequency(model))
    print(metrics_table(metrics, f"Metrics of {args.run} on {data.name} ({len(data)} samples, thresholds {model.decision['strategy']}):"))
    print()
    print(per_label_table(per_label, model.label_names))
    if out is not None:
        print(f"\nwritten to {out}")
    return 0


#: The files ``softmargin train`` writes into a run folder: predict ``--out`` never replaces one, ``--force`` or not.
RUN_FILES = ("model.json", "model.safetensors", "config.json", "metrics.json", "per_label.csv", "history.csv", "loss.png",
             "f1_vs_frequency.png", "cv_metrics.json")  # fmt: skip

#: From this many samples x labels on, predict's dense output (without --top-k) is announced with its size.
LARGE_PREDICTIONS = 10**8

#: What predict's ``--out`` names (:func:`softmargin.app.files.check_out`'s messages).
_PREDICTIONS = "a CSV file name (or - for standard output)"


@contextmanager
def _output(spec: str, force: bool) -> Iterator[IO[str]]:
    """``-``: standard output; a file: written to a temporary name and moved into place (never half-written)."""
    if spec == "-":
        yield sys.stdout
        return
    path = Path(spec)
    check_out(path, force, _PREDICTIONS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        yield f


def predict_command(args: argparse.Namespace) -> int:
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k {args.top_k}: expected a positive number of labels per sample")
    if args.top_k is not None:
        decision = [f"--{name} {value}" for name, value in (("thresholds", args.thresholds), ("threshold", args.threshold),
                                                            ("k", args.k)) if value is not None]  # fmt: skip
        if decision:
            raise ValueError(f"{decision[0]}: --top-k {args.top_k} lists each sample's {args.top_k} best labels with their "
                             "probabilities and decides nothing, so it would ignore it; drop one of them")  # fmt: skip
    _check_device(args.device)
    if args.out != "-":  # before the model and the data are read; _output checks again when it writes
        if args.data not in D.BUILTIN and _same_path(args.out, args.data):  # --force or not
            raise ValueError(f"--out {args.out} is the --data file: the predictions would replace the data they are made "
                             "from; name another file")  # fmt: skip
        if args.xml and _same_path(args.out, args.xml):
            raise ValueError(f"--out {args.out} is the --xml file: the predictions would replace the label names; name "
                             "another file")  # fmt: skip
        out = Path(args.out)
        own = next((name for name in RUN_FILES if _same_path(out, Path(args.run) / name)
                    or (name == out.name and _same_path(out.parent, args.run))), None)  # fmt: skip
        if own is not None:  # model.json replaced by a CSV file: the run would never load again
            raise ValueError(f"--out {args.out} is the run folder's {own}: the predictions would replace the run's own "
                             "file; name another file (a new name in the run folder is fine)")  # fmt: skip
        check_out(args.out, args.force, _PREDICTIONS)
    model, data = _load_for(args, labels_needed=False)
    names = model.label_names
    cells = len(data) * len(names)
    if not args.top_k and cells >= LARGE_PREDICTIONS:  # 10,000 x 100,000 labels: 11 GB of CSV, minutes of writing
        print(f"predict: {len(data)} samples x {len(names)} labels, a probability and a 0/1 column each: about "
              f"{cells * 11 / 1e9:.1f} GB of CSV; --top-k K writes each sample's K best labels instead", file=sys.stderr)  # fmt: skip
    batches = model.iter_proba(data.X, device=args.device)
    if args.out != "-" and sys.stderr.isatty():
        batches = T._progress(batches, True, "predict", "batch")
    with _output(args.out, args.force) as f:
        writer = csv.writer(f, lineterminator="\n")
        if args.top_k:
            k = min(args.top_k, len(names))
            writer.writerow(["row"] + [c for i in range(1, k + 1) for c in (f"label_{i}", f"p_{i}")])
        else:
            writer.writerow(["row"] + [f"p_{n}" for n in names] + [f"y_{n}" for n in names])
        for rows, scores in batches:
            if args.top_k:
                top = T._top(scores, k)
                for offset, ids in enumerate(top):
                    pairs = [v for c in ids for v in (names[c], f"{scores[offset, c]:.6f}")]
                    writer.writerow([rows.start + offset, *pairs])
            else:
                pred = model.decide(scores)
                for i, s, p in zip(range(rows.start, rows.stop), np.round(scores, 6).tolist(), pred.tolist()):
                    writer.writerow([i, *s, *p])
    if args.out != "-":
        print(f"{len(data)} predictions written to {args.out}", file=sys.stderr)
    return 0
