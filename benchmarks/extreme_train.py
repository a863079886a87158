"""Scale test: train an encoder and a fused head on a generated data set with 1,000,000 labels.

    python benchmarks/extreme_train.py [--labels 1000000] [--samples 8192] [--epochs 3]

The data: sparse features (1000 dimensions) and 5 positives per sample drawn from a power law over the labels; each
label has a signature of 3 features, and a sample's features are its labels' signatures plus noise, so the task is
learnable. Targets stay sparse (label lists) and the head never builds the (batch x labels) logits: P@k on held-out
samples is computed with ``topk`` in chunks. Prints time per step, the resident peak and P@1/3/5.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from softmargin.torch import LinearMultiLabelSoftMarginLoss


def generate(num_samples: int, num_labels: int, num_features: int, rng: np.random.Generator):
    ranks = np.arange(1, num_labels + 1)
    popularity = ranks ** -0.8
    popularity /= popularity.sum()
    signatures = rng.integers(0, num_features, size=(num_labels, 3))
    cumulative = np.cumsum(popularity)
    labels = [np.unique(np.searchsorted(cumulative, rng.random(5) * cumulative[-1])) for _ in range(num_samples)]
    X = np.zeros((num_samples, num_features), np.float32)
    for i, ls in enumerate(labels):
        X[i, signatures[ls].ravel()] += 1.0
        X[i, rng.integers(0, num_features, 5)] += 0.5  # noise
    return X, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    started = time.perf_counter()
    X, labels = generate(args.samples, args.labels, args.features, rng)
    split = int(0.9 * args.samples)
    print(f"generated {args.samples} samples, {args.labels:,} labels in {time.perf_counter() - started:.1f} s", flush=True)
    encoder = torch.nn.Sequential(torch.nn.Linear(args.features, args.hidden), torch.nn.ReLU())
    head = LinearMultiLabelSoftMarginLoss(args.hidden, args.labels)
    with torch.no_grad():  # start at the prior (about 5 positives in a million), as usual for rare positives
        head.bias.fill_(float(np.log(5 / args.labels)))
        head.weight.mul_(0.1)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr)
    X_t = torch.from_numpy(X)
    step_times = []
    for epoch in range(args.epochs):
        order = rng.permutation(split)
        total = 0.0
        for start in range(0, split, args.batch_size):
            batch = order[start:start + args.batch_size]
            t0 = time.perf_counter()
            loss = head(encoder(X_t[batch]), [labels[i] for i in batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_times.append(time.perf_counter() - t0)
            total += loss.item() * len(batch)
        with torch.no_grad():
            _, top = head.topk(encoder(X_t[split:]), 5)
        hits = np.array([[int(t) in set(labels[split + i]) for t in row] for i, row in enumerate(top.tolist())])
        p_at = {k: hits[:, :k].sum(1).mean() / k for k in (1, 3, 5)}
        print(f"epoch {epoch + 1}: train loss {total / split:.6f}, held-out P@1 {p_at[1]:.3f} P@3 {p_at[3]:.3f} "
              f"P@5 {p_at[5]:.3f}, median step {np.median(step_times):.2f} s", flush=True)  # fmt: skip
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    params_gb = sum(p.numel() * 4 for p in params) / 2**30
    print(f"peak resident memory {peak_gb:.2f} GB (parameters {params_gb:.2f} GB; with their gradients and Adam's two "
          f"moments {4 * params_gb:.2f} GB); the (batch x labels) logits would be {args.batch_size * args.labels * 4 / 2**30:.2f} GB "
          f"a copy; total {time.perf_counter() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
