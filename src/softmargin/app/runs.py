"""The ``softmargin train``, ``evaluate`` and ``predict`` commands: argument handling, tables and run folders."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as M
from . import data as D
from . import train as T
from .compare import format_table


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def metrics_table(metrics: dict[str, float], title: str) -> str:
    rows = [
        [name, f"{metrics[name]:.4f}", "lower" if name in M.LOWER_IS_BETTER else "higher"]
        for name in M.TABLE_ORDER
        if name in metrics
    ]
    return f"{title}\n" + format_table(["metric", "value", "better"], rows)


def per_label_table(per_label: list[dict[str, Any]], names: list[str], limit: int = 20) -> str:
    rows = [
        [name, r["support"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", f"{r['threshold']:.3f}"]
        for name, r in zip(names, per_label)
    ]
    more = f"\n... and {len(rows) - limit} more labels (per_label.csv has them all)" if len(rows) > limit else ""
    return format_table(["label", "support", "precision", "recall", "F1", "threshold"], rows[:limit]) + more


def _config(args: argparse.Namespace) -> T.TrainConfig:
    return T.TrainConfig(
        model=args.model, hidden=tuple(args.hidden), dropout=args.dropout, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, C=args.C,
        valid_fraction=args.valid_fraction, patience=args.patience, standardize=args.standardize,
        class_weight=args.class_weight, pos_weight=args.pos_weight, pos_weight_max=args.pos_weight_max,
        label_smoothing=args.label_smoothing, gamma_pos=args.gamma_pos, gamma_neg=args.gamma_neg, clip=args.clip,
        thresholds=args.thresholds, at_least_one=args.at_least_one, ensemble=args.ensemble, head=args.head, seed=args.seed,
        threads=args.threads,
    ).check()  # fmt: skip


def train_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    config = _config(args)
    train, test = D.load_train_test(args.data, args.test, args.labels, args.xml)
    _say(f"train: {train.describe()}")
    if test is not None:
        _say(f"test:  {test.describe()}")
    else:
        _say("no --test given: the metrics below are on the training data")
    model = T.fit(train, config, progress=not args.quiet, log=_say if not args.quiet else lambda s: None)
    evaluated = test if test is not None else train
    metrics, per_label = T.evaluate(model, evaluated)
    run = T.new_run_dir(Path(args.out), Path(str(args.data)).stem)
    T.write_json(run / "config.json", T.config_dict(
        config, data=args.data, test=args.test, labels=args.labels, xml=args.xml,
        evaluated_on="test" if test is not None else "train", command=sys.argv,
    ))  # fmt: skip
    T.save_model(model, run)
    T.write_report(run, metrics, per_label, model.label_names, len(evaluated))
    T.write_csv(run / "history.csv", ["member", "epoch", "train_loss", "valid_loss"],
                [[h.get("member", 0), h["epoch"], h["train_loss"], h.get("valid_loss", "")] for h in model.history])  # fmt: skip
    T.plot_history(model.history, run / "loss.png")
    print(metrics_table(metrics, f"Test metrics ({'test' if test is not None else 'training'} data, {len(evaluated)} samples):"))
    print()
    print(per_label_table(per_label, model.label_names))
    print(f"\nrun folder: {run}  ({time.perf_counter() - started:.1f} s)")
    return 0


def _data_for(args: argparse.Namespace) -> D.Dataset:
    if args.data in D.BUILTIN:
        return D.load_builtin(args.data)[1]  # a built-in name means its test split
    return D.load(args.data, args.labels, args.xml)


def evaluate_command(args: argparse.Namespace) -> int:
    model = T.load_model(Path(args.run))
    data = _data_for(args)
    metrics, per_label = T.evaluate(model, data)
    print(metrics_table(metrics, f"Metrics of {args.run} on {data.name} ({len(data)} samples):"))
    print()
    print(per_label_table(per_label, model.label_names))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        T.write_report(out, metrics, per_label, model.label_names, len(data))
        print(f"\nwritten to {out}")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"--out {out} exists: pass --force to overwrite it")
    model = T.load_model(Path(args.run))
    data = _data_for(args)
    if data.X.shape[1] != model.nets[0].shift.numel():
        raise ValueError(f"the data has {data.X.shape[1]} features, the model expects {model.nets[0].shift.numel()}")
    scores = model.predict_proba(data.X)
    pred = T.decide(scores, model.thresholds, model.at_least_one)
    header = ["row"] + [f"p_{n}" for n in model.label_names] + [f"y_{n}" for n in model.label_names]
    rows = [[i, *np.round(s, 6).tolist(), *p.tolist()] for i, (s, p) in enumerate(zip(scores, pred))]
    out.parent.mkdir(parents=True, exist_ok=True)
    T.write_csv(out, header, rows)
    print(f"{len(rows)} predictions written to {out}")
    return 0
