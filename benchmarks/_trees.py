"""Parameter trees shared by the benchmarks (deterministic shapes)."""

from __future__ import annotations

import torch


def make_tree(
    num_tensors: int, total: int, dtype=torch.float32, seed: int = 0
) -> list[torch.Tensor]:
    """``num_tensors`` tensors with ``total`` elements in all, of varied sizes (like a network)."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(num_tensors, generator=g, dtype=torch.float64) ** 3 + 1e-3
    sizes = (weights / weights.sum() * total).long().clamp_min(1)
    sizes[0] += total - int(sizes.sum())
    return [torch.randn(int(n), generator=g, dtype=dtype) for n in sizes]


TREES = {
    'a: 121 tensors / 10M': (121, 10_000_000),
    'b: 20 tensors / 101k': (20, 101_000),
}
