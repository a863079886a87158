"""The ``softmargin`` command. Each subcommand imports what it needs only when it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


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
    return shape


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import bench
    from .compare import format_table

    if args.options:
        shape = (args.shapes or [(4096, 2000)])[0]
        rows = bench.option_costs(shape, args.repeat)
        print(f"Forward+backward, {shape[0]}x{shape[1]} float32, each loss option against the plain loss:")
        print(format_table(["option", "median ms", "x plain"], [[r["option"], f"{r['median_ms']:.2f}", f"{r['x_plain']:.2f}"] for r in rows]))
        return 0
    rows = bench.run(
        shapes=args.shapes or bench.DEFAULT_SHAPES,
        dtypes=args.dtypes,
        impls=[i for i in bench.IMPLEMENTATIONS if not (args.no_compile and i == "torch.compile")],
        repeat=args.repeat,
        threads=args.threads,
        out=Path(args.out) if args.out else None,
    )
    print(bench.report(rows))
    if args.out:
        print(f"\nwritten to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softmargin",
        description="Multi-label classification with the multi-label soft-margin loss.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    compare = sub.add_parser(
        "compare", help="the seed's example: softmargin vs torch vs sigmoid+BCELoss vs BCEWithLogitsLoss"
    )
    compare.set_defaults(func=_compare)

    bench = sub.add_parser(
        "bench", help="forward+backward time and peak memory against torch eager, torch.compile, BCEWithLogits"
    )
    bench.add_argument("--shapes", type=_shape, nargs="+", metavar="NxC", help="default: 4096x2000 256x100000 32x10")
    bench.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16", "float64"])
    bench.add_argument("--repeat", type=int, default=15, help="timed calls per configuration (the median is reported)")
    bench.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs available)")
    bench.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compilation takes a while)")
    bench.add_argument("--options", action="store_true", help="time each loss option (pos_weight, mask, ...) instead")
    bench.add_argument("--out", default="benchmarks/results/bench-cpu.csv", help="CSV file for the results ('' for none)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
