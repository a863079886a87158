"""softmargin bench --backend jax: the harness runs every implementation and writes its CSV (no timing asserted)."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

from softmargin.app import bench, bench_jax
from softmargin.app.cli import main


def test_time_group_runs_every_implementation():
    result = bench_jax.time_group(bench_jax.IMPLEMENTATIONS, (8, 5), "float32", repeat=2, threads=1)
    assert set(result) == set(bench_jax.IMPLEMENTATIONS)
    for impl, row in result.items():
        assert "error" not in row, (impl, row)
        assert row["median_ms"] > 0 and row["first_call_s"] > 0


def test_unknown_implementation_is_reported():
    assert "error" in bench_jax.time_group(["pallas"], (2, 3), "float32", repeat=1, threads=1)["pallas"]


@pytest.mark.slow
def test_cli_writes_the_csv(tmp_path, capsys, monkeypatch):
    import functools

    # one timing round instead of three: each is a fresh process per implementation (the rounds' combination is
    # bench.combine_rounds', tested with bench's)
    monkeypatch.setattr(bench_jax, "run", functools.partial(bench_jax.run, rounds=1))
    out = tmp_path / "bench-cpu-mine" / "results.csv"  # the file named is the file written, whatever the path says
    assert main(["bench", "--backend", "jax", "--shapes", "4x3", "--dtypes", "float32", "--repeat", "1", "--out", str(out)]) == 0
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.csv")] == ["bench-cpu-mine/results.csv"]
    rows = list(csv.DictReader(open(out)))
    assert [r["impl"] for r in rows] == list(bench_jax.IMPLEMENTATIONS)
    assert all(r["median_ms"] and not r["error"] for r in rows)
    assert "optax" in capsys.readouterr().out
    assert {r["peak_extra_x_logits"] for r in rows} == {""}  # 4x3: below what the memory reading resolves
    assert bench.report([{**r, "median_ms": float(r["median_ms"]), "peak_extra_x_logits": None, "first_call_s": float(r["first_call_s"])} for r in rows])


def test_threads_is_what_the_timing_processes_compute_on(monkeypatch):
    """--threads 1: XLA ignores OMP_NUM_THREADS (it sized its pool by every CPU: 4 threads busy on 2 CPUs) and JAX's
    callback ran the NumPy backend's kernel on every CPU, while the CSV said 1 thread."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nothing to limit")
    seen = []
    real = bench._in_fresh_process

    def fresh(call, what, threads, **kwargs):
        seen.append(real("computes_on()", what, threads, **kwargs))
        return {"median_ms": 1.0, "min_ms": 1.0, "first_call_s": 1.0}

    monkeypatch.setattr(bench, "_in_fresh_process", fresh)
    bench_jax.run(shapes=[(4, 3)], impls=["softmargin"], repeat=1, threads=1, rounds=1)
    assert seen == [{"platform": "cpu", "cpus": 1, "kernel_threads": 1}]


def test_jax_is_timed_on_the_cpu_whatever_its_default_device(monkeypatch):
    """The rows say device cpu and the memory is the resident size's peak, but the processes ran on jax's default
    device: with a GPU jax (here JAX_PLATFORMS=cuda stands for it) the GPU's times were written as the CPU's."""
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    for what in ("time", "memory"):
        seen = bench._in_fresh_process("computes_on()", what, 1, module="softmargin.app.bench_jax", pin=True)
        assert seen.get("platform") == "cpu", seen
