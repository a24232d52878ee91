"""ImplicitMetaGradientModule: validation, error messages and meta-gradients vs closed forms."""

import pytest
import torch

import torchopt
from torchopt_implicit import ImplicitMetaGradientModule
from torchopt_implicit.nn.module import enable_implicit_gradients, make_optimality_from_objective

F64 = torch.float64


def _data(gen, n=30, d=5):
    X = torch.randn(n, d, generator=gen, dtype=F64)
    y = torch.randn(n, generator=gen, dtype=F64)
    return X, y


def _closed_form(X, y, lam):
    H = X.T @ X + lam * torch.eye(X.shape[1], dtype=F64)
    w = torch.linalg.solve(H, X.T @ y)
    return w, -torch.linalg.solve(H, w)  # solution and dw/dlam


class RidgeObjective(
    ImplicitMetaGradientModule, linear_solve=torchopt.linear_solve.solve_cg(rtol=1e-13)
):
    def __init__(self, lam, d):
        super().__init__()
        self.lam = lam
        self.w = torch.nn.Parameter(torch.zeros(d, dtype=F64))

    def objective(self, X, y):
        return 0.5 * (X @ self.w - y).square().sum() + 0.5 * self.lam * self.w.square().sum()

    def solve(self, X, y):
        # any inner optimizer: plain gradient descent through torchopt's functional SGD
        optim = torch.optim.SGD(
            self.parameters(), lr=1.0 / (torch.linalg.matrix_norm(X, 2) ** 2 + self.lam.item())
        )
        with torch.enable_grad():
            for _ in range(3000):
                optim.zero_grad()
                self.objective(X, y).backward(inputs=list(self.parameters()))
                optim.step()
        return 'solved'


class RidgeOptimality(ImplicitMetaGradientModule):  # default linear solve (normal CG)
    def __init__(self, lam, d):
        super().__init__()
        self.lam = lam
        self.w = torch.nn.Parameter(torch.zeros(d, dtype=F64))

    def optimality(self, X, y):
        return (X.T @ (X @ self.w - y) + self.lam * self.w,)

    def solve(self, X, y):
        with torch.no_grad():
            self.w.copy_(
                torch.linalg.solve(X.T @ X + self.lam * torch.eye(X.shape[1], dtype=F64), X.T @ y)
            )


@pytest.mark.parametrize('cls', [RidgeObjective, RidgeOptimality])
def test_meta_gradient_matches_closed_form(cls, gen) -> None:
    X, y = _data(gen)
    lam = torch.tensor(3.0, dtype=F64, requires_grad=True)
    inner = cls(lam, X.shape[1])
    assert [n for n, _ in inner.named_meta_parameters()] == ['lam']
    out = inner.solve(X, y)
    assert out == ('solved' if cls is RidgeObjective else None)
    w_ref, dw_ref = _closed_form(X, y, 3.0)
    torch.testing.assert_close(inner.w.detach(), w_ref, rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(inner.w.sum(), lam)
    assert abs((g - dw_ref.sum()) / dw_ref.sum()) <= 1e-8
    assert lam.grad is None  # the inner solve did not leak gradients into the meta-parameter


def test_validation_messages() -> None:
    with pytest.raises(
        TypeError, match='requires either an optimality\\(\\) method or an objective\\(\\) method'
    ):

        class Neither(ImplicitMetaGradientModule):
            def solve(self):
                pass

    for kind in ('optimality', 'objective'):
        for wrapper, word in ((staticmethod, 'staticmethod'), (classmethod, 'classmethod')):
            with pytest.raises(TypeError, match=f'method {kind}\\(\\) must not be a {word}.'):
                type(
                    'Bad',
                    (ImplicitMetaGradientModule,),
                    {kind: wrapper(lambda *a: None), 'solve': lambda self: None},
                )
        with pytest.raises(TypeError, match=f'method {kind}\\(\\) must be callable.'):
            type('Bad', (ImplicitMetaGradientModule,), {kind: 3, 'solve': lambda self: None})


def test_helpers_errors() -> None:
    with pytest.raises(
        TypeError, match='Implicit gradients are already enabled for the `solve` method.'
    ):
        enable_implicit_gradients(RidgeOptimality)
    with pytest.raises(TypeError, match='The objective function is not defined.'):
        make_optimality_from_objective(RidgeOptimality)


def test_solve_is_abstract() -> None:
    class NoSolve(ImplicitMetaGradientModule):
        def optimality(self):
            return ()

    with pytest.raises(TypeError, match='abstract'):
        NoSolve()


def test_no_parameters_or_meta_parameters() -> None:
    lam = torch.tensor(1.0, requires_grad=True)

    class NoParams(ImplicitMetaGradientModule):
        def __init__(self, lam):
            super().__init__()
            self.lam = lam

        def optimality(self):
            return ()

        def solve(self):
            pass

    with pytest.raises(RuntimeError, match='The module has no parameters.'):
        NoParams(lam).solve()

    class NoMeta(RidgeOptimality):
        pass

    with pytest.raises(RuntimeError, match='The module has no meta-parameters.'):
        NoMeta(torch.tensor(1.0, dtype=F64), 3).solve(
            torch.ones(4, 3, dtype=F64), torch.ones(4, dtype=F64)
        )


def test_meta_module_and_linear_solve_keyword(gen) -> None:
    # proximal inner problem: min_w 0.5||Xw - y||^2 + 0.5 reg ||w - w_meta||^2, w_meta from a meta-module
    X, y = _data(gen, d=4)
    reg = 2.0

    class Proximal(ImplicitMetaGradientModule, linear_solve=torchopt.linear_solve.solve_inv()):
        def __init__(self, meta):
            super().__init__()
            self.meta = meta
            self.w = torch.nn.Parameter(torch.zeros(4, dtype=F64))

        def objective(self, X, y):
            return (
                0.5 * (X @ self.w - y).square().sum()
                + 0.5 * reg * (self.w - self.meta.weight[0]).square().sum()
            )

        def solve(self, X, y):
            with torch.no_grad():
                H = X.T @ X + reg * torch.eye(4, dtype=F64)
                self.w.copy_(torch.linalg.solve(H, X.T @ y + reg * self.meta.weight[0]))

    assert Proximal.linear_solve is not None
    meta = torch.nn.Linear(4, 1, bias=False).double()
    inner = Proximal(meta)
    inner.solve(X, y)
    (g,) = torch.autograd.grad(inner.w.sum(), meta.weight)
    H = X.T @ X + reg * torch.eye(4, dtype=F64)
    ref = reg * torch.linalg.solve(H, torch.ones(4, dtype=F64))  # d(sum w)/d w_meta = reg H^{-1} 1
    torch.testing.assert_close(g[0], ref, rtol=1e-10, atol=1e-12)
