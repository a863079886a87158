"""``softmargin bench``: forward+backward time and peak extra memory, softmargin against its anchors, in one run.

For each (shape, dtype):

- *time*: the median of ``--repeat`` forward+backward calls (twenty times as many for tiny shapes) after two
  warm-up calls (``torch.compile``'s compilation happens there and is reported apart), each implementation in its
  own fresh process, as a training loop runs one step over and over; three rounds over all implementations, and
  each one's median over its rounds, so that a change in the machine's load during the run falls on all of them
  alike (on these shared machines one measurement per implementation gave ratios that moved by 1.5x between
  runs). Timing them all in one process instead would let one's allocations change the others' page faults: the
  floor's fresh 32 MB output went from 3 to 18 ms after torch's eager loss had run there. Tiny shapes (at most 64 Ki
  elements, whose few-kilobyte allocations glibc serves from its heap, no page faults) are the exception: there one
  fresh process per round times every implementation, interleaved in turns of ``TINY_BLOCK`` consecutive calls,
  because a call of 40 microseconds is mostly fixed costs that move by more than that from one process to the next
  (32x10 float32: BCEWithLogits measured 0.044 and 0.080 ms in two runs of the same command), while interleaved
  turns see the same machine. Turns, not single calls, so that most calls follow a call of the same implementation,
  as in a loop that calls it over and over (caches and thread pools as it leaves them).
- Run it on a quiet machine: where every core is busy with other work, an operation that enters a parallel region
  even for 320 elements (torch's ``log_sigmoid`` with a gradient, in torch's eager loss) waits a time slice for its
  second thread: at 32x10 torch's loss measured 16 ms instead of 0.13 and BCEWithLogits 7 ms instead of 0.04.
- *peak extra memory*: each implementation in its own fresh process, so the reading sees that measurement's
  allocations and nothing else: the resident high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``)
  during one forward+backward, minus the resident size just before it, with glibc told to return freed blocks to
  the system (``MALLOC_MMAP_THRESHOLD_``); reported as a multiple of the logits' size. The gradient itself (kept in
  ``x.grad``) counts: the least any implementation can need is 1x. The CSVs' ``*_mb`` columns are MiB (2**20 bytes). The process runs on one CPU, because Linux
  counts a process's resident pages per CPU and adds each CPU's count to the total only in batches: a reading can
  lag by up to a batch, a difference of two readings by two (:func:`memory_floor`: 256 KiB on a machine of up to 16
  CPUs). Logits smaller than that are not measured ("–" in the table, empty in the CSV): there the reading would be
  a ratio of noise (8x4 float32 read 96x for softmargin and 0x for torch's eager loss; at 128 KiB softmargin read
  0x, less than the gradient it keeps).

On a CUDA device (``device="cuda"``) everything runs in this process, interleaved: the caching allocator's own counters
(``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``) see every allocation exactly, and each timed
call is bracketed by ``torch.cuda.synchronize()``, so the time includes the launch overhead a training step pays.

Anchors, measured in the same run on the same data: torch's eager ``MultiLabelSoftMarginLoss``,
``torch.compile`` of it, ``BCEWithLogitsLoss`` (mean over N*C: the same value), and the *floor*: one read of the
input and the target and one write of a gradient-sized output (``x + y`` into a new tensor).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import numbers
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .files import atomic_open, check_out

IMPLEMENTATIONS = ("softmargin", "torch eager", "torch.compile", "BCEWithLogits", "floor")
DEFAULT_SHAPES = ((4096, 2000), (256, 100_000), (256, 1000), (64, 80), (32, 10))
DEFAULT_DTYPES = ("float32", "bfloat16")
BACKENDS = ("torch", "jax", "numpy")
#: What each backend's benchmark imports (in its measuring processes), and what installs it.
BACKEND_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "torch": (("torch", "'softmargin[torch]'"),),
    "jax": (("jax", "'softmargin[jax]'"), ("jaxlib", "'softmargin[jax]'"), ("optax", "optax")),
    "numpy": (),
}


def _check_values(repeat: int, threads: int | None, device: str, backend: str) -> None:
    """Each option's value on its own (no import, no device query)."""
    if isinstance(repeat, bool) or not isinstance(repeat, numbers.Integral) or repeat < 1:
        raise ValueError(f"--repeat {repeat}: expected at least 1 timed call per configuration")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1):
        raise ValueError(f"--threads {threads}: expected at least 1 thread (leave it out for every CPU available)")
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device {device}: expected cpu, cuda or cuda:N (N: the index of a CUDA device)")


def check_options(repeat: int = 15, threads: int | None = None, device: str = "cpu", backend: str = "torch") -> None:
    """Refuse, before anything is measured, the options that would otherwise show only after the whole run, in every
    row (no timed call to take the median of; a package the backend imports missing) or as a traceback (an unknown
    device). The messages name ``softmargin bench``'s options."""
    _check_values(repeat, threads, device, backend)
    import importlib.util

    missing = [(name, source) for name, source in BACKEND_NEEDS[backend] if importlib.util.find_spec(name) is None]
    if missing:
        names = " and ".join(name for name, _ in missing)
        sources = " ".join(dict.fromkeys(source for _, source in missing))
        raise ImportError(f"--backend {backend} needs {names}, not installed here: pip install {sources}")
    if device != "cpu" and backend == "torch":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {device}: this machine has no CUDA device torch can use: expected cpu")
        if int(device.partition(":")[2] or 0) >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device{'s' * (count > 1)}: expected "
                             f"cuda:0 to cuda:{count - 1}")  # fmt: skip


MODES = ("extreme", "options", "train-step")
#: Each run's CSV in its run folder when ``--out`` is not given (the torch backend's on CUDA: ``bench-cuda.csv``).
DEFAULT_OUT = {"torch": "bench-cpu.csv", "cuda": "bench-cuda.csv", "numpy": "bench-numpy.csv", "jax": "bench-jax.csv",
               "extreme": "bench-extreme.csv", "options": "bench-options.csv", "train-step": "bench-train-step.csv"}  # fmt: skip
#: Where the default run (the torch backend, no ``--shapes``, compiled) writes its compiled training step: beside its
#: CSV, whatever that one is called.
TRAIN_STEP_OUT = "bench-train-step.csv"
DEFAULT_REPEAT = 15
EXTREME_REPEAT = 3  # one step at 1M labels takes seconds
#: The dtypes each run can measure (None: all of ``softmargin bench --dtypes``' choices).
_DTYPES: dict[str, tuple[str, ...]] = {"extreme": ("float32",), "train-step": ("float32",),
                                       "numpy": ("float32", "float64", "float16"), "jax": ("float32", "bfloat16", "float16")}  # fmt: skip


def command_mode(args: Any) -> str:
    """What ``softmargin bench`` runs with these options: ``extreme``, ``options``, ``train-step``, or the backend
    (``torch``, ``jax``, ``numpy``) for the loss's own benchmark."""
    chosen = [f"--{m}" for m in MODES if getattr(args, m.replace("-", "_"), False)]
    if len(chosen) > 1:
        raise ValueError(f"{' and '.join(chosen)}: each is a run of its own: choose one")
    return chosen[0][2:] if chosen else str(args.backend)


def default_out_name(mode: str, device: str = "cpu") -> str:
    """The CSV's name in the run folder when ``--out`` is not given."""
    return DEFAULT_OUT["cuda" if mode == "torch" and device != "cpu" else mode]


def default_dtypes(mode: str) -> tuple[str, ...]:
    """The dtypes a run measures when ``--dtypes`` is not given."""
    return DEFAULT_DTYPES if mode in ("torch", "jax") else ("float32",)


def check_command(args: Any) -> str:
    """``softmargin bench``'s options, all checked before anything is measured (some runs take hours): each value
    (:func:`check_options`), and every option given that the chosen run would not use, refused by name as typed (the
    rule of ``softmargin train``: no option is silently ignored). ``args``: the parsed command line (``None``: an
    option not given). Returns the mode (:func:`command_mode`)."""
    mode = command_mode(args)
    repeat = DEFAULT_REPEAT if args.repeat is None else args.repeat
    device = "cpu" if args.device is None else args.device
    _check_values(repeat, args.threads, device, args.backend)
    if args.out == "-":
        raise ValueError("--out -: bench prints its table to standard output and writes its CSV to a file: name a file "
                         "(or --out '' for none)")  # fmt: skip
    run = f"--backend {args.backend}" if mode in BACKENDS else f"--{mode}"
    if mode in MODES and args.backend != "torch":
        raise ValueError(f"--backend {args.backend}: {run} times the torch loss and would ignore it; drop one of them")
    if mode == "extreme" and args.shapes:
        shapes = " ".join("x".join(map(str, shape)) for shape in args.shapes)
        raise ValueError(f"--shapes {shapes}: --extreme measures sizes of its own (N=256, hidden 256, "
                         f"{', '.join(f'{c:,}' for c in EXTREME_LABELS)} labels) and would ignore it; drop it")  # fmt: skip
    supported = _DTYPES.get(mode)
    if mode == "jax" and os.environ.get("JAX_ENABLE_X64", "").lower() in ("1", "true"):
        supported = None
    bad = [dtype for dtype in args.dtypes or () if supported is not None and dtype not in supported]
    if bad:
        why = {"numpy": f"NumPy has no bfloat16; {run} measures {', '.join(supported or ())}",
               "jax": "JAX computes float64 only with JAX_ENABLE_X64=1 (without it, float64 arrays are float32)"}  # fmt: skip
        raise ValueError(f"--dtypes {' '.join(bad)}: {why.get(mode, f'{run} runs float32 only')}; drop it")
    if device != "cpu" and mode not in ("torch", "train-step"):
        why = {"numpy": "NumPy computes on the CPU", "jax": "it times JAX on the CPU"}
        raise ValueError(f"--device {device}: {run} would ignore it ({why.get(mode, 'it measures on the CPU only')}); "
                         "drop it")  # fmt: skip
    if args.no_compile and mode not in ("torch", "train-step"):
        reason = "jax.jit always compiles; --no-compile skips torch.compile" if mode == "jax" else "nothing in it runs torch.compile"
        raise ValueError(f"--no-compile: {run} would ignore it ({reason}); drop it")
    # a value given twice would be measured twice, and the report takes each ratio against the first softmargin row of
    # its (shape, dtype): the repeat's anchors were divided by a softmargin time measured in another group
    for option, values in (("--shapes", ["x".join(map(str, s)) for s in args.shapes or ()]), ("--dtypes", args.dtypes or ())):
        twice = [value for i, value in enumerate(values) if value in values[:i]]
        if twice:
            raise ValueError(f"{option} {' '.join(values)}: {', '.join(dict.fromkeys(twice))} given twice: expected each "
                             "value once (each is measured once, its ratios against the softmargin time measured with it)")  # fmt: skip
    if device == "cpu" and args.shapes:  # else each measuring process fails to allocate, or the OOM killer ends it
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        dtype = max(args.dtypes or default_dtypes(mode), key=ITEMSIZE.__getitem__)
        for shape in args.shapes:
            need = 3 * math.prod(shape) * ITEMSIZE[dtype]
            if need > memory:
                raise ValueError(f"--shapes {'x'.join(map(str, shape))}: its {dtype} logits, target and gradient alone take "
                                 f"{need / 2**30:,.1f} GiB, more than this machine's {memory / 2**30:,.1f} GiB of memory: "
                                 "expected a smaller shape")  # fmt: skip
    cpus = len(os.sched_getaffinity(0))
    if mode == "jax" and args.threads is not None and args.threads > cpus:  # XLA's pool is the CPUs it may run on
        raise ValueError(f"--threads {args.threads}: --backend jax runs XLA on that many of the CPUs this process may use, "
                         f"and there {'are' if cpus > 1 else 'is'} {cpus}: expected 1 to {cpus} (the rows would say "
                         f"{args.threads} threads for {cpus})")  # fmt: skip
    if args.force and args.out == "":
        raise ValueError("--force: --out '' writes no file, there is nothing to overwrite; drop one of them")
    check_options(repeat, args.threads, device, "torch" if mode in MODES else args.backend)
    return mode


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


#: glibc's mmap threshold during memory measurements (``MALLOC_MMAP_THRESHOLD_``): from this size an allocation gets
#: pages of its own, which freeing returns, so the high-water mark sees each one whole.
MMAP_THRESHOLD = 1 << 16
ITEMSIZE = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
#: Put first in a memory measurement's fresh process: every thread it starts runs on one CPU (:func:`memory_floor`).
ON_ONE_CPU = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
#: Put first in a JAX timing process (``pin``): it runs on the first ``{}`` CPUs it may use (XLA's thread pool is as
#: large as the CPUs a process may run on).
ON_CPUS = "import os; os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:{}]); "


def memory_floor(threads: int = 1) -> int:
    """The least logits size, in bytes, whose peak extra memory the CPU measurement resolves: the most by which the
    difference of two readings of the resident size can be off. Linux (6.2 on) counts a process's resident pages per
    CPU and adds a CPU's count to the total each time it reaches a batch of ``max(32, 2 x CPUs online)`` pages
    (``percpu_counter_batch``), so a reading can lag by up to a batch per CPU the process ran on (one: the measuring
    process is kept on one CPU, :data:`ON_ONE_CPU`), a difference by two batches: 256 KiB with 4 KiB pages and up to
    16 CPUs. Earlier kernels count per thread, every 64 page faults: two such batches per thread (``threads``
    workers and the main one)."""
    page = os.sysconf("SC_PAGE_SIZE")
    release = re.match(r"(\d+)\.(\d+)", os.uname().release)
    if release and (int(release[1]), int(release[2])) >= (6, 2):
        return 2 * max(32, 2 * (os.cpu_count() or 1)) * page
    return 2 * 64 * (threads + 1) * page


def memory_measurable(shape: Sequence[int], dtype: str, device: str = "cpu", threads: int = 1) -> bool:
    """Whether the peak extra memory of a call on (shape, dtype) logits is measured: on the CPU, logits of at least
    :func:`memory_floor` bytes (smaller ones would give a ratio of noise: at 8x4 float32 softmargin read 96x its logits
    and torch's eager loss 0x); on CUDA, where the caching allocator counts every allocation itself, always."""
    return device != "cpu" or math.prod(shape) * ITEMSIZE[str(dtype)] >= memory_floor(threads)


def _peak_bytes(step: Callable[[], Any]) -> tuple[int, Any]:
    """Resident high-water mark of ``step()`` beyond the resident size just before it, and what it returned (kept
    alive by the caller, as a training loop would)."""
    import gc

    gc.collect()
    _reset_hwm()
    before = _rss_bytes()
    result = step()
    return _hwm_bytes() - before, result


def _step_fn(impl: str, x: Any, y: Any, w: Any) -> Callable[[], Any]:
    import torch
    import torch.nn.functional as F

    from ..torch import multilabel_soft_margin_loss

    if impl == "softmargin":
        fn: Callable[..., Any] = multilabel_soft_margin_loss
    elif impl == "softmargin validate=False":
        fn = functools.partial(multilabel_soft_margin_loss, validate=False)
    elif impl == "torch eager":
        fn = F.multilabel_soft_margin_loss
    elif impl == "torch.compile":
        fn = torch.compile(F.multilabel_soft_margin_loss, dynamic=False)
    elif impl == "BCEWithLogits":
        fn = F.binary_cross_entropy_with_logits
    elif impl == "floor":

        def floor_step() -> Any:
            return torch.add(x.detach(), y)

        return floor_step
    else:
        raise ValueError(f"impl={impl!r}: expected one of {IMPLEMENTATIONS}")

    def step() -> Any:
        x.grad = None
        loss = fn(x, y, weight=w)
        loss.backward()
        return loss

    return step


def _data(shape: Sequence[int], dtype: str, device: str) -> tuple[Any, Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    tdtype = getattr(torch, dtype)
    x = torch.randn(*shape, generator=gen).to(tdtype).to(device).requires_grad_(True)
    y = (torch.rand(*shape, generator=gen) < 0.1).to(tdtype).to(device)
    w = (torch.rand(shape[-1], generator=gen).to(tdtype) + 0.5).to(device)
    return x, y, w


def median(values: Sequence[float]) -> float:
    """The median: for an even count, the mean of the middle two (``sorted[len // 2]``, the upper one, made the
    "median" of ``--repeat 2`` the slower call, and of two rounds out of three the slower round)."""
    return statistics.median(values)


def call_times(fn: Callable[[], Any], repeat: int, warmup: int = 0) -> list[float]:
    """Seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones, sorted (:func:`median` of them)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)


def time_group(
    impls: Sequence[str], shape: Sequence[int], dtype: str, repeat: int, threads: int, device: str = "cpu",
    block: int = 1,
) -> dict[str, dict[str, Any]]:
    """Median forward+backward time of each implementation on the same data in this process, interleaved (each
    implementation in turn makes ``block`` consecutive calls, until each has made ``repeat``) after two warm-up
    calls each (``torch.compile`` compiles there). Every call is timed alone; ``block`` > 1 makes most calls follow
    a call of the same implementation, as in a loop that calls it over and over."""
    import torch

    torch.set_num_threads(threads)
    x, y, w = _data(shape, dtype, device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    steps: dict[str, Callable[[], Any]] = {}
    result: dict[str, dict[str, Any]] = {}
    for impl in impls:
        try:
            step = _step_fn(impl, x, y, w)
            started = time.perf_counter()
            step()
            sync()
            result[impl] = {"first_call_s": time.perf_counter() - started}
            step()
            sync()
            steps[impl] = step
        except Exception as error:
            result[impl] = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
    times: dict[str, list[float]] = {impl: [] for impl in steps}
    for turn in range(0, repeat, block):
        for impl, step in steps.items():
            for _ in range(min(block, repeat - turn)):
                sync()
                started = time.perf_counter()
                step()
                sync()
                times[impl].append(time.perf_counter() - started)
    for impl, spent in times.items():
        spent.sort()
        result[impl].update(median_ms=1e3 * median(spent), min_ms=1e3 * spent[0], calls=len(spent))
    return result


def peak_memory(impl: str, shape: Sequence[int], dtype: str, threads: int, device: str = "cpu") -> dict[str, Any]:
    """Peak extra memory of one forward+backward of one implementation, after two warm-up calls; on the CPU run it
    in a fresh process (:func:`_in_fresh_process`), on CUDA the caching allocator's own counters are exact."""

    if not memory_measurable(shape, dtype, device, threads):
        return {"peak_extra_mb": None, "peak_extra_x_logits": None}
    import torch

    torch.set_num_threads(threads)
    x, y, w = _data(shape, dtype, device)
    step = _step_fn(impl, x, y, w)
    step()
    step()
    x.grad = None
    if x.is_cuda:  # the result and x.grad stay alive during the measurement, as in training
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _ = step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak, _ = _peak_bytes(step)
    return {"peak_extra_mb": peak / 2**20, "peak_extra_x_logits": peak / (x.numel() * x.element_size())}


def _in_fresh_process(
    call: str, what: str, threads: int, timeout: int = 1800, module: str = "softmargin.app.bench", pin: bool = False
) -> dict[str, Any]:
    """Run ``<module>.<call>`` (a call expression returning a dict) in a new Python process; its result, or
    {"error": the last line it printed}. For "memory", glibc returns large freed blocks at once, so the high-water
    mark sees every allocation, and the process runs on one CPU (:func:`memory_floor`). ``pin`` (JAX): a timing
    process runs on the first ``threads`` CPUs this one may use, and the NumPy backend's kernel (JAX's callback) on
    ``threads`` threads: XLA sizes its CPU thread pool by the CPUs it may run on and ignores ``OMP_NUM_THREADS``; and
    JAX computes on the CPU (``JAX_PLATFORMS=cpu``), as its rows say (device cpu) and as the resident-size memory
    reading needs: where jax has a GPU, its default device, the rows were GPU times labelled cpu."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if pin:
        env["SOFTMARGIN_NUM_THREADS"] = str(threads)
        env["JAX_PLATFORMS"] = "cpu"
    if what == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    on = ON_ONE_CPU if what == "memory" else ON_CPUS.format(threads) if pin else ""
    code = on + f"import json, {module} as b; print(json.dumps(b.{call}))"
    return run_process(code, env, timeout)


def run_process(code: str, env: dict[str, str], timeout: int) -> dict[str, Any]:
    """Run ``python -c code`` in ``env``; what it printed last (a JSON object), or ``{"error": why not}``: its last
    line on stderr where it failed, the signal that ended it where one did (SIGKILL, the out-of-memory killer's, left
    an empty stderr and read "no output"; any line there then is not the reason), or the timeout it ran past (which
    ended the whole run with a TimeoutExpired traceback, every row measured before it lost)."""
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if result.returncode < 0:
        number = -result.returncode
        name = signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
        why = " (out of memory? the kernel's OOM killer sends it)" if name == "SIGKILL" else ""
        return {"error": f"killed by {name}{why}"}  # the table shows an error's first 60 characters
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or [f"exit status {result.returncode}, no output"])[-1]}
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"printed no result: {result.stdout.strip()[-80:]!r}"}


def write_csv(out: Path, fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Results to ``out``, through a temporary file beside it moved into place: never half-written, and nothing left
    behind if writing fails. Overwrites ``out`` (the command refuses that up front without ``--force``:
    :func:`check_out`), but never a folder. Numbers keep six significant digits (a fixed four decimals wrote a
    floor of 0.00041 ms as 0.0004 and every memory ratio of a small run as 0.0000)."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder: expected a CSV file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


#: Shapes of at most this many elements are "tiny": more calls, timed interleaved in turns of ``TINY_BLOCK`` calls
#: (:func:`measure_group`).
TINY_ELEMENTS = 1 << 16
TINY_BLOCK = 20


def _repeats(shape: Sequence[int], repeat: int) -> int:
    """Tiny calls take microseconds: twenty times the rounds, so their median is as steady as the large ones'."""
    return repeat * 20 if math.prod(shape) <= TINY_ELEMENTS else repeat


def combine_rounds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One implementation's timing rounds (each from a fresh process) as one result: the median of the rounds'
    medians, the least minimum, the first round's first-call time and how many rounds succeeded; or the first
    round's error when none did."""
    good = [r for r in results if "error" not in r]
    if not good:
        return {"error": results[0].get("error", "not measured")}
    medians = sorted(r["median_ms"] for r in good)
    return {"median_ms": median(medians), "min_ms": min(r["min_ms"] for r in good),
            "first_call_s": good[0]["first_call_s"], "rounds": len(good)}  # fmt: skip


def measure_group(
    impls: Sequence[str], shape: Sequence[int], dtype: str, repeat: int, threads: int, device: str = "cpu",
    rounds: int = 3,
) -> list[dict[str, Any]]:
    """One (shape, dtype), every implementation. CPU: ``rounds`` rounds, each timing every implementation in turn in
    its own fresh process (a process runs one implementation only, as a training loop would, so its allocations
    settle as they would there; tiny shapes, at most ``TINY_ELEMENTS``: all of them interleaved in one fresh
    process per round, see the module docstring); an implementation's time is the median of its rounds, so a
    change in the machine's load during the run falls on all of them alike. Then each one's peak memory in a
    fresh process.
    CUDA: :func:`time_group` interleaves them in this process, and the allocator's counters give the memory."""
    base = {"shape": "x".join(map(str, shape)), "dtype": dtype, "threads": threads, "device": device}
    reps = _repeats(shape, repeat)
    if device == "cpu":
        per_round: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
        tiny = math.prod(shape) <= TINY_ELEMENTS
        for _ in range(rounds):
            for group in ([list(impls)] if tiny else [[impl] for impl in impls]):
                call = f"time_group({group!r}, {tuple(shape)!r}, {dtype!r}, {reps}, {threads}, block={TINY_BLOCK if tiny else 1})"
                timed = _in_fresh_process(call, "time", threads)
                for impl in group:
                    per_round[impl].append(timed.get(impl, timed))
        timed_all = {impl: combine_rounds(results) for impl, results in per_round.items()}
    else:
        timed_all = time_group(impls, shape, dtype, reps, threads, device)
    rows = []
    for impl in impls:
        row = {"impl": impl, **base, **timed_all.get(impl, {"error": "not measured"})}
        if "error" not in row and memory_measurable(shape, dtype, device, threads):  # else "–" (module docstring)
            if device == "cpu":
                call = f"peak_memory({impl!r}, {tuple(shape)!r}, {dtype!r}, {threads})"
                row.update(_in_fresh_process(call, "memory", threads))
            else:
                try:
                    row.update(peak_memory(impl, shape, dtype, threads, device))
                except Exception as error:
                    row["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
        rows.append(row)
    return rows


TRAIN_STEP_IMPLS = ("softmargin", "torch MultiLabelSoftMarginLoss")
#: The compiled training step's batch and classes (``softmargin bench`` runs it after the default shapes).
TRAIN_STEP_SHAPE = (4096, 2000)


def time_train_step(
    impl: str, shape: Sequence[int], features: int, repeat: int, compiled: bool = True, device: str = "cpu"
) -> dict[str, Any]:
    """One training step, ``torch.compile``d (model + loss + backward + optimizer step): a linear model from
    ``features`` inputs to C logits, the loss ``impl``, SGD, on ``device``. Median of ``repeat`` steps after three
    warm-up steps (the compilation happens there and is reported apart); the loss after the last step, as a check that
    both trained alike."""
    import torch

    from ..torch import MultiLabelSoftMarginLoss

    rows, classes = shape
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(rows, features, generator=gen).to(device)
    labels = (torch.rand(rows, classes, generator=gen) < 0.1).float().to(device)
    torch.manual_seed(0)
    model = torch.nn.Linear(features, classes).to(device)
    loss_fn = MultiLabelSoftMarginLoss() if impl == "softmargin" else torch.nn.MultiLabelSoftMarginLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(data), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    compiled_step = torch.compile(step) if compiled else step
    sync = torch.cuda.synchronize if data.is_cuda else (lambda: None)

    def fn() -> Any:
        loss = compiled_step()
        sync()
        return loss

    start = time.perf_counter()
    for _ in range(3):
        fn()
    first = time.perf_counter() - start
    times = call_times(fn, repeat)
    return {"median_ms": 1e3 * median(times), "min_ms": 1e3 * min(times), "first_call_s": first,
            "final_loss": float(fn())}  # fmt: skip


def train_step(
    shape: Sequence[int] = (4096, 2000),
    features: int = 32,
    repeat: int = 15,
    threads: int | None = None,
    rounds: int = 5,
    device: str = "cpu",
    compiled: bool = True,
) -> list[dict[str, Any]]:
    """The compiled training step with softmargin against the same with torch's loss, each in fresh processes,
    ``rounds`` rounds, the median of each one's rounds (see :func:`measure_group`). Five rounds by default (the
    command's too): with three, two runs of the same command gave 1.26x and 1.70x. ``compiled=False``: the same step
    in eager mode (``--no-compile``)."""
    check_options(repeat, threads, device)
    threads = threads or len(os.sched_getaffinity(0))
    results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in TRAIN_STEP_IMPLS}
    for _ in range(rounds):
        for impl in TRAIN_STEP_IMPLS:
            call = f"time_train_step({impl!r}, {tuple(shape)!r}, {features}, {repeat}, compiled={compiled!r}, device={device!r})"
            results[impl].append(_in_fresh_process(call, "train step", threads))
    rows = []
    for impl, runs in results.items():
        row: dict[str, Any] = {"impl": impl, "shape": "x".join(map(str, shape)), "features": features, "threads": threads,
                               "device": device, "compiled": compiled}  # fmt: skip
        row.update(combine_rounds(runs))
        if "error" not in row:
            row["final_loss"] = next(r["final_loss"] for r in runs if "error" not in r)
        rows.append(row)
    return rows


OPTION_CASES: dict[str, dict[str, str | float]] = {
    "plain": {},
    "weight (C,)": {"weight": "class"},
    "pos_weight (C,)": {"pos_weight": "class"},
    "mask (N, C)": {"mask": "full"},
    "label_smoothing=0.1": {"label_smoothing": 0.1},
    "focal gamma=2": {"gamma_pos": 2.0, "gamma_neg": 2.0},
    "asymmetric 0/4/0.05": {"gamma_neg": 4.0, "clip": 0.05},
}


def _torch_option_anchor(name: str, kwargs: dict[str, Any]) -> Any:
    """What a torch user writes for the option ``name`` with torch's own losses (the same values, up to the mean's
    denominator for a mask), or None where torch has no loss for it (focusing): the anchor each option is timed
    against in the same run."""
    import torch.nn.functional as F

    if name in ("plain", "weight (C,)"):
        return lambda x, y: F.multilabel_soft_margin_loss(x, y, kwargs.get("weight"))
    if name.startswith("pos_weight"):
        return lambda x, y: F.binary_cross_entropy_with_logits(x, y, pos_weight=kwargs["pos_weight"])
    if name.startswith("mask"):
        mask = kwargs["mask"]
        observed = mask.sum()

        def masked(x: Any, y: Any) -> Any:
            return (F.binary_cross_entropy_with_logits(x, y, reduction="none") * mask).sum() / observed

        return masked
    if name.startswith("label_smoothing"):
        eps = kwargs["label_smoothing"]
        return lambda x, y: F.multilabel_soft_margin_loss(x, y * (1 - eps) + eps / 2)
    return None


def option_costs(
    shapes: Sequence[Sequence[int]] = ((4096, 2000),), dtypes: Sequence[str] = ("float32",), repeat: int = 15,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Forward+backward time of each loss option against the plain loss, and against what a torch user writes for
    it with torch's own losses (``torch_ms``, ``x_torch``: softmargin's time over torch's; none for focusing), for
    every (shape, dtype), in this process (time only), on ``threads`` torch threads (default: the CPUs available)."""
    check_options(repeat, threads)
    import torch

    from ..torch import multilabel_soft_margin_loss

    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        for dtype in dtypes:
            gen = torch.Generator().manual_seed(0)
            tdtype = getattr(torch, dtype)
            x = torch.randn(*shape, generator=gen).to(tdtype).requires_grad_(True)
            y = (torch.rand(*shape, generator=gen) < 0.1).to(tdtype)
            per_class = (torch.rand(shape[-1], generator=gen) + 0.5).to(tdtype)
            mask = torch.rand(*shape, generator=gen) < 0.9
            base = {"shape": "x".join(map(str, shape)), "dtype": dtype, "threads": threads}
            group: list[dict[str, Any]] = []
            for name, case in OPTION_CASES.items():
                kwargs: dict[str, Any] = {}
                for key, value in case.items():
                    kwargs[key] = per_class if value == "class" else mask if value == "full" else value

                def step(kwargs: dict[str, Any] = kwargs, x: Any = x, y: Any = y) -> None:
                    x.grad = None
                    multilabel_soft_margin_loss(x, y, **kwargs).backward()

                anchor = _torch_option_anchor(name, kwargs)

                def torch_step(anchor: Any = anchor, x: Any = x, y: Any = y) -> None:
                    x.grad = None
                    anchor(x, y).backward()

                try:
                    ours_ms = 1e3 * median(call_times(step, repeat, warmup=2))
                    row: dict[str, Any] = {"option": name, **base, "median_ms": ours_ms}
                    if anchor is not None:
                        torch_ms = 1e3 * median(call_times(torch_step, repeat, warmup=2))
                        row.update(torch_ms=torch_ms, x_torch=ours_ms / torch_ms)
                    group.append(row)
                except Exception as error:
                    group.append({"option": name, **base, "error": f"{type(error).__name__}: {error}".splitlines()[0]})
            plain = group[0].get("median_ms")
            for row in group:
                if plain and "median_ms" in row:
                    row["x_plain"] = row["median_ms"] / plain
            rows.extend(group)
    return rows


EXTREME_LABELS = (100_000, 1_000_000, 3_000_000)


def measure_extreme_one(impl: str, num_labels: int, what: str, rows: int = 256, hidden: int = 256, positives: int = 5,
                        repeat: int = 3, threads: int = 2) -> dict[str, Any]:
    """One training step's forward+backward of a linear head on (rows, hidden) features, fresh process.

    ``fused``: :class:`softmargin.torch.LinearMultiLabelSoftMarginLoss` with sparse targets (``positives`` per row);
    ``plain``: ``torch.nn.Linear`` + ``torch.nn.MultiLabelSoftMarginLoss`` with the dense target. Extra memory is the
    resident peak of the step minus the resident size before it, minus the parameters' own gradients."""

    import torch

    from ..torch import LinearMultiLabelSoftMarginLoss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    features = torch.randn(rows, hidden, requires_grad=True)
    label_lists = [torch.randint(0, num_labels, (positives,)).unique().tolist() for _ in range(rows)]
    if impl == "fused":
        head = LinearMultiLabelSoftMarginLoss(hidden, num_labels)
        params = [head.weight, head.bias]

        def step() -> Any:
            return head(features, label_lists)
    else:
        linear = torch.nn.Linear(hidden, num_labels)
        loss_fn = torch.nn.MultiLabelSoftMarginLoss()
        target = torch.zeros(rows, num_labels)
        for i, labels in enumerate(label_lists):
            target[i, labels] = 1
        params = [linear.weight, linear.bias]

        def step() -> Any:
            return loss_fn(linear(features), target)

    def full() -> Any:
        for p in [*params, features]:
            p.grad = None
        loss = step()
        loss.backward()
        return loss

    grad_bytes = sum(p.numel() * p.element_size() for p in [*params, features])
    if what == "memory":
        # as in training with zero_grad(set_to_none=True): the step allocates the gradients, which are then the
        # parameters' (and the features') own and are not counted as the method's extra memory
        for p in [*params, features]:
            p.grad = None
        peak, _ = _peak_bytes(lambda: step().backward())
        return {"peak_extra_mb": max(peak - grad_bytes, 0) / 2**20, "grad_mb": grad_bytes / 2**20}
    times = call_times(full, repeat, warmup=1)
    return {"median_s": median(times)}


def extreme(labels: Sequence[int] = EXTREME_LABELS, repeat: int = 3, threads: int | None = None,
            out: Path | None = None, progress: bool = True, force: bool = False) -> list[dict[str, Any]]:
    """The fused head against the plain path at N=256, hidden 256; the plain path only where it fits in memory.
    ``out`` is refused up front if it exists, unless ``force`` (:func:`check_out`)."""
    check_options(repeat, threads)
    check_out(out, force)
    threads = threads or len(os.sched_getaffinity(0))
    total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rows = []
    for num_labels in labels:
        for impl in ("fused", "plain"):
            plain_gb = 256 * num_labels * 4 * 12 / 2**30  # about ten (N, C) float32 tensors at once
            if impl == "plain" and plain_gb > 0.8 * total_gb:
                rows.append({"impl": impl, "labels": num_labels, "error": f"not run: needs about {plain_gb:.0f} GB"})
                continue
            row: dict[str, Any] = {"impl": impl, "labels": num_labels}
            for what in ("time", "memory"):
                if progress:
                    print(f"extreme: {impl} C={num_labels:,} {what}", file=sys.stderr, flush=True)
                call = f"measure_extreme_one({impl!r}, {num_labels}, {what!r}, repeat={repeat}, threads={threads})"
                row.update(_in_fresh_process(call, what, threads, timeout=3600))
                if "error" in row:
                    break
            rows.append(row)
    if out is not None:
        write_csv(out, ["labels", "impl", "median_s", "peak_extra_mb", "grad_mb", "error"], rows)
    return rows


def extreme_report(rows: list[dict[str, Any]]) -> str:
    from .compare import format_table

    table = []
    for row in rows:
        plain = next((r for r in rows if r["labels"] == row["labels"] and r["impl"] == "plain" and "error" not in r), None)
        if "error" in row:
            table.append([f"{row['labels']:,}", row["impl"], "-", "-", "-", row["error"]])
            continue
        ratio = ""
        if row["impl"] == "fused" and plain:
            ratio = f"time {row['median_s'] / plain['median_s']:.2f}x, extra memory {100 * row['peak_extra_mb'] / max(plain['peak_extra_mb'], 1e-9):.1f} %"
        table.append([f"{row['labels']:,}", row["impl"], f"{row['median_s']:.2f}", f"{row['peak_extra_mb']:.0f}", f"{row['grad_mb']:.0f}", ratio])
    return format_table(["labels", "path", "step s", "extra MiB", "param grads MiB", "fused vs plain"], table)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def figures(value: float) -> str:
    """A time for the tables: three decimals from 1 on, three significant digits below (at three decimals a floor of
    0.000412 ms printed as 0.000, and every first call under 5 ms as 0.00 s)."""
    return f"{value:.3f}" if value >= 1 else f"{value:#.3g}"


def _memory(x_logits: float | None) -> str:
    """The peak extra memory column: "–" where it was not measured (logits too small, :func:`memory_measurable`)."""
    return "–" if x_logits is None else f"{x_logits:.2f}"


def report(rows: list[dict[str, Any]]) -> str:
    from .compare import format_table

    header = ["shape", "dtype", "impl", "median ms", "peak extra (x logits)", "speed-up of softmargin", "first call s"]
    table = []
    for row in rows:
        if "error" in row:
            table.append([row["shape"], row["dtype"], row["impl"], "error", row["error"][:60], "", ""])
            continue
        ours = next(
            (r for r in rows if r["impl"] == "softmargin" and r["shape"] == row["shape"] and r["dtype"] == row["dtype"]),
            None,
        )
        ours_ms = ours.get("median_ms") if ours else None  # None where softmargin's own row is an error
        speedup = _ratio(row["median_ms"], ours_ms) if ours and row["impl"] != "softmargin" else ""
        if row["impl"] == "floor" and ours_ms and row["median_ms"]:
            speedup = f"softmargin = {ours_ms / row['median_ms']:.2f}x floor"
        table.append(
            [
                row["shape"],
                row["dtype"],
                row["impl"],
                figures(row["median_ms"]),
                _memory(row.get("peak_extra_x_logits")),
                speedup,
                figures(row["first_call_s"]),
            ]
        )
    return format_table(header, table)


def run(
    shapes: Sequence[Sequence[int]] = DEFAULT_SHAPES,
    dtypes: Sequence[str] = DEFAULT_DTYPES,
    impls: Sequence[str] = IMPLEMENTATIONS,  # on CUDA "softmargin validate=False" is added after "softmargin"
    repeat: int = 15,
    threads: int | None = None,
    out: Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    force: bool = False,
) -> list[dict[str, Any]]:
    """Every (shape, dtype), every implementation (:func:`measure_group`); the rows, also written to ``out`` as CSV.
    The options and ``out`` are checked before anything is measured (:func:`check_options`, :func:`check_out`: an
    existing ``out`` is refused unless ``force``)."""
    check_options(repeat, threads, device)
    check_out(out, force)
    threads = threads or len(os.sched_getaffinity(0))
    if device != "cpu":
        if "softmargin" in impls:
            impls = [*impls[: impls.index("softmargin") + 1], "softmargin validate=False", *impls[impls.index("softmargin") + 1 :]]
    configs = [(shape, dtype) for shape in shapes for dtype in dtypes]
    rows: list[dict[str, Any]] = []
    try:
        from tqdm import tqdm

        iterator: Any = tqdm(configs, desc="bench", disable=not progress, file=sys.stderr)
    except ImportError:
        iterator = configs
    for shape, dtype in iterator:
        if hasattr(iterator, "set_postfix_str"):
            iterator.set_postfix_str(f"{'x'.join(map(str, shape))} {dtype}")
        rows.extend(measure_group(impls, shape, dtype, repeat, threads, device))
    if out is not None:
        fields = ["device", "shape", "dtype", "impl", "threads", "median_ms", "min_ms", "first_call_s", "rounds", "peak_extra_mb"]
        write_csv(out, [*fields, "peak_extra_x_logits", "error"], rows)
    return rows
