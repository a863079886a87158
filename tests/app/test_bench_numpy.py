"""``softmargin bench --backend numpy``'s machinery on a tiny problem (its numbers are not checked here)."""

from __future__ import annotations

import csv

from softmargin.app import bench, bench_numpy


def test_every_implementation_gives_the_same_loss():
    x, y, w = bench_numpy._data((6, 9), "float32")
    losses = [float(bench_numpy._step_fn(impl, x, y, w)()[0]) for impl in ("softmargin", "naive numpy")]
    assert abs(losses[0] - losses[1]) <= 1e-6 * losses[1]


def test_run_writes_one_row_per_implementation_without_torch(tmp_path):
    out = tmp_path / "bench-numpy.csv"
    rows = bench_numpy.run(shapes=[(16, 7)], dtypes=["float32", "bfloat16"], repeat=3, threads=1, out=out, rounds=1)
    assert [r["impl"] for r in rows] == list(bench_numpy.IMPLEMENTATIONS)  # bfloat16: not a NumPy dtype, skipped
    assert all("error" not in r and r["median_ms"] > 0 for r in rows), rows  # a torch import would be an error
    written = list(csv.DictReader(open(out)))
    assert [r["impl"] for r in written] == list(bench_numpy.IMPLEMENTATIONS) and written[0]["backend"] == "numpy"
    assert "naive numpy" in bench.report(rows)
