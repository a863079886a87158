"""``softmargin bench --backend numpy``: the NumPy backend against a naive NumPy formula, loss and gradient.

Implementations, each timed in its own fresh process in which torch is never imported (three rounds, each one's
median over its rounds, as ``softmargin bench`` does), then its peak extra memory in another fresh process:

- ``softmargin``: ``softmargin.numpy.multilabel_soft_margin_loss_and_grad`` (the fused C kernel where it is built;
  ``SOFTMARGIN_NUM_THREADS`` threads);
- ``softmargin chunked``: the same with ``SOFTMARGIN_NATIVE=0``, the chunked float64 NumPy code;
- ``naive numpy``: the two lines a user writes, ``(np.logaddexp(0, x) - y * x) * w`` averaged and
  ``(1 / (1 + np.exp(-x)) - y) * w / x.size``;
- ``floor``: one read of the logits and the target and one write of a gradient-sized output (``x + y``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .bench import (
    MMAP_THRESHOLD,
    ON_ONE_CPU,
    _peak_bytes,
    _repeats,
    call_times,
    combine_rounds,
    median,
    memory_measurable,
    run_process,
    write_csv,
)

IMPLEMENTATIONS = ("softmargin", "softmargin chunked", "naive numpy", "floor")
DEFAULT_SHAPES = ((4096, 2000), (256, 100_000))
NUMPY_DTYPES = ("float32", "float64", "float16")


def _data(shape: Sequence[int], dtype: str) -> tuple[Any, Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal(tuple(shape), dtype=np.float32).astype(dtype)
    y = (rng.random(tuple(shape), dtype=np.float32) < 0.1).astype(dtype)
    w = (rng.random(shape[-1]) + 0.5).astype(dtype)
    return x, y, w


def _step_fn(impl: str, x: Any, y: Any, w: Any) -> Callable[[], Any]:
    import numpy as np

    from ..numpy import multilabel_soft_margin_loss_and_grad

    if impl in ("softmargin", "softmargin chunked"):
        return lambda: multilabel_soft_margin_loss_and_grad(x, y, w)
    if impl == "naive numpy":

        def naive() -> Any:
            loss = ((np.logaddexp(0, x) - y * x) * w).mean()
            grad = (1 / (1 + np.exp(-x)) - y) * w / x.size
            return loss, grad

        return naive
    if impl == "floor":
        return lambda: x + y
    raise ValueError(f"impl={impl!r}: expected one of {IMPLEMENTATIONS}")


def time_one(impl: str, shape: Sequence[int], dtype: str, repeat: int) -> dict[str, Any]:
    """In this process: the first call's seconds and the median and minimum of ``repeat`` calls after two."""
    x, y, w = _data(shape, dtype)
    step = _step_fn(impl, x, y, w)
    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    spent = call_times(step, repeat, warmup=1)
    assert "torch" not in sys.modules, "the NumPy benchmark imported torch"
    return {"median_ms": 1e3 * median(spent), "min_ms": 1e3 * spent[0], "first_call_s": first}


def peak_memory(impl: str, shape: Sequence[int], dtype: str, threads: int = 1) -> dict[str, Any]:
    """Peak extra memory of one call after two warm-up calls, the result kept alive (as a training loop would); None
    for logits too small to measure (:func:`softmargin.app.bench.memory_measurable`)."""
    if not memory_measurable(shape, dtype, threads=threads):
        return {"peak_extra_mb": None, "peak_extra_x_logits": None}
    x, y, w = _data(shape, dtype)
    step = _step_fn(impl, x, y, w)
    step()
    step()
    peak, _ = _peak_bytes(step)
    return {"peak_extra_mb": peak / 2**20, "peak_extra_x_logits": peak / x.nbytes}


def _fresh(call: str, impl: str, threads: int, memory: bool = False) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), SOFTMARGIN_NUM_THREADS=str(threads))
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    if impl == "softmargin chunked":
        env["SOFTMARGIN_NATIVE"] = "0"
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    code = (ON_ONE_CPU if memory else "") + f"import json, softmargin.app.bench_numpy as b; print(json.dumps(b.{call}))"
    return run_process(code, env, timeout=1800)


def run(
    shapes: Sequence[Sequence[int]] = DEFAULT_SHAPES,
    dtypes: Sequence[str] = ("float32",),
    impls: Sequence[str] = IMPLEMENTATIONS,
    repeat: int = 15,
    threads: int | None = None,
    out: Path | None = None,
    rounds: int = 3,
) -> list[dict[str, Any]]:
    """Every (shape, dtype) and implementation; rows for :func:`softmargin.app.bench.report`, to ``out`` as CSV. A
    dtype NumPy lacks (bfloat16) is refused before anything is measured."""
    unknown = [d for d in dtypes if d not in NUMPY_DTYPES]
    if unknown:
        raise ValueError(f"--dtypes {' '.join(unknown)}: NumPy has no bfloat16; --backend numpy measures {', '.join(NUMPY_DTYPES)}")
    threads = threads or len(os.sched_getaffinity(0))
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            base = {"backend": "numpy", "shape": "x".join(map(str, shape)), "dtype": dtype, "threads": threads}
            reps = _repeats(shape, repeat)
            per_round: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
            for _ in range(rounds):
                for impl in impls:
                    per_round[impl].append(_fresh(f"time_one({impl!r}, {tuple(shape)!r}, {dtype!r}, {reps})", impl, threads))
            for impl, results in per_round.items():
                row: dict[str, Any] = {"impl": impl, **base, **combine_rounds(results)}
                if "error" in row or not memory_measurable(shape, dtype, threads=threads):  # too small: "–" (see bench's docstring)
                    rows.append(row)
                    continue
                row.update(_fresh(f"peak_memory({impl!r}, {tuple(shape)!r}, {dtype!r}, {threads})", impl, threads, memory=True))
                rows.append(row)
    if out is not None:
        fields = ["backend", "shape", "dtype", "impl", "threads", "median_ms", "min_ms", "first_call_s", "rounds", "peak_extra_mb"]
        write_csv(out, [*fields, "peak_extra_x_logits", "error"], rows)
    return rows
