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


def test_report_where_softmargin_itself_failed_shows_the_error_and_the_anchors():
    """A run where every softmargin call failed (SOFTMARGIN_BACKEND=triton on the CPU without the interpreter) still
    prints its table: the report raised KeyError 'median_ms' at the floor row, after the whole run."""
    base = {"shape": "32x10", "dtype": "float32", "first_call_s": 0.01, "peak_extra_x_logits": None}
    rows = [{"shape": "32x10", "dtype": "float32", "impl": "softmargin", "error": "RuntimeError: needs CUDA tensors"},
            {**base, "impl": "torch eager", "median_ms": 0.08}, {**base, "impl": "floor", "median_ms": 0.002}]  # fmt: skip
    table = bench.report(rows).splitlines()
    assert "needs CUDA tensors" in table[2]
    assert table[3].split()[:4] == ["32x10", "float32", "torch", "eager"] and table[3].split()[6] == "-"
    assert "x floor" not in table[4]


def test_write_csv_keeps_small_timings_and_the_final_loss_to_six_significant_digits(tmp_path):
    """The CSV is the record the tables are recomputed from: at four fixed decimals a floor of 0.000412 ms was 0.0004
    (the printed "softmargin = 181.55x floor" read 187x from the file) and the training step's final loss 0.6226."""
    out = tmp_path / "b.csv"
    bench.write_csv(out, ["impl", "median_ms", "final_loss", "first_call_s"],
                    [{"impl": "floor", "median_ms": 0.000412345, "final_loss": 0.62262512, "first_call_s": 1234.56789}])  # fmt: skip
    (row,) = csv.DictReader(open(out))
    assert row == {"impl": "floor", "median_ms": "0.000412345", "final_loss": "0.622625", "first_call_s": "1234.57"}


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
    Each implementation's time is the median of its rounds either way. Memory: only where it is measurable (300x300
    float32, 352 KiB, is; 32x10 is not, and no process is started for it)."""
    calls = []

    def fake(call, what, threads, timeout=1800, module=""):
        calls.append((call, what))
        if what == "memory":
            return {"peak_extra_mb": 1.0, "peak_extra_x_logits": 1.0}
        group = ast.literal_eval(call[len("time_group(") :].split("]")[0] + "]")
        return {impl: {"median_ms": float(len(calls)), "min_ms": 0.5, "first_call_s": 0.1} for impl in group}

    monkeypatch.setattr(bench, "_in_fresh_process", fake)
    monkeypatch.setattr(bench, "memory_floor", lambda threads=1: 1 << 18)  # as on this 2-CPU machine, whatever runs it
    rows = bench.measure_group(["softmargin", "floor"], shape, "float32", 3, 1, rounds=3)
    timing = [call for call, what in calls if what == "time"]
    assert len(timing) == 3 * processes_per_round
    if processes_per_round == 1:
        assert all("['softmargin', 'floor']" in call and f"block={bench.TINY_BLOCK}" in call for call in timing)
        assert [r["median_ms"] for r in rows] == [2.0, 2.0]  # the rounds' medians: 1, 2, 3
    else:
        assert sum("['softmargin']" in call for call in timing) == 3
    assert all(r["rounds"] == 3 for r in rows)
    measured = bench.memory_measurable(shape, "float32")
    assert measured == (shape == (300, 300))
    assert [what for _, what in calls].count("memory") == (2 if measured else 0)
    assert all(r.get("peak_extra_x_logits") == (1.0 if measured else None) for r in rows)


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


def _mkstemp_refused(monkeypatch):
    import errno
    import tempfile

    def refused(prefix, suffix, dir):
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}x1y2z3{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", refused)


@pytest.mark.parametrize("real", [False, True])
def test_an_out_folder_nothing_can_be_written_in_is_refused_before_the_run(tmp_path, monkeypatch, capsys, measuring, real):
    """A read-only folder (or /proc, where root cannot make a file either) was found only when the CSV was written,
    after the whole run, and named by the hidden temporary file: '.b.csv.jiy4jqeu.tmp: Permission denied'."""
    import os

    if real:
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc")
        out, folder, reason = "/proc/b.csv", "/proc", ""
    else:
        _mkstemp_refused(monkeypatch)
        out, folder, reason = str(tmp_path / "new" / "b.csv"), str(tmp_path), "Permission denied"
    _refused_up_front(capsys, ["--options", "--shapes", "8x5", "--out", out], f"--out {out}: nothing can be written in {folder} ({reason}")


def test_write_csv_names_the_file_asked_for_where_it_cannot_write(tmp_path, monkeypatch):
    _mkstemp_refused(monkeypatch)
    with pytest.raises(OSError, match=f"^\\[Errno 13\\] {tmp_path / 'b.csv'}: cannot write there \\(Permission denied\\)$"):
        bench.write_csv(tmp_path / "b.csv", ["a"], [{"a": 1.0}])


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
        bench.option_costs([(8, 5)], repeat=0)
    with pytest.raises(ValueError, match="--threads 0"):
        bench.option_costs([(8, 5)], repeat=1, threads=0)
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
    (tmp_path / "mine.csv").write_text("mine\n")
    _refused_up_front(capsys, ["--backend", backend, "--out", str(tmp_path / "mine.csv")], "mine.csv exists: pass --force")
    assert (tmp_path / "mine.csv").read_text() == "mine\n"


def test_extreme_train_step_and_the_default_runs_training_step_csv(capsys, measuring, tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text("mine\n")
    for mode in ("--extreme", "--train-step", "--options"):
        _refused_up_front(capsys, [mode, "--out", str(notes)], "notes.csv exists: pass --force")
    step = tmp_path / "bench-train-step.csv"
    step.write_text("mine\n")
    _refused_up_front(capsys, ["--out", str(tmp_path / "new.csv")], "bench-train-step.csv exists")  # the default run ends with it
    _refused_up_front(capsys, ["--out", str(step), "--force"], "the default run writes its compiled training step to bench-train-step.csv")
    assert notes.read_text() == step.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench-train-step.csv", "notes.csv"]


def test_force_lets_the_run_overwrite(monkeypatch, capsys, tmp_path):
    out = tmp_path / "bench.csv"
    out.write_text("old\n")
    monkeypatch.setattr(bench, "measure_group", lambda impls, *a, **k: [{"impl": i, "shape": "8x5", "dtype": "float32", "error": "x"} for i in impls])
    from softmargin.app.cli import main

    assert main(["bench", "--shapes", "8x5", "--no-compile", "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("device,shape")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.csv"]


# --- --out names the file written, in every run; nothing else is derived from its path (review item 6) ------------


def _fake_extreme_process(call, what, threads, timeout=1800, module=""):
    return {"median_s": 1.0} if what == "time" else {"peak_extra_mb": 1.0, "grad_mb": 1.0}


def _fake_train_step(shape, **kwargs):
    return [{"impl": impl, "shape": "x".join(map(str, shape)), "median_ms": 2.0, "first_call_s": 1.0, "final_loss": 0.5,
             "compiled": kwargs.get("compiled", True)} for impl in bench.TRAIN_STEP_IMPLS]  # fmt: skip


def _fake_option_costs(shapes, dtypes, repeat, threads):
    return [{"option": o, "shape": "x".join(map(str, s)), "dtype": d, "median_ms": 1.0, "x_plain": 1.0}
            for s in shapes for d in dtypes for o in bench.OPTION_CASES]  # fmt: skip


def _fake_measure_group(impls, shape, dtype, repeat, threads, device="cpu", rounds=3):
    return [{"impl": i, "shape": "x".join(map(str, shape)), "dtype": dtype, "device": device, "median_ms": 1.0,
             "first_call_s": 0.1} for i in impls]  # fmt: skip


def _fake_numpy_fresh(call, impl, threads, memory=False):
    return {"median_ms": 1.0, "min_ms": 1.0, "first_call_s": 0.1}


@pytest.fixture
def fake_measuring(monkeypatch):
    """Every run of the command answers at once with results of the right form."""
    import torch

    from softmargin.app import bench_numpy

    monkeypatch.setattr(bench, "measure_group", _fake_measure_group)
    monkeypatch.setattr(bench, "train_step", _fake_train_step)
    monkeypatch.setattr(bench, "option_costs", _fake_option_costs)
    monkeypatch.setattr(bench, "_in_fresh_process", _fake_extreme_process)  # --extreme's (and jax's: refused below)
    monkeypatch.setattr(bench_numpy, "_fresh", _fake_numpy_fresh)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # --device cuda accepted; measure_group is fake
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


#: Each run, and the CSV it writes in its run folder without --out.
RUNS = [
    ([], "bench-cpu.csv"),
    (["--no-compile"], "bench-cpu.csv"),
    (["--device", "cuda", "--no-compile"], "bench-cuda.csv"),
    (["--backend", "numpy"], "bench-numpy.csv"),
    (["--extreme"], "bench-extreme.csv"),
    (["--options"], "bench-options.csv"),
    (["--train-step"], "bench-train-step.csv"),
]


@pytest.mark.parametrize(("argv", "default"), RUNS)
def test_out_is_the_file_written_even_where_its_path_says_bench_cpu(tmp_path, monkeypatch, capsys, fake_measuring, argv, default):
    """The review's repro: --out d/bench-cpu-mine/out.csv with --backend numpy wrote d/bench-numpy-mine/out.csv (and
    with --force overwrote it). Now every run writes the file named, and only the default run adds a file, its
    training step's, announced, beside it."""
    from softmargin.app.cli import main

    mine, other = tmp_path / "bench-cpu-mine" / "out.csv", tmp_path / f"{default[:-4]}-mine" / "out.csv"
    for path, text in ((mine, "my precious results\n"), (other, "OTHER precious file\n")):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert main(["bench", *argv, "--out", str(mine), "--force"]) == 0
    assert f"written to {mine}" in capsys.readouterr().out
    assert mine.read_text() != "my precious results\n" and mine.read_text().count("\n") > 1
    if other != mine:
        assert other.read_text() == "OTHER precious file\n"
    expected = {"bench-cpu-mine/out.csv", f"{default[:-4]}-mine/out.csv"}
    if argv == []:
        expected.add("bench-cpu-mine/bench-train-step.csv")  # the default run ends with the training step
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()} == expected


@pytest.mark.parametrize(("argv", "default"), RUNS)
def test_without_out_each_run_writes_its_own_name_in_a_run_folder(tmp_path, monkeypatch, capsys, fake_measuring, argv, default):
    from softmargin.app.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["bench", *argv]) == 0
    names = sorted(p.name for p in tmp_path.glob("runs/bench-*/*"))
    assert names == sorted([default, *(["bench-train-step.csv"] if argv == [] else [])])
    assert len(list(tmp_path.glob("runs/*"))) == 1


def test_the_default_run_with_out_writes_that_file_and_its_training_step_beside_it(tmp_path, capsys, fake_measuring):
    from softmargin.app.cli import main

    out = tmp_path / "mine.csv"
    assert main(["bench", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench-train-step.csv", "mine.csv"]
    assert list(csv.DictReader(open(out)))[0]["device"] == "cpu"
    assert {r["impl"] for r in csv.DictReader(open(tmp_path / "bench-train-step.csv"))} == set(bench.TRAIN_STEP_IMPLS)


# --- an option the chosen run would not use is refused by name, before anything is measured (review item 12) -----


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--options", "--backend", "numpy"], "--backend numpy: --options times the torch loss and would ignore it"),
        (["--options", "--device", "cuda"], "--device cuda: --options would ignore it (it measures on the CPU only)"),
        (["--options", "--no-compile"], "--no-compile: --options would ignore it"),
        (["--extreme", "--shapes", "8x4"], "--shapes 8x4: --extreme measures sizes of its own"),
        (["--extreme", "--dtypes", "bfloat16"], "--dtypes bfloat16: --extreme runs float32 only; drop it"),
        (["--extreme", "--backend", "jax"], "--backend jax: --extreme times the torch loss"),
        (["--extreme", "--device", "cuda"], "--device cuda: --extreme would ignore it"),
        (["--extreme", "--no-compile"], "--no-compile: --extreme would ignore it"),
        (["--train-step", "--dtypes", "float16"], "--dtypes float16: --train-step runs float32 only"),
        (["--train-step", "--backend", "numpy"], "--backend numpy: --train-step times the torch loss"),
        (["--backend", "numpy", "--device", "cuda"], "--device cuda: --backend numpy would ignore it (NumPy computes on the CPU)"),
        (["--backend", "numpy", "--dtypes", "float32", "bfloat16"], "--dtypes bfloat16: NumPy has no bfloat16; --backend numpy measures float32, float64, float16"),
        (["--backend", "numpy", "--no-compile"], "--no-compile: --backend numpy would ignore it"),
        (["--backend", "jax", "--no-compile"], "--no-compile: --backend jax would ignore it (jax.jit always compiles"),
        (["--backend", "jax", "--device", "cuda"], "--device cuda: --backend jax would ignore it"),
        (["--out", "", "--force"], "--force: --out '' writes no file"),
        (["--out", "-"], "--out -: bench prints its table to standard output"),
    ],
)
def test_options_the_run_would_ignore_are_refused_before_it(tmp_path, monkeypatch, capsys, measuring, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JAX_ENABLE_X64", raising=False)
    _refused_up_front(capsys, argv, message)
    assert not list(tmp_path.iterdir())  # not even a run folder


def test_jax_float64_needs_x64(monkeypatch):
    import argparse

    args = argparse.Namespace(extreme=False, options=False, train_step=False, backend="jax", shapes=None, dtypes=["float64"],
                              repeat=1, threads=1, device="cpu", no_compile=False, out="", force=False)  # fmt: skip
    monkeypatch.delenv("JAX_ENABLE_X64", raising=False)
    with pytest.raises(ValueError, match="--dtypes float64: JAX computes float64 only with JAX_ENABLE_X64=1"):
        bench.check_command(args)
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    monkeypatch.setenv("JAX_ENABLE_X64", "1")
    assert bench.check_command(args) == "jax"


@pytest.mark.parametrize("argv", [["--options", "--train-step"], ["--extreme", "--options"], ["--extreme", "--options", "--train-step"]])
def test_two_runs_at_once_are_refused_naming_them(capsys, measuring, argv):
    from softmargin.app.cli import main

    with pytest.raises(SystemExit) as refused:
        main(["bench", *argv])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "not allowed with argument" in err and all(a in err for a in argv[:2]), err
    import argparse

    with pytest.raises(ValueError, match="each is a run of its own: choose one"):
        bench.command_mode(argparse.Namespace(extreme=True, options=True, train_step=False, backend="torch"))


def test_options_honours_out_threads_dtypes_and_every_shape(tmp_path, capsys):
    """--options used to write no CSV despite --out, time float32 on torch's threads whatever --dtypes and --threads
    said, and drop every shape after the first. Really measured here, on tiny shapes, one call each."""
    import torch

    from softmargin.app.cli import main

    out = tmp_path / "opt.csv"
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "--options", "--shapes", "4x3", "5x2", "--repeat", "1", "--dtypes", "float64", "--threads", "1",
                     "--out", str(out)]) == 0  # fmt: skip
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    rows = list(csv.DictReader(open(out)))
    assert [(r["shape"], r["option"]) for r in rows] == [(s, o) for s in ("4x3", "5x2") for o in bench.OPTION_CASES]
    assert {r["dtype"] for r in rows} == {"float64"} and {r["threads"] for r in rows} == {"1"}
    assert all(float(r["median_ms"]) > 0 and not r["error"] for r in rows)
    assert f"written to {out}" in capsys.readouterr().out


def test_train_step_honours_no_compile_and_every_shape(tmp_path, monkeypatch, capsys):
    """--train-step --no-compile used to compile all the same; it also timed only the first of --shapes."""
    from softmargin.app.cli import main

    calls = []

    def fake(call, what, threads, timeout=1800, module=""):
        calls.append(call)
        return {"median_ms": 1.0, "min_ms": 1.0, "first_call_s": 0.1, "final_loss": 0.5}

    monkeypatch.setattr(bench, "_in_fresh_process", fake)
    out = tmp_path / "step.csv"
    assert main(["bench", "--train-step", "--no-compile", "--shapes", "8x4", "6x3", "--repeat", "1", "--threads", "1", "--out", str(out)]) == 0
    assert calls and all("compiled=False" in call for call in calls)
    per_shape = 5 * len(bench.TRAIN_STEP_IMPLS)  # five rounds on the CPU
    assert [sum(shape in call for call in calls) for shape in ("(8, 4)", "(6, 3)")] == [per_shape, per_shape] == [len(calls) // 2] * 2
    rows = list(csv.DictReader(open(out)))
    assert [(r["shape"], r["impl"]) for r in rows] == [(s, i) for s in ("8x4", "6x3") for i in bench.TRAIN_STEP_IMPLS]
    assert {r["compiled"] for r in rows} == {"False"}
    assert "eager (--no-compile)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step.csv"]


def test_extreme_honours_repeat(tmp_path, monkeypatch, capsys):
    from softmargin.app.cli import main

    calls = []
    monkeypatch.setattr(bench, "_in_fresh_process", lambda call, what, *a, **k: calls.append(call) or _fake_extreme_process(call, what, 1))
    assert main(["bench", "--extreme", "--repeat", "1", "--threads", "1", "--out", str(tmp_path / "x.csv")]) == 0
    assert calls and all("repeat=1," in call for call in calls)
    calls.clear()
    assert main(["bench", "--extreme", "--threads", "1", "--out", str(tmp_path / "y.csv")]) == 0
    assert calls and all(f"repeat={bench.EXTREME_REPEAT}," in call for call in calls)  # its own default, not 15


# --- --device is checked up front and named as typed, in every run (review item 13) --------------------------------


@pytest.mark.parametrize("run", [[], ["--train-step"], ["--options"], ["--extreme"], ["--backend", "numpy"], ["--backend", "jax"]])
@pytest.mark.parametrize("device", ["bogus", "gpu", "cuda:x"])
def test_a_bad_device_is_refused_by_name_before_anything(tmp_path, monkeypatch, capsys, measuring, run, device):
    from softmargin.app.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["bench", *run, "--device", device]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no table, no header, no load average: nothing started
    assert captured.err.strip() == f"softmargin bench: error: --device {device}: expected cpu, cuda or cuda:N (N: the index of a CUDA device)"
    assert not list(tmp_path.iterdir())


# --- memory: "–" below what the reading resolves (review item 19) ---------------------------------------------------


def test_memory_floor_is_the_resident_counters_resolution(monkeypatch):
    import types

    monkeypatch.setattr(bench.os, "sysconf", lambda name: 4096)
    monkeypatch.setattr(bench.os, "uname", lambda: types.SimpleNamespace(release="6.18.44-fc"))
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    assert bench.memory_floor() == 2 * 32 * 4096  # two batches of max(32, 2 x CPUs) pages: 256 KiB
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 64)
    assert bench.memory_floor() == 2 * 128 * 4096
    monkeypatch.setattr(bench.os, "uname", lambda: types.SimpleNamespace(release="5.15.0-91-generic"))
    assert bench.memory_floor(threads=2) == 2 * 64 * 3 * 4096  # per thread, every 64 page faults
    monkeypatch.setattr(bench.os, "uname", lambda: types.SimpleNamespace(release="6.18.44-fc"))
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    assert not bench.memory_measurable((8, 4), "float32") and not bench.memory_measurable((64, 80), "float32")
    assert not bench.memory_measurable((128, 256), "float32")  # 128 KiB: softmargin read 0x here, less than its gradient
    assert bench.memory_measurable((256, 1000), "bfloat16") and bench.memory_measurable((256, 256), "float32")
    assert bench.memory_measurable((8, 4), "float32", device="cuda")  # the caching allocator counts exactly


def test_tiny_shapes_print_a_dash_for_memory_not_noise(tmp_path, monkeypatch, capsys):
    """The review's repro: --shapes 8x4 printed 96.00 for softmargin and 0.00 for torch's loss. Now "–", as the README's
    tables show, and an empty CSV cell; a large shape is still measured, in a process kept on one CPU."""
    from softmargin.app.cli import main

    calls = []

    def fake(call, what, threads, timeout=1800, module=""):
        calls.append((call, what))
        return _fake_fresh_process(call, what, threads)

    monkeypatch.setattr(bench, "_in_fresh_process", fake)
    monkeypatch.setattr(bench, "memory_floor", lambda threads=1: 1 << 18)
    out = tmp_path / "b.csv"
    assert main(["bench", "--shapes", "8x4", "256x1000", "--dtypes", "float32", "--repeat", "1", "--no-compile", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    small = [line for line in table.splitlines() if line.startswith("8x4")]
    large = [line for line in table.splitlines() if line.startswith("256x1000")]
    assert len(small) == len(large) == 4
    assert all(" – " in line for line in small) and not any(" – " in line for line in large)
    memory = [call for call, what in calls if what == "memory"]
    assert len(memory) == 4 and all("(256, 1000)" in call for call in memory)
    cells = {(r["shape"], r["impl"]): r["peak_extra_x_logits"] for r in csv.DictReader(open(out))}
    assert {v for (shape, _), v in cells.items() if shape == "8x4"} == {""}
    assert {float(v) for (shape, _), v in cells.items() if shape == "256x1000"} == {1.0}


def test_peak_memory_below_the_floor_is_not_a_reading():
    assert bench.peak_memory("softmargin", (8, 4), "float32", 1) == {"peak_extra_mb": None, "peak_extra_x_logits": None}


def test_memory_processes_run_on_one_cpu():
    """So that the resident-size counters lag by one CPU's batch at most (:func:`bench.memory_floor`)."""
    import os

    assert bench._in_fresh_process("os.sched_getaffinity(0).__len__()", "memory", 1) == 1
    assert bench._in_fresh_process("os.sched_getaffinity(0).__len__()", "time", 1) == len(os.sched_getaffinity(0))


# --- a value given twice is refused: its ratios would be taken against another group's softmargin time -------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shapes", "8x5", "16x3", "8X5", "--no-compile"], "--shapes 8x5 16x3 8x5: 8x5 given twice: expected each value once"),
        (["--shapes", "8x5", "--dtypes", "float32", "bfloat16", "float32", "--no-compile"], "--dtypes float32 bfloat16 float32: float32 given twice"),
        (["--train-step", "--shapes", "8x5", "8x5"], "--shapes 8x5 8x5: 8x5 given twice"),
        (["--backend", "numpy", "--shapes", "8x5", "8x5"], "--shapes 8x5 8x5: 8x5 given twice"),
        (["--extreme", "--shapes", "8x5", "8x5"], "--shapes 8x5 8x5: --extreme measures sizes of its own"),  # the whole option
    ],
)
def test_a_shape_or_dtype_given_twice_is_refused_before_the_run(tmp_path, monkeypatch, capsys, measuring, argv, message):
    """--shapes 8x5 16x3 8x5 measured 8x5 twice, and the report divided the second group's anchors by the first
    group's softmargin time (it looks softmargin's row up by shape and dtype): ratios against a softmargin time not
    measured with them, in a row that says they were."""
    monkeypatch.chdir(tmp_path)
    _refused_up_front(capsys, argv, message)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("during", ["shapes", "training step"])
def test_an_interrupted_default_run_says_which_file_it_wrote(tmp_path, monkeypatch, capsys, fake_measuring, during):
    """The default run writes its CSV, then times the training step: Ctrl-C there said "nothing was written" while
    the CSV it had just announced ("written to ...") was on disk."""
    from softmargin.app.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "measure_group" if during == "shapes" else "train_step", interrupted)
    out = tmp_path / "mine.csv"
    assert main(["bench", "--out", str(out)]) == 130
    last = capsys.readouterr().err.splitlines()[-1]
    if during == "shapes":
        assert last == "softmargin bench: interrupted; nothing was written" and not list(tmp_path.iterdir())
    else:
        assert last == f"softmargin bench: interrupted; written before it: {out}; nothing else"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.csv"]


def test_a_measuring_process_killed_or_silent_is_an_error_row_that_says_so():
    """SIGKILL (the out-of-memory killer's) left an empty stderr: the row's error read "no output"; a process that
    printed nothing on success raised IndexError and ended the whole run with a traceback."""
    killed = bench._in_fresh_process("os.kill(__import__('os').getpid(), 9)", "time", 1)
    assert killed == {"error": "killed by SIGKILL (out of memory? the kernel's OOM killer sends it)"}
    aborted = bench._in_fresh_process("os.abort()", "time", 1)
    assert aborted == {"error": "killed by SIGABRT"}
    silent = bench._in_fresh_process("sys.stdout.write('') and None or __import__('os')._exit(0)", "time", 1)
    assert silent["error"] == "printed no result: ''"
    failed = bench._in_fresh_process("no_such_function()", "time", 1)
    assert failed == {"error": "AttributeError: module 'softmargin.app.bench' has no attribute 'no_such_function'"}


# --- a median of an even count is the mean of the middle two, not the slower one -----------------------------------


def _fake_clock(monkeypatch, module, durations):
    """Each step advances a fake clock by the next of ``durations`` (seconds): what the timing loop measures."""
    import time

    clock = [0.0]
    left = iter(durations)

    def step(*args, **kwargs):
        clock[0] += next(left)

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(module, "_step_fn", lambda *args: step)


def test_the_median_of_two_calls_is_their_mean(monkeypatch):
    """--repeat 2 wrote the slower of the two calls as median_ms (sorted[len // 2]): 3 ms for calls of 1 and 3 ms."""
    import sys

    from softmargin.app import bench_numpy

    _fake_clock(monkeypatch, bench, [5.0, 5.0, 0.001, 0.003])  # first call, warm-up, two timed calls
    timed = bench.time_group(["softmargin"], (2, 3), "float32", 2, 1)["softmargin"]
    assert timed["median_ms"] == pytest.approx(2.0) and timed["min_ms"] == pytest.approx(1.0)
    _fake_clock(monkeypatch, bench_numpy, [5.0, 5.0, 0.003, 0.001])
    monkeypatch.delitem(sys.modules, "torch")  # time_one checks that its process never imported torch (restored after)
    timed = bench_numpy.time_one("softmargin", (2, 3), "float32", 2)
    assert timed["median_ms"] == pytest.approx(2.0) and timed["min_ms"] == pytest.approx(1.0)


def test_two_good_rounds_of_three_give_their_mean():
    """A round that failed left two: the slower one was reported as the median of the rounds."""
    rounds = [{"median_ms": 1.0, "min_ms": 0.5, "first_call_s": 0.1}, {"error": "RuntimeError: x"},
              {"median_ms": 3.0, "min_ms": 0.7, "first_call_s": 0.2}]  # fmt: skip
    assert bench.combine_rounds(rounds) == {"median_ms": 2.0, "min_ms": 0.5, "first_call_s": 0.1, "rounds": 2}


def test_the_tables_keep_three_significant_digits_of_small_times(capsys, fake_measuring, monkeypatch, tmp_path):
    """A floor of 0.000412 ms printed as 0.000 (a median of zero) and a first call of 46 us as 0.00 s; --options
    and the training step printed two decimals of a millisecond."""
    from softmargin.app.cli import main

    base = {"shape": "32x10", "dtype": "float32", "peak_extra_x_logits": None}
    rows = [{**base, "impl": "softmargin", "median_ms": 0.0283, "first_call_s": 0.0157},
            {**base, "impl": "floor", "median_ms": 0.000412, "first_call_s": 4.6e-05},
            {**base, "impl": "torch eager", "median_ms": 61.4, "first_call_s": 1.5}]  # fmt: skip
    lines = bench.report(rows).splitlines()[2:]
    for line, median_ms, first_call_s in zip(lines, ("0.0283", "0.000412", "61.400"), ("0.0157", "4.60e-05", "1.500")):
        assert f" {median_ms} " in line and line.endswith(f" {first_call_s}"), line
    assert "softmargin = 68.69x floor" in bench.report(rows)  # from the unrounded times, as before
    monkeypatch.setattr(bench, "option_costs", lambda *a: [{"option": "plain", "shape": "4x3", "dtype": "float32",
                                                            "median_ms": 0.0123, "x_plain": 1.0}])  # fmt: skip
    assert main(["bench", "--options", "--shapes", "4x3", "--out", ""]) == 0
    assert "0.0123" in capsys.readouterr().out
    monkeypatch.setattr(bench, "train_step", lambda shape, **k: [{"impl": i, "shape": "4x3", "median_ms": 0.0456,
                                                                  "first_call_s": 0.0321, "final_loss": 0.5} for i in bench.TRAIN_STEP_IMPLS])  # fmt: skip
    assert main(["bench", "--train-step", "--shapes", "4x3", "--out", ""]) == 0
    step = [line for line in capsys.readouterr().out.splitlines() if line.startswith("4x3")]
    assert len(step) == 2 and all(" 0.0456 " in line and " 0.0321 " in line for line in step), step


def test_jax_threads_beyond_the_cpus_available_is_refused(tmp_path, monkeypatch, capsys, measuring):
    """--backend jax --threads 8 on 2 CPUs: XLA ran on the 2 (its pool is the CPUs the process may run on) and every
    row said threads 8."""
    import os

    pytest.importorskip("jax")
    pytest.importorskip("optax")
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.chdir(tmp_path)
    _refused_up_front(capsys, ["--backend", "jax", "--threads", str(cpus + 6), "--shapes", "4x3"],
                      f"--threads {cpus + 6}: --backend jax runs XLA on that many of the CPUs this process may use")  # fmt: skip
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("run", [["--no-compile"], ["--backend", "numpy"], ["--options"], ["--train-step"]])
def test_a_shape_larger_than_the_machines_memory_is_refused_before_the_run(tmp_path, monkeypatch, capsys, measuring, run):
    """--shapes 100000x100000 started fifteen measuring processes that each failed to allocate its logits (or, just
    under the limit, were ended by the out-of-memory killer, with whatever else it chose)."""
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1 << 18}  # 1 GiB
    monkeypatch.setattr(bench.os, "sysconf", lambda name: pages.get(name, 4096))
    monkeypatch.chdir(tmp_path)
    _refused_up_front(capsys, [*run, "--shapes", "8x5", "20000x10000", "--dtypes", "float32"],
                      "--shapes 20000x10000: its float32 logits, target and gradient alone take 2.2 GiB, more than this "
                      "machine's 1.0 GiB of memory: expected a smaller shape")  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_the_csv_says_how_many_rounds_each_median_is_of(tmp_path, monkeypatch):
    """A round that failed was dropped without a trace: the CSV's median read as the usual three rounds' when it was
    two rounds'."""
    from softmargin.app import bench_numpy

    calls = []

    def fake(call, what, threads, timeout=1800, module=""):
        calls.append(call)
        if "'softmargin'" in call and len(calls) == 3:  # softmargin's second round
            return {"error": "RuntimeError: a glitch"}
        return _fake_fresh_process(call, what, threads)

    monkeypatch.setattr(bench, "_in_fresh_process", fake)
    out = tmp_path / "b.csv"
    bench.run(shapes=[(300, 300)], dtypes=["float32"], impls=["softmargin", "floor"], repeat=1, threads=1, out=out, progress=False)
    assert {r["impl"]: r["rounds"] for r in csv.DictReader(open(out))} == {"softmargin": "2", "floor": "3"}
    monkeypatch.setattr(bench_numpy, "_fresh", lambda call, impl, threads, memory=False: {"median_ms": 1.0, "min_ms": 1.0, "first_call_s": 0.1})
    bench_numpy.run(shapes=[(4, 3)], impls=["softmargin"], repeat=1, threads=1, out=tmp_path / "n.csv", rounds=3)
    assert [r["rounds"] for r in csv.DictReader(open(tmp_path / "n.csv"))] == ["3"]


def test_an_out_ending_with_a_slash_is_refused_not_written_as_a_file(tmp_path, monkeypatch, capsys, measuring):
    """--out new/ (a folder, as typed) wrote a file named new, whether or not --force was given."""
    monkeypatch.chdir(tmp_path)
    for argv in (["--options"], ["--backend", "numpy"], ["--no-compile"], ["--options", "--force"]):
        _refused_up_front(capsys, [*argv, "--shapes", "4x3", "--out", "new/"], "--out new/ ends with '/', as a folder does: expected a CSV file name")
    assert not list(tmp_path.iterdir())


def test_a_shape_beyond_int64_is_an_argument_error_not_a_traceback(capsys, measuring):
    """--shapes 1e400x10 (written out) ended in OverflowError: the memory check's float could not hold its size."""
    from softmargin.app.cli import main

    huge = "1" + "0" * 400
    with pytest.raises(SystemExit) as refused:
        main(["bench", "--shapes", f"{huge}x10", "--out", ""])
    assert refused.value.code == 2
    assert f"shape '{huge}x10': N*C is 2**63 elements or more: expected fewer" in capsys.readouterr().err


def test_a_measuring_process_past_its_timeout_is_an_error_row_not_the_end_of_the_run():
    """subprocess.TimeoutExpired went up through the command as a traceback, and every row measured before it was
    lost (the CSV is written at the end)."""
    assert bench._in_fresh_process("time.sleep(30)", "time", 1, timeout=1) == {"error": "timed out after 1 s"}


def test_option_costs_time_each_option_against_what_torch_writes_for_it():
    """Each option's torch anchor computes the same loss as softmargin's option (a mask: over all observed elements
    rather than per sample, the same when every row observes as many), and the run reports it beside the option."""
    import torch

    from softmargin.torch import multilabel_soft_margin_loss

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=gen), (torch.rand(6, 4, generator=gen) < 0.4).float()
    per_class = torch.rand(4, generator=gen) + 0.5
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[:, 1] = False  # every row observes 3 labels
    for name, case in bench.OPTION_CASES.items():
        kwargs = {k: per_class if v == "class" else mask if v == "full" else v for k, v in case.items()}
        anchor = bench._torch_option_anchor(name, kwargs)
        assert (anchor is None) == ("gamma_neg" in case)  # focusing: torch has no loss for it
        if anchor is None:
            continue
        torch.testing.assert_close(anchor(x, y), multilabel_soft_margin_loss(x, y, **kwargs), rtol=1e-6, atol=1e-7)
    threads = torch.get_num_threads()
    try:
        rows = bench.option_costs([(8, 5)], repeat=1, threads=1)
    finally:  # option_costs sets torch's threads: every later test in this process ran on 1
        torch.set_num_threads(threads)
    with_anchor = {row["option"] for row in rows if "x_torch" in row}
    assert with_anchor == {"plain", "weight (C,)", "pos_weight (C,)", "mask (N, C)", "label_smoothing=0.1"}
    assert all(row["x_torch"] == pytest.approx(row["median_ms"] / row["torch_ms"]) for row in rows if "x_torch" in row)


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch, capsys, fake_measuring):
    """The default folder was runs/bench-<date>-<time>: a second run in the same second was refused (its CSV existed)
    or, started before the first wrote it, wrote over it. Now each run reserves its folder (-1, -2, ... after it); a
    run refused before it wrote anything leaves no folder."""
    import time

    from softmargin.app.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: fmt.replace("%Y%m%d-%H%M%S", "20261203-120000"))
    for _ in range(3):
        assert main(["bench", "--options", "--shapes", "4x3"]) == 0
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["bench-20261203-120000", "bench-20261203-120000-1", "bench-20261203-120000-2"]
    assert all((tmp_path / "runs" / f / "bench-options.csv").is_file() for f in folders)
    monkeypatch.setattr(bench, "option_costs", lambda *a: (_ for _ in ()).throw(RuntimeError("measuring failed")))
    with pytest.raises(RuntimeError, match="measuring failed"):
        main(["bench", "--options", "--shapes", "4x3"])
    assert len(list((tmp_path / "runs").iterdir())) == 3  # the failed run's empty folder removed
