"""The Triton kernels alone on a CUDA device (``softmargin.kernels.triton_kernels``): time (``triton.testing.do_bench``,
median) and memory bandwidth of the plain kernel against a copy of the same bytes, each option's time against the
plain kernel's, sparse targets against dense ones, the fused linear head per chunk against the plain path at a
million labels, and the float32 accuracy against mpmath.

    python benchmarks/gpu_kernel.py [--out benchmarks/results/gpu-kernel.csv] [--quick]

Bandwidth counts the bytes the kernel must move: one read of the logits and the target, one write of the gradient
(the weight row and the row sums are negligible). The floor reads and writes as many bytes (``torch.add`` of the
logits and the target into a new tensor). Targets (issue 12): the kernel <= 1.3x the floor; each option <= 1.3x the
plain kernel; the linear head at C = 1e6 faster than the plain path, with a small fraction of its extra memory.
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np
import torch
import triton

from softmargin.kernels import triton_kernels as tk

SHAPES = ((4096, 2000), (256, 100_000), (32, 10), (64, 80), (256, 1000), (16384, 8192), (4, 1_000_000))
OPTION_SHAPES = ((4096, 2000), (256, 100_000))
DTYPES = (torch.float32, torch.bfloat16)
ROWS: list[dict[str, object]] = []
OUT = "benchmarks/results/gpu-kernel.csv"


def _ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=60)


def _record(section: str, **row: object) -> None:
    """Print a result and rewrite the CSV with every result so far (a run cut short by its time limit keeps them)."""
    ROWS.append({"section": section, **row})
    fields = list(dict.fromkeys(k for r in ROWS for k in r))
    with open(OUT, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in ROWS)
    print(
        f"{section:>9} " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
        flush=True,
    )


def _data(shape, dtype, density=0.1, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, device="cuda", generator=gen).to(dtype)
    y = (torch.rand(shape, device="cuda", generator=gen) < density).to(dtype)
    return x, y


def plain_kernel(shapes) -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for shape in shapes:
        for dtype in DTYPES:
            x, y = _data(shape, dtype)
            w = torch.rand(shape[1], device="cuda") + 0.5
            block, span, _ = tk.tiling(*shape, sms)
            variants = [("default", None, None)]
            if shape[0] <= 256 and span < shape[1]:  # few rows: what splitting them buys
                variants.append(("one tile per row", block, triton.cdiv(shape[1], block) * block))
            floor = _ms(lambda: torch.add(x, y))
            moved = 3 * x.numel() * x.element_size()
            for name, b, s in variants:
                ms = _ms(lambda: tk.fused_rows(x, y, weight=w, scale=1.0 / x.numel(), need_grad=True, block=b, span=s))
                _record("plain", shape="x".join(map(str, shape)), dtype=str(dtype)[6:], tiling=name, kernel_us=1e3 * ms,
                        floor_us=1e3 * floor, kernel_gbs=moved / ms / 1e6, x_floor=ms / floor)  # fmt: skip


def options() -> None:
    """Each option's time over the plain kernel's (same shape, dtype and weight), the target check, sparse targets."""
    for shape in OPTION_SHAPES:
        for dtype in DTYPES if shape == OPTION_SHAPES[0] else DTYPES[:1]:
            x, y = _data(shape, dtype, density=0.01)
            n, c = shape
            gen = torch.Generator(device="cuda").manual_seed(1)
            full = lambda: torch.rand(shape, device="cuda", generator=gen) + 0.5
            cls = torch.rand(c, device="cuda", generator=gen) + 0.5
            cases = {
                "plain": {},
                "class weight": dict(weight=cls),
                "full weight": dict(weight=full()),
                "pos_weight": dict(pos_weight=cls),
                "class mask": dict(mask=torch.rand(c, device="cuda", generator=gen) < 0.8),
                "full mask": dict(mask=torch.rand(shape, device="cuda", generator=gen) < 0.8),
                "row_scale": dict(row_scale=torch.rand(n, device="cuda", generator=gen)),
                "smoothing": dict(label_smoothing=0.1),
                "focal": dict(gamma_pos=2.0, gamma_neg=2.0),
                "asymmetric clip": dict(gamma_neg=4.0, clip=0.05),
                "check_target": dict(check_target=True),
                "everything": dict(weight=cls, pos_weight=cls, mask=torch.rand(c, device="cuda", generator=gen) < 0.8,
                                   label_smoothing=0.1, gamma_pos=1.0, gamma_neg=4.0, clip=0.05, check_target=True),
            }  # fmt: skip
            base = None
            for name, opts in cases.items():
                ms = _ms(lambda: tk.fused_rows(x, y, **opts, scale=1.0 / x.numel(), need_grad=True))
                base = ms if base is None else base
                _record(
                    "options",
                    shape=f"{n}x{c}",
                    dtype=str(dtype)[6:],
                    option=name,
                    kernel_us=1e3 * ms,
                    x_plain=ms / base,
                )
            for density in (0.001, 0.01):
                xs, ys = _data(shape, dtype, density=density, seed=2)
                csr = ys.to_sparse_csr()
                sparse = (csr.crow_indices(), csr.col_indices(), None)
                dense_ms = _ms(lambda: tk.fused_rows(xs, ys, scale=1.0, need_grad=True))
                ms = _ms(lambda: tk.fused_rows(xs, None, sparse=sparse, scale=1.0, need_grad=True))
                _record("sparse", shape=f"{n}x{c}", dtype=str(dtype)[6:], density=density, kernel_us=1e3 * ms,
                        dense_us=1e3 * dense_ms, x_dense=ms / dense_ms)  # fmt: skip


def _peak_extra(fn) -> tuple[float, int]:
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return _ms(fn), torch.cuda.max_memory_allocated() - before


def linear_head(num_rows=256, hidden_size=256, num_labels=1_000_000, chunk=65536) -> None:
    """Loss and the three gradients of ``loss(hidden @ head.T + bias, y)`` with sparse positives: the plain path
    (full logits, then the kernel) against one chunk of labels at a time (``linear_logits_chunk``)."""
    for dtype in DTYPES:
        gen = torch.Generator(device="cuda").manual_seed(3)
        hidden = torch.randn(num_rows, hidden_size, device="cuda", generator=gen).to(dtype)
        head = (torch.randn(num_labels, hidden_size, device="cuda", generator=gen) * 0.05).to(dtype)
        bias = torch.zeros(num_labels, device="cuda", dtype=dtype)
        stride = num_labels // 8  # eight positives per row, one in each eighth of the labels: ascending and unique
        offsets = torch.randint(0, stride, (num_rows, 8), device="cuda", generator=gen)
        indices = (offsets + torch.arange(8, device="cuda") * stride).reshape(-1)
        indptr = torch.arange(0, indices.numel() + 1, 8, device="cuda")
        sparse = (indptr, indices, None)
        scale = 1.0 / (num_rows * num_labels)
        grads = (torch.empty_like(hidden), torch.empty_like(head), torch.empty_like(bias))

        def plain():
            logits = torch.nn.functional.linear(hidden, head, bias)
            sums, grad = tk.fused_rows(logits, None, sparse=sparse, scale=scale, need_grad=True, grad_out=logits)
            torch.mm(grad, head, out=grads[0])
            torch.mm(grad.T, hidden, out=grads[1])
            torch.sum(grad, 0, out=grads[2])
            return sums

        def chunked():
            sums = torch.zeros(num_rows, device="cuda")
            grads[0].zero_()
            for c0 in range(0, num_labels, chunk):
                c1 = min(c0 + chunk, num_labels)
                part, grad = tk.linear_logits_chunk(hidden, head[c0:c1], bias[c0:c1], None, sparse=sparse,
                                                    sparse_origin=(0, c0), scale=scale, need_grad=True)  # fmt: skip
                sums += part
                grads[0].addmm_(grad, head[c0:c1])
                torch.mm(grad.T, hidden, out=grads[1][c0:c1])
                torch.sum(grad, 0, out=grads[2][c0:c1])
            return sums

        logits_bytes = num_rows * num_labels * hidden.element_size()
        for name, fn in (("plain", plain), ("chunked", chunked)):
            ms, extra = _peak_extra(fn)
            _record("linear", dtype=str(dtype)[6:], path=name, shape=f"{num_rows}x{hidden_size}x{num_labels}", ms=ms,
                    extra_mib=extra / 2**20, x_logits=extra / logits_bytes)  # fmt: skip


def accuracy() -> None:
    """float32: every element's loss and gradient against mpmath / float64 over 1e-6 <= |x| <= 100, and the row
    sums of a million classes against mpmath (the accuracy contract: 2e-7 relative)."""
    import mpmath

    magnitudes = np.logspace(-6, 2, 2000)
    x = np.concatenate([-magnitudes, magnitudes]).astype(np.float32)
    xc = torch.from_numpy(x).reshape(-1, 1).cuda()
    for target in (0.0, 1.0):
        sums, grad = tk.fused_rows(xc, torch.full_like(xc, target), scale=1.0, need_grad=True)
        with mpmath.workdps(40):
            exact = np.array([float(mpmath.log1p(mpmath.exp(-mpmath.mpf(float(v)) if target else mpmath.mpf(float(v)))))
                              for v in x])  # fmt: skip
        keep = exact > 1e-30
        ours = sums.cpu().double().numpy()
        x64 = x.astype(np.float64)
        exact_grad = 1 / (1 + np.exp(-x64)) if target == 0 else -1 / (1 + np.exp(x64))
        g = grad.cpu().double().numpy().ravel()
        normal = np.abs(exact_grad) >= np.finfo(np.float32).tiny
        _record(
            "accuracy",
            what=f"element loss y={target:g}",
            max_rel=float(np.max(np.abs(ours[keep] - exact[keep]) / exact[keep])),
        )
        _record("accuracy", what=f"element grad y={target:g}",
                max_rel=float(np.max(np.abs(g - exact_grad)[normal] / np.abs(exact_grad)[normal])))  # fmt: skip
    sys.path.insert(0, "tests")
    from helpers import long_rows_with_exact_sums

    xr, yr, wr, exact_rows = long_rows_with_exact_sums(4, 10**6, seed=4)
    sums, _ = tk.fused_rows(xr.cuda(), yr.cuda(), weight=wr.cuda(), scale=1.0, need_grad=False)
    rel = np.abs(sums.cpu().double().numpy() - exact_rows) / exact_rows
    _record("accuracy", what="row sums, 1e6 classes", max_rel=float(rel.max()))


def profile_step(shape=(4096, 2000)) -> None:
    """Where one forward+backward of the public loss spends its time (host and device), by torch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    from softmargin.torch import multilabel_soft_margin_loss

    x = torch.randn(shape, device="cuda").requires_grad_(True)
    y = (torch.rand(shape, device="cuda") < 0.1).float()
    w = torch.rand(shape[-1], device="cuda") + 0.5

    def step():
        x.grad = None
        multilabel_soft_margin_loss(x, y, weight=w).backward()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    print(f"profile of 10 steps of the public loss, {shape}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=48))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu-kernel.csv")
    parser.add_argument("--quick", action="store_true", help="three shapes, no linear head, no profile")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_kernel.py: needs a CUDA device")
    props = torch.cuda.get_device_properties(0)
    print(
        f"{props.name}, {props.multi_processor_count} multiprocessors; torch {torch.__version__}, triton {triton.__version__}"
    )
    global OUT
    OUT = args.out
    plain_kernel(SHAPES[:3] if args.quick else SHAPES)
    options()
    if not args.quick:
        linear_head()
    accuracy()
    print(f"written to {args.out}")
    if not args.quick:
        profile_step()


if __name__ == "__main__":
    main()
