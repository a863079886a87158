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


def _refused(capsys, argv, message):
    """``softmargin bench ARGV`` fails at once with one line naming the option, before measuring anything."""
    from softmargin.app.cli import main

    assert main(["bench", "--shapes", "8x5", "--dtypes", "float32", "--no-compile", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("softmargin bench: error: "), err
    assert message in err, err


@pytest.fixture
def measuring(monkeypatch):
    """Fails the test if the benchmark gets as far as measuring."""

    def refuse(*args, **kwargs):
        raise AssertionError("the benchmark ran: the options should have been refused before it")

    monkeypatch.setattr(bench, "measure_group", refuse)
    monkeypatch.setattr(bench, "_in_fresh_process", refuse)
    monkeypatch.setattr(bench, "train_step", refuse)
    monkeypatch.setattr(bench, "option_costs", refuse)
    from softmargin.app import bench_numpy

    monkeypatch.setattr(bench_numpy, "_fresh", refuse)


def test_an_existing_out_file_is_refused_before_the_run_and_kept(tmp_path, capsys, measuring):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    _refused(capsys, ["--out", str(notes)], f"--out {notes} exists: pass --force to overwrite it")
    assert notes.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _fake_fresh_process(call, what, threads, timeout=1800, module=""):
    """Instead of measuring in a fresh process: a result of the right form at once."""
    if what == "memory":
        return {"peak_extra_mb": 1.0, "peak_extra_x_logits": 1.0}
    group = ast.literal_eval(call[len("time_group(") :].split("]")[0] + "]")
    return {impl: {"median_ms": 1.0, "min_ms": 0.5, "first_call_s": 0.1} for impl in group}


def test_force_overwrites_an_existing_out_file(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "_in_fresh_process", _fake_fresh_process)
    out = tmp_path / "bench.csv"
    out.write_text("old\n")
    with pytest.raises(ValueError, match="exists: pass --force"):
        bench.run(shapes=[(8, 5)], dtypes=["float32"], impls=["floor"], repeat=1, threads=1, out=out, progress=False)
    assert out.read_text() == "old\n"
    bench.run(shapes=[(8, 5)], dtypes=["float32"], impls=["floor"], repeat=1, threads=1, out=out, progress=False,
              force=True)  # fmt: skip
    assert [r["impl"] for r in csv.DictReader(open(out))] == ["floor"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.csv"]  # no temporary file left beside it


@pytest.mark.parametrize("force", [False, True])
def test_out_a_folder_or_under_a_file_is_refused_before_the_run(tmp_path, capsys, measuring, force):
    folder = tmp_path / "d"
    folder.mkdir()
    (tmp_path / "notes.txt").write_text("my notes\n")
    _refused(capsys, ["--out", str(folder)], f"--out {folder} is a folder: expected a CSV file name")
    under = tmp_path / "notes.txt" / "x.csv"
    _refused(capsys, ["--out", str(under)], f"--out {under}: {tmp_path / 'notes.txt'} is a file: expected a folder")
    for out in (folder, under):  # --force does not change that (bench.run: the CLI has no --force yet)
        with pytest.raises(ValueError, match="is a folder|is a file"):
            bench.check_out(out, force=force)
    with pytest.raises(ValueError, match="is not a regular file"):
        bench.check_out("/dev/null", force=force)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "notes.txt"] and not list(folder.iterdir())


def test_write_csv_leaves_no_temporary_file_when_it_fails(tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        bench.write_csv(folder, ["a"], [{"a": 1}])

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(bench.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        bench.write_csv(tmp_path / "out.csv", ["a"], [{"a": 1}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and not list(folder.iterdir())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--repeat", "0"], "--repeat 0: expected at least 1 timed call per configuration"),
        (["--repeat", "-1"], "--repeat -1: expected at least 1"),
        (["--threads", "0"], "--threads 0: expected at least 1 thread"),
        (["--threads", "-2"], "--threads -2: expected at least 1 thread"),
        (["--device", "bogus"], "--device bogus: expected cpu, cuda or cuda:N"),
        (["--device", "cuda:x"], "--device cuda:x: expected cpu, cuda or cuda:N"),
    ],
)
def test_bad_options_are_refused_before_the_run(tmp_path, capsys, measuring, argv, message):
    _refused(capsys, [*argv, "--out", str(tmp_path / "bench.csv")], message)
    assert not list(tmp_path.iterdir())


def test_a_cuda_device_this_machine_lacks_is_refused_by_name(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="--device cuda: this machine has no CUDA device"):
        bench.check_options(device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    bench.check_options(device="cuda:1")
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 CUDA devices: expected cuda:0 to cuda:"):
        bench.check_options(device="cuda:2")


def test_the_other_entry_points_check_their_options_too(tmp_path):
    with pytest.raises(ValueError, match="--repeat 0"):
        bench.train_step((8, 5), repeat=0, threads=1)
    with pytest.raises(ValueError, match="--device bogus"):
        bench.train_step((8, 5), repeat=1, threads=1, device="bogus")
    with pytest.raises(ValueError, match="--repeat 0"):
        bench.option_costs((8, 5), repeat=0)
    with pytest.raises(ValueError, match="--threads 0"):
        bench.extreme(threads=0)
    out = tmp_path / "extreme.csv"
    out.write_text("old\n")
    with pytest.raises(ValueError, match="exists: pass --force"):
        bench.extreme(labels=[10], threads=1, out=out, progress=False)
    assert out.read_text() == "old\n"


@pytest.mark.parametrize(("hidden", "message"), [
    (("jax",), "--backend jax needs jax, not installed here: pip install 'softmargin[jax]'"),
    (("optax",), "--backend jax needs optax, not installed here: pip install optax"),
    (("jax", "optax"), "--backend jax needs jax and optax, not installed here: pip install 'softmargin[jax]' optax"),
    (("torch",), "--backend torch needs torch, not installed here: pip install 'softmargin[torch]'"),
])  # fmt: skip
def test_a_backend_without_its_packages_is_refused_saying_what_to_install(monkeypatch, hidden, message):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name in hidden else found("csv"))
    backend = "torch" if hidden == ("torch",) else "jax"
    with pytest.raises(ImportError) as refused:
        bench.check_options(backend=backend)
    assert str(refused.value) == message
    bench.check_options(backend="numpy")  # numpy needs nothing more than softmargin itself


# --- the bench command checks every backend's options and files up front -----------------------------------------


def _refused_up_front(capsys, argv, message):
    from softmargin.app.cli import main

    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("softmargin bench: error: ") and message in err, err


def test_jax_without_jax_is_refused_up_front(monkeypatch, capsys, measuring, tmp_path):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else found("csv"))
    _refused_up_front(capsys, ["--backend", "jax", "--out", str(tmp_path / "b.csv")], "needs jax, not installed here: pip install 'softmargin[jax]'")


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_other_backends_check_repeat_threads_and_out(capsys, measuring, tmp_path, backend):
    _refused_up_front(capsys, ["--backend", backend, "--repeat", "0", "--out", ""], "--repeat 0")
    _refused_up_front(capsys, ["--backend", backend, "--threads", "0", "--out", ""], "--threads 0")
    _refused_up_front(capsys, ["--backend", backend, "--device", "bogus", "--out", ""], "--device bogus")
    (tmp_path / f"bench-{backend}.csv").write_text("mine\n")
    _refused_up_front(capsys, ["--backend", backend, "--out", str(tmp_path / "bench-cpu.csv")], f"bench-{backend}.csv exists: pass --force")
    assert (tmp_path / f"bench-{backend}.csv").read_text() == "mine\n"


def test_extreme_train_step_and_the_default_runs_training_step_csv(capsys, measuring, tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text("mine\n")
    _refused_up_front(capsys, ["--extreme", "--out", str(notes)], "exists: pass --force")
    step = tmp_path / "bench-train-step.csv"
    step.write_text("mine\n")
    _refused_up_front(capsys, ["--train-step", "--out", str(tmp_path / "new.csv")], "bench-train-step.csv exists")
    _refused_up_front(capsys, ["--out", str(tmp_path / "new.csv")], "bench-train-step.csv exists")  # the default run ends with it
    assert notes.read_text() == step.read_text() == "mine\n"


def test_force_lets_the_run_overwrite(monkeypatch, capsys, tmp_path):
    out = tmp_path / "bench.csv"
    out.write_text("old\n")
    monkeypatch.setattr(bench, "measure_group", lambda impls, *a, **k: [{"impl": i, "shape": "8x5", "dtype": "float32", "error": "x"} for i in impls])
    from softmargin.app.cli import main

    assert main(["bench", "--shapes", "8x5", "--no-compile", "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("device,shape")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.csv"]
