"""The ``softmargin`` command. Each subcommand imports what it needs only when it runs."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


def _compare(args: argparse.Namespace) -> int:
    from .compare import run

    print(run())
    return 0


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected NxC, e.g. 4096x2000") from None
    if len(shape) != 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected two positive sizes NxC, e.g. 4096x2000")
    if shape[0] * shape[1] >= 2**63:  # torch's sizes are int64 (and the memory check's float would overflow)
        raise argparse.ArgumentTypeError(f"shape {text!r}: N*C is 2**63 elements or more: expected fewer (sizes are int64)")
    return shape


def _bench(args: argparse.Namespace) -> int:
    """``softmargin bench``, and the machine's load average before and after it: timings mean little on a busy
    machine (tiny calls least of all, see ``app/bench.py``), so the output says how busy it was."""
    import os

    cpus = len(os.sched_getaffinity(0))
    before = os.getloadavg()[0]
    status = _bench_run(args)
    after = os.getloadavg()[0]
    print(f"\nload average (1 minute) {before:.2f} at the start, {after:.2f} at the end, on {cpus} CPUs")
    if max(before, after - 1) > cpus / 2:  # at the end the load counts the benchmark's own process
        print("the machine was busy: measure again on a quiet one before comparing these timings")
    return status


def _bench_run(args: argparse.Namespace) -> int:
    from . import bench

    # every option and every file this run will write, checked before anything is measured (some runs take hours)
    mode = bench.check_command(args)
    reserved = None
    if args.out is None:  # a run folder of its own, never the source tree
        reserved = _reserve_bench_folder()
        args.out = str(reserved / bench.default_out_name(mode, args.device))
    try:
        return _bench_measure(args, mode)
    finally:
        if reserved is not None and not any(reserved.iterdir()):  # refused or failed before it wrote anything
            reserved.rmdir()


def _reserve_bench_folder() -> Path:
    """``runs/bench-<date>-<time>``, made now (``-1``, ``-2``, ... after it when that exists): two runs started in the
    same second wrote into one folder, the second's CSV over the first's, or the second was refused."""
    import time
    from pathlib import Path

    from .files import new_folder

    Path("runs").mkdir(exist_ok=True)
    return new_folder(Path("runs"), time.strftime("bench-%Y%m%d-%H%M%S"))


def _bench_measure(args: argparse.Namespace, mode: str) -> int:
    from pathlib import Path

    from . import bench
    from .compare import format_table

    outputs = _bench_outputs(args)
    for path in outputs:
        bench.check_out(path, args.force)
    args.written = []  # each file as it is finished: the default run writes its CSV before its training step
    out = Path(outputs[0]) if outputs else None
    repeat = args.repeat if args.repeat is not None else bench.EXTREME_REPEAT if mode == "extreme" else bench.DEFAULT_REPEAT
    dtypes = args.dtypes or bench.default_dtypes(mode)

    if mode == "extreme":
        rows = bench.extreme(repeat=repeat, threads=args.threads, out=out, force=args.force)
        print("Linear head + loss, N=256, hidden 256, 5 positives per sample; forward+backward per training step:")
        print(bench.extreme_report(rows))
    elif mode == "train-step":
        _train_step_report(args, args.shapes or [bench.TRAIN_STEP_SHAPE], repeat, outputs[0] if outputs else None)
        out = None  # said there
    elif mode == "options":
        rows = bench.option_costs(args.shapes or [bench.TRAIN_STEP_SHAPE], dtypes, repeat, args.threads)
        print("Forward+backward, each loss option against the plain loss and against torch's own losses written for it"
              " (BCEWithLogits with pos_weight; times a mask over its count; on smoothed targets; none for focusing):")
        print(format_table(["shape", "dtype", "option", "median ms", "x plain", "torch ms", "x torch"],
                           [[r["shape"], r["dtype"], r["option"], bench.figures(r["median_ms"]) if "median_ms" in r else r["error"][:60],
                             f"{r['x_plain']:.2f}" if "x_plain" in r else "-",
                             bench.figures(r["torch_ms"]) if "torch_ms" in r else "-",
                             f"{r['x_torch']:.2f}" if "x_torch" in r else "-"] for r in rows]))  # fmt: skip
        if out is not None:
            bench.write_csv(out, ["shape", "dtype", "option", "threads", "median_ms", "x_plain", "torch_ms", "x_torch",
                                  "error"], rows)  # fmt: skip
    elif mode == "numpy":
        from . import bench_numpy

        rows = bench_numpy.run(shapes=args.shapes or bench_numpy.DEFAULT_SHAPES, dtypes=dtypes, repeat=repeat,
                               threads=args.threads, out=out)  # fmt: skip
        print(bench.report(rows))
    elif mode == "jax":
        from . import bench_jax

        rows = bench_jax.run(shapes=args.shapes or bench.DEFAULT_SHAPES, dtypes=dtypes, repeat=repeat, threads=args.threads,
                             out=out)  # fmt: skip
        print(bench.report(rows))
    else:
        rows = bench.run(
            shapes=args.shapes or bench.DEFAULT_SHAPES,
            dtypes=dtypes,
            impls=[i for i in bench.IMPLEMENTATIONS if not (args.no_compile and i == "torch.compile")],
            repeat=repeat,
            threads=args.threads,
            out=out,
            device=args.device,
            force=args.force,
        )
        print(bench.report(rows))
    if out is not None:
        args.written.append(str(out))
        print(f"\nwritten to {out}")
    if mode == "torch" and not args.no_compile and not args.shapes:  # the default run: issue 11's compiled training
        print()  # step, in the same run
        _train_step_report(args, [bench.TRAIN_STEP_SHAPE], repeat, outputs[1] if outputs else None)
    return 0


def _bench_outputs(args: argparse.Namespace) -> list[str]:
    """The CSV files :func:`_bench_run` writes with these options (``args.out`` already given or defaulted): ``--out``
    itself, whichever run it is, and for the default run (the torch backend, no ``--shapes``, compiled), which ends
    with the compiled training step, ``bench-train-step.csv`` beside it. None for ``--out ''``. No other name is
    ever derived from ``--out``."""
    from pathlib import Path

    from . import bench

    if not args.out:
        return []
    if bench.command_mode(args) != "torch" or args.no_compile or args.shapes:
        return [args.out]
    step = Path(args.out).with_name(bench.TRAIN_STEP_OUT)
    if Path(args.out).resolve() == step.resolve():
        raise ValueError(f"--out {args.out}: the default run writes its compiled training step to {bench.TRAIN_STEP_OUT} "
                         "beside --out: give the shapes' CSV another name (or run --train-step alone)")  # fmt: skip
    return [args.out, str(step)]


def _train_step_report(args: argparse.Namespace, shapes: list[tuple[int, int]], repeat: int, out: str | None) -> None:
    """Time the training step at each shape (softmargin's loss against torch's, fresh processes; compiled unless
    ``--no-compile``), print the table and write it to ``out``."""
    from pathlib import Path

    from . import bench
    from .compare import format_table

    device = args.device or "cpu"
    compiled = not args.no_compile
    rows = []
    for shape in shapes:
        rows.extend(bench.train_step(shape, repeat=repeat, threads=args.threads, rounds=5 if device == "cpu" else 1,
                                     device=device, compiled=compiled))  # fmt: skip
    what = "torch.compile(model + loss + backward + SGD step)" if compiled else "model + loss + backward + SGD step, eager (--no-compile)"
    print(f"{what} on {device}, linear model 32 -> C, float32:")
    table = []
    for r in rows:
        ours = next((o.get("median_ms") for o in rows if o.get("shape") == r.get("shape") and o["impl"] == "softmargin"), None)
        table.append([r.get("shape", ""), r["impl"], bench.figures(r.get("median_ms", float("nan"))), bench.figures(r.get("first_call_s", float("nan"))),
                      f"{r.get('final_loss', float('nan')):.6f}", bench._ratio(r.get("median_ms"), ours) if r["impl"] != "softmargin" else ""])  # fmt: skip
    print(format_table(["NxC", "loss", "median ms", "first calls s", "final loss", "softmargin's speed-up"], table))
    if out is not None:
        bench.write_csv(Path(out), ["impl", "shape", "device", "compiled", "features", "threads", "median_ms", "min_ms", "first_call_s", "rounds",
                              "final_loss", "error"], rows)  # fmt: skip
        args.written.append(str(out))
        print(f"\nwritten to {out}")


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden {text!r}: expected comma-separated layer sizes, e.g. 512 or 512,256") from None
    if not sizes:
        raise argparse.ArgumentTypeError(f"--hidden {text!r}: no layer size; expected e.g. 512 or 512,256")
    if any(v < 1 for v in sizes):
        raise argparse.ArgumentTypeError(f"--hidden {text!r}: layer sizes must be positive")
    return sizes


def _names(text: str) -> list[str]:
    """``--labels``: comma-separated names (empty ones between commas skipped). None at all (``''``, ``','``) gives an
    empty list, which :func:`_check_labels` refuses (never read as no label, nor the option ignored)."""
    return [v.strip() for v in text.split(",") if v.strip()]


def _check_labels(args: argparse.Namespace) -> None:
    if getattr(args, "labels", None) == []:
        raise ValueError("--labels: no label name given: expected comma-separated names, e.g. --labels ya,yb")


def _train(args: argparse.Namespace) -> int:
    from .runs import train_command

    return train_command(args)


def _evaluate(args: argparse.Namespace) -> int:
    from .runs import evaluate_command

    _check_run(args.run)
    return evaluate_command(args)


def _predict(args: argparse.Namespace) -> int:
    from .runs import predict_command

    if args.out == "":  # read as the current folder, refused only after the model and the data were read
        raise ValueError("--out is empty: expected a CSV file name (or - for standard output)")
    _check_run(args.run)
    return predict_command(args)


def _check_run(run: str) -> None:
    """The RUN of evaluate / predict: a file given for it is named as one (the model's loader says only that there is
    no such run folder), with the folder to give when it is one of a run's files."""
    from pathlib import Path

    path = Path(run)
    if path.is_file():
        hint = f"; give its folder, {path.parent}" if path.name in ("model.json", "model.safetensors", "config.json") else ""
        raise ValueError(f"{run} is a file, not a run folder: expected a folder written by 'softmargin train'{hint}")


def _add_data_arguments(parser: argparse.ArgumentParser, default: str | None, test: bool) -> None:
    parser.add_argument("--data", default=default, required=default is None,
                        help="a built-in data set (yeast: its standard split) or a file: MULAN .arff, .csv, or LIBSVM/XC text")  # fmt: skip
    if test:
        parser.add_argument("--test", help="a separate test file, its columns matched to --data's by name")
    parser.add_argument("--labels", type=_names, help="comma-separated label attribute/column names (ARFF without XML, CSV; evaluate: the model's labels; predict: optional)")
    parser.add_argument("--xml", help="the MULAN XML file naming the labels (default: found next to the ARFF file; evaluate/predict: the model's labels)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What evaluate and predict share: the run, the device and the decision overrides."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--thresholds", choices=_STRATEGIES, default=None,
                        help="how probabilities become labels (default: the strategy the model was trained with)")  # fmt: skip
    parser.add_argument("--threshold", type=float, default=None, help="the probability threshold of --thresholds fixed (default: the model's)")
    parser.add_argument("--k", type=int, default=None, help="labels per sample for --thresholds top-k (default: the model's)")


_STRATEGIES = ["fixed", "tuned", "top-k", "rcut"]
class _DEFAULTS(argparse.ArgumentDefaultsHelpFormatter):
    """Every default shown, except where there is none to show (None: "(default: None)" after --data, which is
    required, or after "(default: the model's)") or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.required or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="softmargin",
        description="Multi-label classification with the multi-label soft-margin loss.",
    )
    parser.add_argument("--version", action="version", version=f"softmargin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    compare = sub.add_parser(
        "compare", help="the seed's example: softmargin vs torch vs sigmoid+BCELoss vs BCEWithLogitsLoss"
    )
    compare.set_defaults(func=_compare)

    train = sub.add_parser(
        "train", help="train and evaluate a multi-label classifier (the main job)", formatter_class=_DEFAULTS,
        description="Train a multi-label classifier with the soft-margin loss, evaluate it on the test split and "
        "write a run folder. Several processes: torchrun --nproc-per-node N -m softmargin train ...",
    )  # fmt: skip
    _add_data_arguments(train, "yeast", test=True)
    train.add_argument("--test-fraction", type=float, default=0.2, help="without --test: the seeded share of --data held out for testing (0: test on the training data)")
    train.add_argument("--cv", type=int, default=None, metavar="K", help="K-fold cross-validation instead: mean ± std of each metric")
    model = train.add_argument_group("model")
    model.add_argument("--model", choices=["auto", "linear", "mlp"], default="auto",
                       help="linear = per-label linear model (binary relevance: --linear-loss with newton, else logistic); auto: linear for sparse "
                       "non-negative (bag-of-words) features, mlp otherwise")  # fmt: skip
    model.add_argument("--hidden", type=_hidden, default=None, help="MLP hidden sizes, e.g. 512 or 512,256 (MLP only; default 512)")
    model.add_argument("--dropout", type=float, default=0.5, help="dropout after each hidden layer")
    model.add_argument("--ensemble", type=int, default=5, help="networks from consecutive seeds, probabilities averaged")
    model.add_argument("--head", choices=["auto", "fused", "plain"], default="auto",
                       help="fused: the last layer and the loss as one fused head, no (batch, labels) logits; auto: from 512 labels")  # fmt: skip
    opt = train.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=["auto", "adamw", "lbfgs", "newton"], default="auto",
                     help="lbfgs: full batch, to convergence; newton: the linear model solved by truncated Newton, "
                     "cross-fitted over --folds (held-out predictions for every row); auto: newton for the linear model, else adamw")  # fmt: skip
    opt.add_argument("--folds", type=int, default=None,
                     help="newton: cross-fitting folds (held-out predictions for --thresholds tuned); default 3, 2 on very large data")
    opt.add_argument("--linear-loss", choices=["squared_hinge", "logistic"], default="squared_hinge",
                     help="newton: squared_hinge = LIBLINEAR's L2-loss SVM (probabilities are sigmoid(margin)); logistic = "
                     "logistic regression (calibrated probabilities)")  # fmt: skip
    opt.add_argument("--epochs", type=int, default=200, help="at most this many passes over the training data")
    opt.add_argument("--batch-size", type=int, default=64, help="samples per mini-batch (the global batch under torchrun)")
    opt.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    opt.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW's decoupled weight decay")
    opt.add_argument("--C", type=float, default=None,
                     help="L2 penalty as LogisticRegression(C=...) / LIBLINEAR's -c; not given: no penalty, except newton: chosen by "
                     "cross-validation (held-out P@1+P@3+P@5)")  # fmt: skip
    opt.add_argument("--valid-fraction", type=float, default=0.15, help="validation split for early stopping (0: none)")
    opt.add_argument("--patience", type=int, default=20, help="epochs without a better validation loss before stopping")
    opt.add_argument("--standardize", choices=["auto", "yes", "no", "tfidf"], default="auto",
                     help="tfidf: idf weights, rows to unit L2 norm; auto: tfidf for newton on bag-of-words, else standardise dense features only")  # fmt: skip
    opt.add_argument("--seed", type=int, default=0, help="seed of the splits, the initialisation and the batches")
    opt.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    opt.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    loss = train.add_argument_group("loss (see docs/imbalance.md)")
    loss.add_argument("--class-weight", choices=["none", "inverse", "sqrt_inverse", "effective_number"], default="none", help="per-label weights from the label frequencies")
    loss.add_argument("--pos-weight", action="store_true", help="pos_weight = n_neg / n_pos per label (capped by --pos-weight-max)")
    loss.add_argument("--pos-weight-max", type=float, default=10.0, help="the cap of --pos-weight")
    loss.add_argument("--rare-weight", type=float, default=10.0,
                      help="newton, without --pos-weight: labels with fewer than --rare-positives training positives get "
                      "pos_weight = min(this, n_neg / n_pos) (1: off)")  # fmt: skip
    loss.add_argument("--rare-positives", type=int, default=10, help="newton: the training positives below which --rare-weight applies")
    loss.add_argument("--label-smoothing", type=float, default=0.0, help="targets y -> y (1 - s) + s / 2")
    loss.add_argument("--gamma-pos", type=float, default=0.0, help="asymmetric focusing of the positives")
    loss.add_argument("--gamma-neg", type=float, default=0.0, help="asymmetric focusing of the negatives")
    loss.add_argument("--clip", type=float, default=0.0, help="probability margin shifted off the negatives")
    decide = train.add_argument_group("decisions")
    decide.add_argument("--thresholds", choices=["auto", *_STRATEGIES], default="auto",
                        help="fixed: --threshold; tuned: per label, cut for micro+macro F1 on held-out predictions (see --cut-counts; "
                        "never under --min-threshold); top-k: each sample's --k best labels; rcut: each sample's t best, "
                        "t the training label cardinality (MULAN's RCut); auto: tuned for newton on tf-idf features, else fixed")  # fmt: skip
    decide.add_argument("--cut-counts", choices=["calibrated", "observed"], default="calibrated",
                        help="tuned: each cut counts the held-out labels' probabilities under a per-label Platt scaling shrunk "
                        "toward a shared one (calibrated: smooth, safe for labels with few positives), or the held-out labels "
                        "themselves with the SCutfbr fallback of --fbr, --fbr-positives, --fallback (observed: LibMultiLabel's rule)")  # fmt: skip
    decide.add_argument("--calibration-prior", type=float, default=10.0,
                        help="tuned, calibrated: how strongly each label's Platt scaling is shrunk toward the shared one")
    decide.add_argument("--fbr", type=float, default=0.1, help="tuned, observed: a label whose held-out F1 is below this is predicted only above every held-out score")
    decide.add_argument("--min-threshold", type=float, default=0.05, help="tuned: the lowest per-label threshold")
    decide.add_argument("--fallback", choices=["global", "above"], default="global",
                        help="tuned, observed: the --fbr fallback predicts a label above the one threshold that maximises the pooled "
                        "held-out micro-F1 (global), or only above every held-out score (above: SCutfbr's rule)")  # fmt: skip
    decide.add_argument("--fbr-positives", type=int, default=10,
                        help="tuned, observed: the --fbr fallback only for labels with fewer held-out positives than this (0: every label)")
    decide.add_argument("--macro-weight", type=float, default=None,
                        help="tuned: each label's cut maximises held-out micro-F1 + this x macro-F1 (higher: more rare labels "
                        "predicted, higher macro-F1 and Hamming loss); default 2 for the linear model's squared hinge with --cut-counts "
                        "calibrated, else 1 (LibMultiLabel's rule); lower trades macro-F1 for Hamming loss")  # fmt: skip
    decide.add_argument("--threshold", type=float, default=0.5, help="the probability threshold of --thresholds fixed")
    decide.add_argument("--k", type=int, default=1, help="labels per sample for --thresholds top-k")
    decide.add_argument("--at-least-one", choices=["auto", "yes", "no"], default="auto",
                        help="predict the top label when none passes its threshold (auto: if every training sample has a label)")  # fmt: skip
    train.add_argument("--out", default="runs", help="folder under which the run folder is made")
    train.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a saved model (a run folder) on data", formatter_class=_DEFAULTS)
    evaluate.add_argument("run", help="a run folder written by 'softmargin train'")
    _add_data_arguments(evaluate, None, test=False)
    _add_run_arguments(evaluate)
    evaluate.add_argument("--out", help="also write metrics.json, per_label.csv and f1_vs_frequency.png into this folder")
    evaluate.add_argument("--force", action="store_true", help="overwrite those files if --out holds them")
    evaluate.set_defaults(func=_evaluate)

    predict = sub.add_parser("predict", help="predict labels with a saved model", formatter_class=_DEFAULTS)
    predict.add_argument("run", help="a run folder written by 'softmargin train'")
    _add_data_arguments(predict, None, test=False)
    _add_run_arguments(predict)
    predict.add_argument("--out", required=True,
                         help="CSV file for the predictions (one probability and one 0/1 column per label), - for standard output")  # fmt: skip
    predict.add_argument("--top-k", type=int, default=None, metavar="K", help="instead: each sample's K best labels with their probabilities (not with --thresholds/--threshold/--k)")
    predict.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    predict.set_defaults(func=_predict)

    bench = sub.add_parser(
        "bench", help="forward+backward time and peak memory against torch eager, torch.compile, BCEWithLogits",
        description="Time the loss (and peak extra memory) against its anchors. One run at a time: the torch backend's "
        "default run, --backend jax or numpy, --train-step, --options or --extreme. An option the chosen run would not "
        "use is an error that names it; every option and --out are checked before anything is measured.",
    )  # fmt: skip
    bench.add_argument("--shapes", type=_shape, nargs="+", metavar="NxC",
                       help="default: 4096x2000 256x100000 256x1000 64x80 32x10, then the compiled training step (see --train-step); "
                       "--backend numpy: 4096x2000 256x100000; --train-step and --options: 4096x2000")  # fmt: skip
    bench.add_argument("--dtypes", nargs="+", default=None, choices=["float32", "bfloat16", "float16", "float64"],
                       help="default: float32 bfloat16 (torch, jax), float32 (numpy, --options); --train-step and --extreme: float32 only")  # fmt: skip
    bench.add_argument("--repeat", type=int, default=None, help="timed calls per configuration, the median reported (default 15; --extreme 3)")
    bench.add_argument("--threads", type=int, default=None, help="threads: torch's; --backend numpy: the kernel's; --backend jax: the CPUs XLA and the "
                       "callback's kernel run on (default: the CPUs available)")
    bench.add_argument("--backend", choices=["torch", "jax", "numpy"], default="torch",
                       help="jax: jitted value_and_grad of softmargin.jax against jitted optax; numpy: softmargin.numpy "
                       "against a naive NumPy formula, torch never imported (both on the CPU)")  # fmt: skip
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (torch backend and --train-step; one process, exact allocator counts)")
    bench.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compilation takes a while), and with it the default run's "
                       "training step; with --train-step: the same step in eager mode")  # fmt: skip
    mode = bench.add_mutually_exclusive_group()
    mode.add_argument("--extreme", action="store_true", help="instead: the fused linear head vs linear + loss at 100k, 1M, 3M labels")
    mode.add_argument("--options", action="store_true", help="instead: time each loss option (pos_weight, mask, ...) against the plain loss")
    mode.add_argument("--train-step", action="store_true",
                      help="instead: only the torch.compile'd training step (model + loss + backward + SGD) with softmargin vs "
                      "torch's loss, at each --shapes (default 4096x2000; the default run ends with it)")  # fmt: skip
    bench.add_argument("--out", default=None,
                       help="the CSV file this run writes ('' for none); default: runs/bench-<date>-<time>/ with bench-cpu.csv "
                       "(bench-cuda.csv on CUDA, bench-numpy.csv, bench-jax.csv, bench-train-step.csv, bench-options.csv or "
                       "bench-extreme.csv for the other runs). The default run also writes its training step to "
                       "bench-train-step.csv beside it")  # fmt: skip
    bench.add_argument("--force", action="store_true", help="overwrite --out (and the default run's bench-train-step.csv beside it) if it exists")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from .._extras import needed

    try:
        # a subcommand imports its dependencies when it runs: a missing one is named with its extra
        with (
            _warnings_as_lines(args.command),
            _sigterm_as_interrupt(),
            needed("app", "jax", "triton", by="the command"),
        ):
            _check_labels(args)
            return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError) as exc:  # user errors: one clear line, no traceback
        if isinstance(exc, BrokenPipeError):  # the reader went away (`softmargin ... | head`): not an error
            _silence_stdout()
            return 0
        print(f"softmargin {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # files are written whole or not at all; what went to standard output (--out -) is cut off where it stopped;
        # a command that writes several files in turn (bench) lists in args.written those it finished
        finished = getattr(args, "written", None)
        written = ("the output on standard output is incomplete" if getattr(args, "out", None) == "-"
                   else f"written before it: {', '.join(finished)}; nothing else" if finished
                   else "nothing was written")  # fmt: skip
        if isinstance(exc, Terminated):
            print(f"softmargin {args.command}: terminated (SIGTERM); {written}", file=sys.stderr)
            return 128 + int(signal.SIGTERM)
        print(f"softmargin {args.command}: interrupted; {written}", file=sys.stderr)
        return 130


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, Slurm, ``docker stop``, ``kill``), raised in the main thread as Ctrl-C's
    KeyboardInterrupt is, so that the same clean-up runs (a half-made run folder is removed)."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the command runs: SIGTERM raises :class:`Terminated` (once: a second SIGTERM during the clean-up is
    ignored); the previous handler is restored afterwards. Only the main thread can set handlers: elsewhere, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """While the command runs: a warning is one line on stderr, ``softmargin <command>: warning: ...``, as errors are
    (Python's default shows the file and line of the code that warned)."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:  # fmt: skip
        if command == "train":  # in the command's words, as its errors are: valid_fraction=0.1 -> --valid-fraction 0.1
            from .runs import as_options

            message = as_options(str(message))
        print(f"softmargin {command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _silence_stdout() -> None:
    """After a broken pipe, send what is left to /dev/null so that Python's exit flush does not fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
