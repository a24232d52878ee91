"""Few-shot tasks from scikit-learn's bundled digits (no download), shared by the examples.

The 8x8 digits are rotated by 0, 90, 180 and 270 degrees, giving 40 classes (the Omniglot
trick). Classes are split into disjoint meta-train and meta-test sets; a task is an N-way
K-shot problem with a support and a query set, labels permuted per task.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ['FewShotDigits', 'Task']


class Task(NamedTuple):
    """One N-way task: support and query inputs (flattened 8x8 images) and labels."""

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor


class FewShotDigits:
    """Sample N-way K-shot tasks from rotated digits.

    Args:
        n_way: classes per task.
        k_shot: support examples per class.
        k_query: query examples per class.
        split: ``'train'`` (28 classes) or ``'test'`` (12 classes).
        seed: seed of the class split and of the task sampler.
    """

    def __init__(
        self,
        n_way: int = 5,
        k_shot: int = 1,
        k_query: int = 15,
        split: str = 'train',
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from sklearn.datasets import load_digits

        if split not in ('train', 'test'):
            raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=dtype) / 16.0  # (1797, 8, 8) in [0, 1]
        labels = torch.tensor(digits.target)
        xs, ys = [], []
        for r in range(4):
            xs.append(torch.rot90(images, r, dims=(1, 2)).reshape(len(images), -1))
            ys.append(labels + 10 * r)
        x, y = torch.cat(xs), torch.cat(ys)
        perm = torch.randperm(40, generator=torch.Generator().manual_seed(seed))
        classes = perm[:28] if split == 'train' else perm[28:]
        self.by_class = [x[y == c] for c in classes.tolist()]
        self.n_way, self.k_shot, self.k_query = n_way, k_shot, k_query
        self.generator = torch.Generator().manual_seed(seed + (0 if split == 'train' else 1))

    def sample(self) -> Task:
        """Draw one task."""
        g = self.generator
        chosen = torch.randperm(len(self.by_class), generator=g)[: self.n_way].tolist()
        xs, ys, xq, yq = [], [], [], []
        for label, c in enumerate(chosen):
            pool = self.by_class[c]
            idx = torch.randperm(len(pool), generator=g)[: self.k_shot + self.k_query]
            xs.append(pool[idx[: self.k_shot]])
            xq.append(pool[idx[self.k_shot :]])
            ys.append(torch.full((self.k_shot,), label))
            yq.append(torch.full((self.k_query,), label))
        return Task(torch.cat(xs), torch.cat(ys), torch.cat(xq), torch.cat(yq))

    def batch(self, size: int) -> Task:
        """Draw ``size`` tasks stacked along a leading task dimension (for ``torch.func.vmap``)."""
        tasks = [self.sample() for _ in range(size)]
        return Task(*(torch.stack(parts) for parts in zip(*tasks)))
