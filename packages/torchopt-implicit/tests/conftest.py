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


def _sym_with_eigs(eigs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen, dtype=torch.float64))
    return q @ torch.diag(eigs.to(torch.float64)) @ q.T


@pytest.fixture
def sym_with_eigs():
    """``sym_with_eigs(eigs, gen)``: a random symmetric float64 matrix with these eigenvalues."""
    return _sym_with_eigs
