"""Forward+backward time and peak extra memory of softmargin against its anchors (see softmargin/app/bench.py).

    python benchmarks/bench_loss.py                      # the default shapes and dtypes, CSV to runs/bench-<date>-<time>/
    python benchmarks/bench_loss.py --shapes 4096x2000 --dtypes float32 --no-compile

The same as `softmargin bench`: results go to runs/bench-<date>-<time>/bench-cpu.csv, or to --out (the committed tables
are under benchmarks/results/).
"""

import sys

from softmargin.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
