"""The Triton kernel alone on a CUDA device: time (``triton.testing.do_bench``) and achieved memory bandwidth per
tiling, against a device-to-device copy of the same bytes; and the float32 element accuracy against mpmath.

    python benchmarks/gpu_kernel.py [--out benchmarks/results/gpu-kernel.csv]

Bandwidth counts the bytes the kernel must move: one read of the logits and the target, one write of the gradient
(the weight row and the row sums are negligible). The copy reads and writes as many bytes (``torch.add`` of the
logits and the target into a new tensor): the floor the fused pass is measured against.
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np
import torch
import triton

from softmargin.kernels import triton_kernels as triton_ops

SHAPES = ((4096, 2000), (256, 100_000), (32, 10), (16384, 8192), (4, 1_000_000))


def bench_kernel(shape, dtype, block=None, span=None):
    num_rows, num_classes = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", generator=gen).to(dtype)
    y = (torch.rand(shape, device="cuda", generator=gen) < 0.1).to(dtype)
    w = torch.rand(1, num_classes, device="cuda", generator=gen) + 0.5
    call = lambda: triton_ops.fused_rows(x, y, w, num_rows, num_classes, 1.0 / x.numel(), True, block=block, span=span)
    ms = triton.testing.do_bench(call, warmup=25, rep=200)
    floor_ms = triton.testing.do_bench(lambda: torch.add(x, y), warmup=25, rep=200)
    moved = 3 * x.numel() * x.element_size()
    return ms, floor_ms, moved / (ms * 1e-3) / 1e9, moved / (floor_ms * 1e-3) / 1e9


def accuracy():
    import mpmath

    magnitudes = np.logspace(-6, 2, 4000)
    x = np.concatenate([-magnitudes, magnitudes]).astype(np.float32)
    worst = {}
    for target in (0.0, 1.0):
        xc = torch.from_numpy(x).reshape(-1, 1).cuda()
        sums, grad = triton_ops.fused_rows(xc, torch.full_like(xc, target), None, x.size, 1, 1.0, True)
        with mpmath.workdps(40):
            exact = []
            for v in x.astype(np.float64):
                t = mpmath.mpf(v)
                exact.append(float(mpmath.log1p(mpmath.exp(-t)) if target else mpmath.log1p(mpmath.exp(t))))
        exact = np.array(exact)
        ours = sums.cpu().numpy().astype(np.float32).astype(np.float64)  # as the float32 loss is returned
        keep = exact > 1e-30
        worst[f"loss y={target:g}"] = float(np.max(np.abs(ours[keep] - exact[keep]) / exact[keep]))
        from scipy.special import expit

        exact_grad = expit(x.astype(np.float64)) if target == 0 else -expit(-x.astype(np.float64))
        g = grad.cpu().numpy().ravel().astype(np.float64)
        normal = np.abs(exact_grad) >= np.finfo(np.float32).tiny  # float32 subnormals hold fewer digits
        worst[f"grad y={target:g}"] = float(np.max(np.abs(g - exact_grad)[normal] / np.abs(exact_grad)[normal]))
    return worst


def profile_step(shape=(4096, 2000), validate=True):
    """Where one forward+backward of the public loss spends its time (host and device), by torch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    from softmargin.torch import multilabel_soft_margin_loss

    x = torch.randn(shape, device="cuda").requires_grad_(True)
    y = (torch.rand(shape, device="cuda") < 0.1).float()
    w = torch.rand(shape[-1], device="cuda") + 0.5

    def step():
        x.grad = None
        multilabel_soft_margin_loss(x, y, weight=w, validate=validate).backward()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    print(f"profile of 10 steps, {shape}, validate={validate}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu-kernel.csv")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_kernel.py: needs a CUDA device")
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} multiprocessors; torch {torch.__version__}, triton {triton.__version__}")
    rows = []
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            default = triton_ops.tiling(*shape, props.multi_processor_count)
            variants = [("default", None, None)]
            if shape[0] <= 256:  # few rows: what splitting them buys
                variants.append(("one tile per row", default[0], triton.cdiv(shape[1], default[0]) * default[0]))
            for block in (2048, 4096):
                if block < shape[1]:
                    variants.append((f"block {block}", block, None))
            for name, block, span in variants:
                ms, floor_ms, gbs, floor_gbs = bench_kernel(shape, dtype, block, span)
                row = dict(shape="x".join(map(str, shape)), dtype=str(dtype).removeprefix("torch."), tiling=name,
                           kernel_us=1e3 * ms, floor_us=1e3 * floor_ms, kernel_gbs=gbs, floor_gbs=floor_gbs,
                           x_floor=ms / floor_ms)  # fmt: skip
                rows.append(row)
                print(f"{row['shape']:>12} {row['dtype']:>8} {name:>17}: {row['kernel_us']:8.1f} us {gbs:7.0f} GB/s"
                      f" | floor {row['floor_us']:8.1f} us {floor_gbs:7.0f} GB/s | {row['x_floor']:.2f}x floor", flush=True)  # fmt: skip
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    print("float32 element accuracy against mpmath (max relative error):", accuracy())
    profile_step(validate=True)
    profile_step(validate=False)


if __name__ == "__main__":
    main()
