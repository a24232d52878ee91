"""Shared helpers: a noise recorder and a plain-loop reference of the ES estimators."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable

import pytest
import torch

torch.set_num_threads(1)


class Recorder:
    """A Samplable that draws from ``dist`` and remembers every sample it returned."""

    def __init__(self, dist: torch.distributions.Distribution | None = None) -> None:
        self.dist = dist if dist is not None else torch.distributions.Normal(0.0, 1.0)
        self.draws: list[torch.Tensor] = []

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        draw = self.dist.sample(sample_shape)
        self.draws.append(draw.clone())
        return draw

    def noises(self, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """The noise each leaf of ``shapes`` received, shape ``(N, *leaf_shape)``, in float64.

        Per chunk, the estimator draws one ``(num, dim)`` sample for all leaves (of one dtype and
        device), ``dim`` their total number of elements, leaves in order.
        """
        sizes = [math.prod(shape) for shape in shapes]
        assert self.draws and all(d.shape[1:] == (sum(sizes),) for d in self.draws)
        flat = torch.cat(self.draws).to(torch.float64)
        parts = torch.split(flat, sizes, dim=1)
        return [part.reshape(-1, *shape) for part, shape in zip(parts, shapes)]

    def noise_for(self, shape: Sequence[int]) -> torch.Tensor:
        """The noise of the only perturbed leaf, of shape ``shape``."""
        return self.noises([shape])[0]


def reference_estimate(
    f: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    leaves: Sequence[torch.Tensor],
    noises: Sequence[torch.Tensor],
    method: str,
    sigma: float,
    grad_output: float = 1.0,
) -> list[torch.Tensor]:
    """The reference formulas, one plain Python evaluation per sample, in float64."""
    num = noises[0].shape[0]
    with torch.no_grad():
        theta = [leaf.detach().to(torch.float64) for leaf in leaves]
        f0 = f(theta)
        grads = [torch.zeros_like(t) for t in theta]
        for i in range(num):
            plus = f([t + sigma * n[i] for t, n in zip(theta, noises)])
            if method == 'naive':
                weight = plus / sigma
            elif method == 'forward':
                weight = (plus - f0) / sigma
            else:
                minus = f([t - sigma * n[i] for t, n in zip(theta, noises)])
                weight = (plus - minus) / (2 * sigma)
            for g, n in zip(grads, noises):
                g += grad_output * weight * n[i]
    return [g / num for g in grads]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def reference() -> Callable[..., list[torch.Tensor]]:
    return reference_estimate
