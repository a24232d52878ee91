"""TorchOpt 0.7 ``ImplicitMetaGradientModule`` code runs unchanged (issue #18, item 2).

Each test's docstring states the upstream (TorchOpt 0.7.3) behaviour it checks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchopt
from torchopt_implicit import ImplicitMetaGradientModule

F64 = torch.float64


class Prox(ImplicitMetaGradientModule, linear_solve=torchopt.linear_solve.solve_normal_cg()):
    r"""Upstream's tutorial shape: :math:`\min_p \|p - m\|^2 + \|p \odot x\|^2`.

    The solution is :math:`p^\star = m / (1 + x^2)`, so
    :math:`\partial p^\star / \partial m = 1 / (1 + x^2)`.
    """

    def __init__(self, meta_param: torch.Tensor, n_inner_iter: int = 300) -> None:
        super().__init__()
        self.meta_param = meta_param
        self.param = nn.Parameter(meta_param.detach().clone())
        self.n_inner_iter = n_inner_iter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.param * x

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        return (self.param - self.meta_param).square().sum() + (self.param * x).square().sum()

    def solve(self, x: torch.Tensor) -> Prox:
        raise NotImplementedError


def _check_solution(inner: Prox, meta: torch.Tensor, x: torch.Tensor) -> None:
    torch.testing.assert_close(inner.param.detach(), meta.detach() / (1 + x**2))
    (g,) = torch.autograd.grad(inner(x).sum(), meta)
    torch.testing.assert_close(g, x / (1 + x**2))


def test_solve_runs_without_grad_and_may_update_parameters_in_place() -> None:
    """Upstream: ``solve()`` runs with gradient recording off (inside custom_root's forward).

    So a ``solve()`` that writes the module's own parameters in place, outside any
    ``torch.no_grad()`` block, runs; its autograd work happens under ``torch.enable_grad()``.
    The caller's grad mode is restored afterwards and the solution carries the implicit
    meta-gradient.
    """
    seen: list[bool] = []

    class InPlace(Prox):
        def solve(self, x: torch.Tensor) -> InPlace:
            seen.append(torch.is_grad_enabled())
            for _ in range(self.n_inner_iter):
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(self.objective(x), self.param)
                self.param.sub_(0.1 * g)  # an in-place update of a leaf that requires grad
            self.param.copy_(self.param.clone())
            return self

    meta = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    x = torch.tensor([0.5, 1.0], dtype=F64)
    inner = InPlace(meta)
    assert torch.is_grad_enabled()
    assert inner.solve(x) is inner
    assert seen == [False] and torch.is_grad_enabled()
    _check_solution(inner, meta, x)


def test_tutorial_solve_with_an_optimizer() -> None:
    """Upstream's implicit-gradient tutorial: an optimizer loop inside ``torch.enable_grad()``."""

    class WithOptimizer(Prox):
        def solve(self, x: torch.Tensor) -> WithOptimizer:
            params = tuple(self.parameters())
            inner_optim = torchopt.SGD(params, lr=0.1)
            with torch.enable_grad():
                for _ in range(self.n_inner_iter):
                    loss = self.objective(x)
                    inner_optim.zero_grad()
                    loss.backward(inputs=params)
                    inner_optim.step()
            return self

    meta = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    x = torch.tensor([0.5, 1.0], dtype=F64)
    inner = WithOptimizer(meta)
    inner.solve(x)
    _check_solution(inner, meta, x)
    assert meta.grad is None


class _Empty(ImplicitMetaGradientModule):
    def __init__(self, x: object) -> None:
        super().__init__()
        self.x = x

    def objective(self) -> torch.Tensor:
        return self.x.mean()

    def solve(self) -> None:
        pass


def test_no_parameters_or_no_meta_parameters() -> None:
    """Upstream: ``solve()`` and the derived ``optimality()`` raise RuntimeError.

    ``'The module has no parameters.'`` is checked first, then ``'The module has no
    meta-parameters.'``; a module given in eval mode is a child, not a meta-module.
    """
    with pytest.raises(RuntimeError, match='The module has no parameters.'):
        _Empty(torch.zeros(8)).solve()
    with pytest.raises(RuntimeError, match='The module has no parameters.'):
        _Empty(torch.zeros(8, requires_grad=True)).solve()
    with pytest.raises(RuntimeError, match='The module has no parameters.'):
        _Empty(torch.zeros(8, requires_grad=True)).optimality()

    m = _Empty(torch.zeros(8))
    m.register_parameter('y', torch.zeros(8, requires_grad=True))
    with pytest.raises(RuntimeError, match='The module has no meta-parameters.'):
        m.solve()
    with pytest.raises(RuntimeError, match='The module has no meta-parameters.'):
        m.optimality()

    with pytest.raises(RuntimeError, match='The module has no meta-parameters.'):
        _Empty(nn.Linear(8, 8).eval()).solve()

    m = _Empty(torch.zeros(8, requires_grad=True))
    m.register_parameter('y', torch.zeros(8, requires_grad=True))
    m.solve()
    m = _Empty(nn.Linear(8, 8))
    m.register_parameter('y', torch.zeros(8, requires_grad=True))
    m.solve()
