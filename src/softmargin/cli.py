"""The ``softmargin`` command. Each subcommand imports what it needs only when it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _compare(args: argparse.Namespace) -> int:
    from .compare import run

    print(run())
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
