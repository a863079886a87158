"""The compiled CPU kernel alone (no autograd, no allocation: outputs made once), per dtype and thread count, in every
variant built at install time that this CPU can run (``avx512bf16``/``avx512``: the AVX-512 loops; ``avx2`` and
``baseline``: the portable loops a CPU without AVX-512 runs), each in its own process (``SOFTMARGIN_CPU_VARIANT``).

    python benchmarks/cpu_kernel.py [--shape 4096x2000] [--repeat 40] [--out benchmarks/results/cpu-kernel.csv]

Against the floor of the same bytes: ``torch.add`` of the logits and the target into a preallocated tensor, which
reads and writes as much as the kernel must. Ratios of a variant's time over the best one's show what the
hand-written loops gain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from softmargin.app.bench import call_times, write_csv

DTYPES = ("float32", "bfloat16", "float16")


def measure(shape: tuple[int, int], repeat: int) -> list[dict]:
    """In this process: the median and minimum time of the kernel and of the floor, per dtype and thread count."""
    import torch

    rows: list[dict] = []
    before = torch.get_num_threads()
    try:
        _measure_into(rows, shape, repeat)
    finally:
        torch.set_num_threads(before)
    return rows


def _measure_into(rows: list[dict], shape: tuple[int, int], repeat: int) -> None:
    import torch

    from softmargin.kernels import cpu

    num_rows, num_classes = shape
    for dtype_name in DTYPES:
        dtype = getattr(torch, dtype_name)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).to(dtype)
        y = (torch.rand(shape, generator=gen) < 0.1).to(dtype)
        w = torch.rand(num_classes, generator=gen) + 0.5
        out, grad, floor_out = torch.empty(num_rows, dtype=torch.float64), torch.empty_like(x), torch.empty_like(x)
        for threads in (1, 2):
            torch.set_num_threads(threads)

            def kernel() -> None:
                cpu.fused(dtype_name, dtype_name, x.data_ptr(), y.data_ptr(), (w.data_ptr(), 0), (None, 0), (None, 0),
                          num_rows, num_classes, 1.0 / (num_rows * num_classes), None, None, out.data_ptr(),
                          grad.data_ptr(), threads)  # fmt: skip

            def floor() -> None:
                torch.add(x, y, out=floor_out)

            for name, fn in (("kernel", kernel), ("floor", floor)):
                spent = call_times(fn, repeat, warmup=2)
                rows.append(dict(dtype=dtype_name, threads=threads, what=name, median_ms=1e3 * spent[len(spent) // 2],
                                 min_ms=1e3 * spent[0], avx512=cpu.avx512_loops()))  # fmt: skip


def in_variant(variant: str, shape: tuple[int, int], repeat: int) -> list[dict]:
    env = dict(os.environ, SOFTMARGIN_CPU_VARIANT=variant)
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import cpu_kernel; "
    code += f"print(json.dumps(cpu_kernel.measure({shape!r}, {repeat})))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _runnable_variants() -> list[str]:
    from softmargin.kernels import build, cpu

    best = cpu.variant()
    if best is None:
        raise SystemExit("no CPU kernel here (not built at install time?)")
    names = build.automatic_variants()  # the x86-64 baseline (software fma, ~1 s a call) only with --variants
    return names[names.index(best):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096x2000")
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--variants", nargs="+", help="default: every variant this CPU runs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu-kernel.csv"))
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    variants = args.variants or _runnable_variants()
    results = []
    for variant in variants:
        for row in in_variant(variant, shape, args.repeat):
            results.append(dict(variant=variant, shape=args.shape, **row))
    by_key = {(r["variant"], r["dtype"], r["threads"], r["what"]): r for r in results}
    best = variants[0]
    print(f"{'dtype':9s} {'threads':>7s} " + " ".join(f"{v + ' ms':>14s}" for v in variants)
          + f" {'floor ms':>9s} {best + ' / floor':>20s}")  # fmt: skip
    for dtype in DTYPES:
        for threads in (1, 2):
            times = [by_key[(v, dtype, threads, "kernel")]["median_ms"] for v in variants]
            floor = by_key[(best, dtype, threads, "floor")]["median_ms"]
            print(f"{dtype:9s} {threads:7d} " + " ".join(f"{t:14.3f}" for t in times)
                  + f" {floor:9.3f} {times[0] / floor:19.2f}x")  # fmt: skip
    if args.out:
        write_csv(Path(args.out), list(results[0]), results)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
