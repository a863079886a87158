"""One rank of the label-parallel test (run as a separate process by test_linear_head.py)."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from softmargin.torch import LinearMultiLabelSoftMarginLoss


def main(rank: int, world: int, init_file: str, out: str, mode: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=10))
    torch.manual_seed(0)
    hidden = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
    full_weight = torch.randn(1000, 8, dtype=torch.float64)
    full_bias = torch.randn(1000, dtype=torch.float64)
    target = (torch.rand(16, 1000) < 0.02).double()
    shard = slice(rank * 1000 // world, (rank + 1) * 1000 // world)
    head = LinearMultiLabelSoftMarginLoss(8, shard.stop - shard.start, process_group=dist.group.WORLD,
                                          label_offset=shard.start, dtype=torch.float64, chunk_size=128)
    with torch.no_grad():
        head.weight.copy_(full_weight[shard])
        head.bias.copy_(full_bias[shard])
    if mode == "fail" and rank == 1:
        raise SystemExit("rank 1 fails before the collective")
    loss = head(hidden, target[:, shard])
    loss.backward()
    torch.save({"loss": loss.detach(), "hidden": hidden.grad, "weight": head.weight.grad, "bias": head.bias.grad,
                "shard": (shard.start, shard.stop)}, out)
    dist.barrier()  # both ranks are done before either tears gloo down
    dist.destroy_process_group()
    # gloo's threads can still be winding down at interpreter exit: once (CI, a loaded machine) a rank died there with
    # "terminate called without an active exception" after writing its results; leave without the C++ destructors
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
