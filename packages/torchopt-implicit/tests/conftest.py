"""Shared settings for the torchopt-implicit tests: one thread, float64 references."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _spd(n: int, gen: torch.Generator, shift: float = 1.0) -> torch.Tensor:
    q = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return q @ q.T / n + shift * torch.eye(n, dtype=torch.float64)


@pytest.fixture
def spd():
    """``spd(n, gen, shift=1.0)``: a random symmetric positive definite float64 matrix."""
    return _spd
