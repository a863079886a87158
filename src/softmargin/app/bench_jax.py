"""``softmargin bench --backend jax``: jitted forward+backward of the JAX backend against jitted optax, in one run.

Each implementation is timed in its own fresh process, on the CPU (``JAX_PLATFORMS=cpu``, whatever devices jax has),
three rounds, the median of each round's median (the method and the memory measurement of
:mod:`softmargin.app.bench`, whose helpers this reuses). Implementations:

- ``softmargin``: ``jax.jit(jax.value_and_grad(softmargin.jax.multilabel_soft_margin_loss))`` with ``impl="auto"``;
- ``softmargin xla`` / ``softmargin callback``: the two implementations forced;
- ``softmargin checkify``: the default with ``validate=True``, its value checks staged as ``checkify`` checks
  (``jax.jit(checkify.checkify(jax.value_and_grad(...)))``): what checking the target and the weights costs;
- ``optax``: ``jax.jit(jax.value_and_grad(...))`` of ``optax.sigmoid_binary_cross_entropy`` times the class
  weights, averaged over the labels and the batch (the same value);
- ``floor``: one read of the logits and the target and one write of a gradient-sized output (``x + y``, jitted).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import bench

DEFAULT_SHAPES = bench.DEFAULT_SHAPES
IMPLEMENTATIONS = ("softmargin", "softmargin xla", "softmargin callback", "softmargin checkify", "optax", "floor")


def _data(shape: Sequence[int], dtype: str) -> tuple[Any, Any, Any]:
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(tuple(shape), dtype=np.float32)).astype(dtype)
    y = jnp.asarray(rng.random(tuple(shape), dtype=np.float32) < 0.1).astype(dtype)
    w = jnp.asarray(rng.random(shape[-1], dtype=np.float32) + 0.5).astype(dtype)
    return x, y, w


def _step_fn(impl: str, x: Any, y: Any, w: Any) -> Callable[[], Any]:
    import jax

    from ..jax import multilabel_soft_margin_loss

    if impl == "floor":
        add = jax.jit(lambda a, b: a + b)
        return lambda: jax.block_until_ready(add(x, y))
    if impl == "optax":
        import optax

        loss = lambda a, t, v: (optax.sigmoid_binary_cross_entropy(a, t) * v).mean(-1).mean()
    elif impl == "softmargin checkify":
        from jax.experimental import checkify

        loss = lambda a, t, v: multilabel_soft_margin_loss(a, t, v, validate=True)
        checked = jax.jit(checkify.checkify(jax.value_and_grad(loss)))

        def step_checked() -> Any:
            err, result = checked(x, y, w)
            err.throw()  # reads the error flag: the step is done
            return jax.block_until_ready(result)

        return step_checked
    elif impl.startswith("softmargin"):
        which = impl.split()[1] if " " in impl else "auto"
        loss = lambda a, t, v: multilabel_soft_margin_loss(a, t, v, validate=False, impl=which)
    else:
        raise ValueError(f"impl={impl!r}: expected one of {IMPLEMENTATIONS}")
    # target and weights are arguments, as in a training step (as constants XLA would fold what depends on them)
    step = jax.jit(jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(step(x, y, w))


def time_group(impls: Sequence[str], shape: Sequence[int], dtype: str, repeat: int, threads: int) -> dict[str, dict[str, Any]]:
    """Median forward+backward time of each implementation in this process after two warm-up calls (the first
    compiles; its time is reported apart)."""
    import time

    x, y, w = _data(shape, dtype)
    result: dict[str, dict[str, Any]] = {}
    for impl in impls:
        try:
            step = _step_fn(impl, x, y, w)
            started = time.perf_counter()
            step()
            result[impl] = {"first_call_s": time.perf_counter() - started}
            spent = bench.call_times(step, repeat, warmup=1)
            result[impl].update(median_ms=1e3 * bench.median(spent), min_ms=1e3 * spent[0])
        except Exception as error:
            result[impl] = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
    return result


def peak_memory(impl: str, shape: Sequence[int], dtype: str, threads: int) -> dict[str, Any]:
    """Peak extra resident memory of one jitted forward+backward after two warm-up calls, in this (fresh) process; None
    for logits too small to measure (:func:`softmargin.app.bench.memory_measurable`)."""
    if not bench.memory_measurable(shape, dtype, threads=threads):
        return {"peak_extra_mb": None, "peak_extra_x_logits": None}
    x, y, w = _data(shape, dtype)
    step = _step_fn(impl, x, y, w)
    step()
    step()
    peak, _ = bench._peak_bytes(step)
    return {"peak_extra_mb": peak / 2**20, "peak_extra_x_logits": peak / (x.size * x.dtype.itemsize)}


def computes_on() -> dict[str, Any]:
    """What a process of :func:`run` computes on: JAX's platform, the CPUs it may run on (XLA's thread pool) and the
    NumPy backend's kernel threads (JAX's callback)."""
    import jax

    from ..numpy import num_threads

    return {"platform": jax.default_backend(), "cpus": len(os.sched_getaffinity(0)), "kernel_threads": num_threads()}


def run(
    shapes: Sequence[Sequence[int]] = DEFAULT_SHAPES,
    dtypes: Sequence[str] = ("float32",),
    impls: Sequence[str] = IMPLEMENTATIONS,
    repeat: int = 15,
    threads: int | None = None,
    out: Path | None = None,
    rounds: int = 3,
) -> list[dict[str, Any]]:
    """Every (shape, dtype) and implementation, each in fresh processes (``rounds`` timing rounds, then memory), on
    ``threads`` CPUs and kernel threads (default: the CPUs available)."""
    threads = threads or len(os.sched_getaffinity(0))
    module = "softmargin.app.bench_jax"
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        for dtype in dtypes:
            base = {"shape": "x".join(map(str, shape)), "dtype": dtype, "threads": threads, "device": "cpu"}
            reps = bench._repeats(shape, repeat)
            per_round: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
            for _ in range(rounds):
                for impl in impls:
                    call = f"time_group([{impl!r}], {tuple(shape)!r}, {dtype!r}, {reps}, {threads})"
                    timed = bench._in_fresh_process(call, "time", threads, module=module, pin=True)
                    per_round[impl].append(timed.get(impl, timed))
            for impl, results in per_round.items():
                row: dict[str, Any] = {"impl": impl, **base, **bench.combine_rounds(results)}
                if "error" not in row and bench.memory_measurable(shape, dtype, threads=threads):  # else "–" (see bench's docstring)
                    call = f"peak_memory({impl!r}, {tuple(shape)!r}, {dtype!r}, {threads})"
                    row.update(bench._in_fresh_process(call, "memory", threads, module=module, pin=True))
                rows.append(row)
    if out is not None:
        fields = ["device", "shape", "dtype", "impl", "threads", "median_ms", "min_ms", "first_call_s", "rounds", "peak_extra_mb"]
        bench.write_csv(out, [*fields, "peak_extra_x_logits", "error"], rows)
    return rows
