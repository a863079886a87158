"""The benchmark's machinery on a tiny problem (its numbers are not checked here: speed lives in benchmarks/)."""

from __future__ import annotations

import ast
import csv

import pytest

pytest.importorskip("torch")
from softmargin.app import bench


def test_time_group_interleaves_every_implementation_in_this_process():
    timed = bench.time_group(["softmargin", "torch eager", "floor", "no such thing"], (8, 5), "float32", 5, 1)
    for impl in ("softmargin", "torch eager", "floor"):
        assert timed[impl]["median_ms"] >= timed[impl]["min_ms"] > 0
        assert timed[impl]["first_call_s"] > 0
    assert "ValueError" in timed["no such thing"]["error"]


def test_time_group_in_turns_times_each_implementation_as_often():
    timed = bench.time_group(["softmargin", "floor"], (8, 5), "float32", 7, 1, block=3)
    assert [timed[impl]["calls"] for impl in ("softmargin", "floor")] == [7, 7]


def test_peak_memory_sees_the_gradient_of_a_large_problem():
    # the gradient (kept in x.grad, as in training) is one logits' worth: the least any implementation can need
    # (in a fresh process, with glibc returning freed blocks at once: in this one, a freed block would be reused)
    row = bench._in_fresh_process("peak_memory('softmargin', (512, 4096), 'float32', 1)", "memory", 1)
    assert 0.9 <= row["peak_extra_x_logits"] <= 1.3


def test_run_writes_one_row_per_implementation(tmp_path):
    out = tmp_path / "bench.csv"
    rows = bench.run(shapes=[(16, 7)], dtypes=["float32"], impls=["softmargin", "floor"], repeat=3, threads=1, out=out, progress=False)
    assert [r["impl"] for r in rows] == ["softmargin", "floor"]
    assert all("error" not in r and r["median_ms"] > 0 for r in rows)
    written = list(csv.DictReader(open(out)))
    assert [r["impl"] for r in written] == ["softmargin", "floor"] and written[0]["device"] == "cpu"
    assert "softmargin" in bench.report(rows)


def test_cpu_kernel_benchmark_measures_every_dtype_and_thread_count():
    import sys
    from pathlib import Path

    from softmargin.kernels import cpu

    if cpu.kernel() is None:
        pytest.skip("the CPU kernel cannot be built here")
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    try:
        import cpu_kernel
    finally:
        sys.path.pop(0)
    rows = cpu_kernel.measure((8, 40), 2)
    assert {(r["dtype"], r["threads"], r["what"]) for r in rows} == {
        (d, t, w) for d in cpu_kernel.DTYPES for t in (1, 2) for w in ("kernel", "floor")
    }
    assert all(r["median_ms"] >= r["min_ms"] > 0 for r in rows)


def test_train_step_times_both_losses_and_they_train_alike():
    """The compiled training step without compiling (the machinery, on a tiny problem): both losses give the same
    final loss after the same steps."""
    ours = bench.time_train_step("softmargin", (16, 7), 4, 3, compiled=False)
    theirs = bench.time_train_step("torch MultiLabelSoftMarginLoss", (16, 7), 4, 3, compiled=False)
    assert ours["median_ms"] > 0 and theirs["median_ms"] > 0
    assert ours["final_loss"] == pytest.approx(theirs["final_loss"], rel=1e-5)


def test_bench_writes_into_a_run_folder_by_default(tmp_path, monkeypatch, capsys):
    from softmargin.app.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--shapes", "8x5", "--dtypes", "float32", "--repeat", "2", "--no-compile", "--threads", "1"]) == 0
    written = list(tmp_path.glob("runs/bench-*/bench-cpu.csv"))
    assert len(written) == 1
    assert "load average (1 minute)" in capsys.readouterr().out  # how busy the machine was, with the timings


@pytest.mark.parametrize("argv", [[], ["--no-compile"], ["--shapes", "8x5"]])
def test_default_run_ends_with_the_compiled_training_step(tmp_path, monkeypatch, capsys, argv):
    """Issue 11 asks for the shapes and the compiled training step in the same run: the default run (no --shapes,
    with torch.compile) times the step after the shapes and writes bench-train-step.csv beside bench-cpu.csv."""
    from softmargin.app.cli import main

    steps = []
    monkeypatch.setattr(bench, "run", lambda **kwargs: [])
    monkeypatch.setattr(bench, "report", lambda rows: "")
    monkeypatch.setattr(bench, "train_step", lambda shape, **kwargs: steps.append(shape) or [
        {"impl": impl, "median_ms": 2.0, "first_call_s": 1.0, "final_loss": 0.5} for impl in bench.TRAIN_STEP_IMPLS
    ])  # fmt: skip
    assert main(["bench", "--out", str(tmp_path / "bench-cpu.csv"), *argv]) == 0
    if argv:
        assert steps == [] and not (tmp_path / "bench-train-step.csv").exists()
    else:
        assert steps == [bench.TRAIN_STEP_SHAPE] and (tmp_path / "bench-train-step.csv").exists()
        assert "SGD step" in capsys.readouterr().out


@pytest.mark.parametrize(("shape", "processes_per_round"), [((32, 10), 1), ((300, 300), 2)])
def test_tiny_shapes_time_every_implementation_in_one_process_per_round(monkeypatch, shape, processes_per_round):
    """Tiny calls are timed interleaved in one fresh process per round; larger ones one implementation per process.
    Each implementation's time is the median of its rounds either way."""
    calls = []

    def fake(call, what, threads, timeout=1800, module=""):
        calls.append((call, what))
        if what == "memory":
            return {"peak_extra_mb": 1.0, "peak_extra_x_logits": 1.0}
        group = ast.literal_eval(call[len("time_group(") :].split("]")[0] + "]")
        return {impl: {"median_ms": float(len(calls)), "min_ms": 0.5, "first_call_s": 0.1} for impl in group}

    monkeypatch.setattr(bench, "_in_fresh_process", fake)
    rows = bench.measure_group(["softmargin", "floor"], shape, "float32", 3, 1, rounds=3)
    timing = [call for call, what in calls if what == "time"]
    assert len(timing) == 3 * processes_per_round
    if processes_per_round == 1:
        assert all("['softmargin', 'floor']" in call and f"block={bench.TINY_BLOCK}" in call for call in timing)
        assert [r["median_ms"] for r in rows] == [2.0, 2.0]  # the rounds' medians: 1, 2, 3
    else:
        assert sum("['softmargin']" in call for call in timing) == 3
    assert all(r["rounds"] == 3 and r["peak_extra_x_logits"] == 1.0 for r in rows)
