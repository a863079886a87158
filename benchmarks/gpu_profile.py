"""Host-side profile of the public loss on a CUDA device: where the time of one eager forward+backward goes (the
operations launched, their host time), with and without validation. Run by scripts/gpu_check.sh on a lent GPU."""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

import softmargin.torch as st


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 2000, generator=gen).cuda().requires_grad_(True)
    y = (torch.rand(4096, 2000, generator=gen) < 0.1).float().cuda()
    w = (torch.rand(2000, generator=gen) + 0.5).cuda()
    for validate in (True, False):
        for _ in range(5):
            st.multilabel_soft_margin_loss(x, y, w, validate=validate).backward()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                st.multilabel_soft_margin_loss(x, y, w, validate=validate).backward()
            torch.cuda.synchronize()
        print(f"validate={validate}: 20 calls, (4096, 2000) float32 with a (C,) weight")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
