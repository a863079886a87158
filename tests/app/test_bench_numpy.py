"""``softmargin bench --backend numpy``'s machinery on a tiny problem (its numbers are not checked here)."""

from __future__ import annotations

import csv

import pytest

from softmargin.app import bench, bench_numpy


def test_every_implementation_gives_the_same_loss():
    x, y, w = bench_numpy._data((6, 9), "float32")
    losses = [float(bench_numpy._step_fn(impl, x, y, w)()[0]) for impl in ("softmargin", "naive numpy")]
    assert abs(losses[0] - losses[1]) <= 1e-6 * losses[1]


def test_run_writes_one_row_per_implementation_without_torch(tmp_path):
    out = tmp_path / "bench-numpy.csv"
    rows = bench_numpy.run(shapes=[(16, 7)], dtypes=["float32"], repeat=3, threads=1, out=out, rounds=1)
    assert [r["impl"] for r in rows] == list(bench_numpy.IMPLEMENTATIONS)
    assert all("error" not in r and r["median_ms"] > 0 for r in rows), rows  # a torch import would be an error
    written = list(csv.DictReader(open(out)))
    assert [r["impl"] for r in written] == list(bench_numpy.IMPLEMENTATIONS) and written[0]["backend"] == "numpy"
    # 16x7 is far below what the resident-size counters resolve: no memory reading, "–" in the table, empty in the CSV
    assert all("peak_extra_x_logits" not in r for r in rows) and {r["peak_extra_x_logits"] for r in written} == {""}
    assert "naive numpy" in bench.report(rows) and "–" in bench.report(rows)


def test_a_dtype_numpy_lacks_is_refused_not_skipped(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("measured")

    monkeypatch.setattr(bench_numpy, "_fresh", refuse)
    with pytest.raises(ValueError, match="--dtypes bfloat16: NumPy has no bfloat16"):
        bench_numpy.run(shapes=[(16, 7)], dtypes=["float32", "bfloat16"], repeat=1, threads=1)


def test_memory_is_measured_only_from_the_floor_and_on_one_cpu(monkeypatch):
    calls = []

    def fake(call, impl, threads, memory=False):
        calls.append((call, memory))
        return {"peak_extra_mb": 1.0, "peak_extra_x_logits": 1.0} if memory else {"median_ms": 1.0, "min_ms": 1.0, "first_call_s": 0.1}

    monkeypatch.setattr(bench_numpy, "_fresh", fake)
    monkeypatch.setattr(bench, "memory_floor", lambda threads=1: 1 << 18)  # as on a machine of up to 16 CPUs
    small, large = (8, 4), (256, 1024)
    assert not bench.memory_measurable(small, "float32") and bench.memory_measurable(large, "float32")
    rows = bench_numpy.run(shapes=[small, large], dtypes=["float32"], repeat=1, threads=1, rounds=1)
    memory = [call for call, is_memory in calls if is_memory]
    assert len(memory) == len(bench_numpy.IMPLEMENTATIONS) and all("(256, 1024)" in call for call in memory)
    assert [r.get("peak_extra_x_logits") for r in rows] == [None] * 4 + [1.0] * 4
    assert bench_numpy.peak_memory("softmargin", small, "float32") == {"peak_extra_mb": None, "peak_extra_x_logits": None}
