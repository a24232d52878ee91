"""Implicit-differentiation overhead: (forward solve + implicit backward) / forward solve.

Two bilevel problems, one thread, float64:

* ridge regression (n=500, d=200): inner objective
  ``0.5 ||X w - y||^2 / n + 0.5 * lam * ||w||^2``, hyper-parameter ``lam``;
* l2-regularized logistic regression (n=500, d=100), hyper-parameter ``lam``.

The forward solve is plain gradient descent with step ``1/L`` run until the gradient norm is
below ``1e-6`` times its initial value (the inner solver a user would typically wrap), inside a
:func:`torchopt.diff.implicit.custom_root`-decorated function. The backward is
``torch.autograd.grad`` of a validation loss with respect to ``lam`` through the implicit
gradient. Each row reports the medians over repeats (after one warm-up) of the forward time and
of forward + backward, and the median of the per-repeat ratios (targets of issue #5: <= 1.2 with
``solve_cg``, <= 2.0 with the default ``solve_normal_cg``). A last row per problem is the floor:
the same CG with a hand-derived Hessian-vector product and no autograd in the backward. The
"autograd GD" rows repeat ``solve_cg`` / ``solve_normal_cg`` with the iMAML pattern: inner steps
and the optimality function computed with ``torch.autograd.grad`` of the inner objective.

Usage: ``python benchmarks/implicit_bench.py [--repeats 7]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

import torchopt
from torchopt.diff.implicit import custom_root

torch.set_num_threads(1)
DTYPE = torch.float64


def _gd(
    grad_fn: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor, lipschitz: float
) -> torch.Tensor:
    g = grad_fn(w)
    tol = 1e-6 * float(g.norm())
    for _ in range(100_000):
        w = w - g / lipschitz
        g = grad_fn(w)
        if float(g.norm()) <= tol:
            break
    return w


def ridge_problem(seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    n, d = 500, 200
    X = torch.randn(n, d, generator=gen, dtype=DTYPE)
    y = X @ torch.randn(d, generator=gen, dtype=DTYPE) + 0.5 * torch.randn(
        n, generator=gen, dtype=DTYPE
    )
    Xv = torch.randn(n, d, generator=gen, dtype=DTYPE)
    yv = Xv @ torch.randn(d, generator=gen, dtype=DTYPE)
    lam0 = 0.1

    def optimality(
        w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return X.T @ (X @ w - y) / n + lam * w

    lipschitz = float(torch.linalg.eigvalsh(X.T @ X / n).max()) + lam0

    def inner(
        init: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return _gd(lambda w: optimality(w, lam, X, y), init, lipschitz)

    def outer_loss(w: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((Xv @ w - yv) ** 2).mean()

    def hvp(w: torch.Tensor, lam: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return X.T @ (X @ v) / n + lam * v

    def objective(
        w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return 0.5 * ((X @ w - y) ** 2).mean() + 0.5 * lam * (w * w).sum()

    return dict(
        optimality=optimality,
        inner=inner,
        args=(X, y),
        d=d,
        lam0=lam0,
        outer=outer_loss,
        hvp=hvp,
        objective=objective,
        lipschitz=lipschitz,
    )


def logistic_problem(seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    n, d = 500, 100
    X = torch.randn(n, d, generator=gen, dtype=DTYPE)
    w_true = torch.randn(d, generator=gen, dtype=DTYPE) / d**0.5
    y = (X @ w_true + 0.5 * torch.randn(n, generator=gen, dtype=DTYPE) > 0).to(DTYPE)
    Xv = torch.randn(n, d, generator=gen, dtype=DTYPE)
    yv = (Xv @ w_true > 0).to(DTYPE)
    lam0 = 0.05

    def optimality(
        w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return X.T @ (torch.sigmoid(X @ w) - y) / n + lam * w

    lipschitz = 0.25 * float(torch.linalg.eigvalsh(X.T @ X / n).max()) + lam0

    def inner(
        init: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return _gd(lambda w: optimality(w, lam, X, y), init, lipschitz)

    def outer_loss(w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(Xv @ w, yv)

    def hvp(w: torch.Tensor, lam: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(X @ w)
        return X.T @ (s * (1 - s) * (X @ v)) / n + lam * v

    def objective(
        w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y)
        return loss + 0.5 * lam * (w * w).sum()

    return dict(
        optimality=optimality,
        inner=inner,
        args=(X, y),
        d=d,
        lam0=lam0,
        outer=outer_loss,
        hvp=hvp,
        objective=objective,
        lipschitz=lipschitz,
    )


def with_autograd_gradients(problem: dict[str, Any]) -> dict[str, Any]:
    """The iMAML pattern: inner GD steps and the optimality function both use autograd.

    The solver takes ``torch.autograd.grad`` of the inner objective at every step; the
    optimality function is that gradient with ``create_graph=True``.
    """
    objective, lipschitz = problem['objective'], problem['lipschitz']

    def optimality(w: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            w = w if w.requires_grad else w.detach().requires_grad_()
            return torch.autograd.grad(objective(w, *args), w, create_graph=True)[0]

    def grad_fn(w: torch.Tensor, args: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.enable_grad():
            w = w.detach().requires_grad_()
            return torch.autograd.grad(objective(w, *args), w)[0]

    def inner(init: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return _gd(lambda w: grad_fn(w, args), init, lipschitz)

    return {**problem, 'optimality': optimality, 'inner': inner}


def hand_written(problem: dict[str, Any]) -> Callable[..., torch.Tensor]:
    """The floor: the same forward, then CG with the hand-derived Hessian-vector product.

    No autograd in the backward at all: ``u = -H^{-1} dL/dw`` by :func:`torchopt.linalg.cg`
    with the closed-form ``H v``, then ``dL/dlam = u . w`` (``dF/dlam = w``). Any implementation
    that gets its products from autograd costs at least this much.
    """

    def run(init: torch.Tensor, lam: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            w = problem['inner'](init, lam, *args)
        w_req = w.detach().requires_grad_()
        (g,) = torch.autograd.grad(problem['outer'](w_req), w_req)
        u = torchopt.linalg.cg(lambda v: problem['hvp'](w, lam.detach(), v), -g)
        return torch.dot(u, w)

    return run


def measure(problem: dict[str, Any], solve: Any, repeats: int) -> tuple[float, float, float]:
    """Return (forward ms, forward + backward ms, median of the per-repeat ratios).

    Each repeat times a forward-only call and a forward + backward call back to back, so
    that both see the same machine load; the ratio is taken per repeat.
    """
    solver = custom_root(problem['optimality'], argnums=1, solve=solve)(problem['inner'])
    init = torch.zeros(problem['d'], dtype=DTYPE)
    fwd, total = [], []
    for _ in range(repeats + 1):  # the first round warms up
        lam = torch.tensor(problem['lam0'], dtype=DTYPE, requires_grad=True)
        t0 = time.perf_counter()
        solver(init, lam, *problem['args'])
        t1 = time.perf_counter()
        w = solver(init, lam, *problem['args'])
        (g,) = torch.autograd.grad(problem['outer'](w), lam)
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        total.append(t2 - t1)
    ratios = [b / a for a, b in zip(fwd[1:], total[1:])]
    return (
        statistics.median(fwd[1:]) * 1e3,
        statistics.median(total[1:]) * 1e3,
        statistics.median(ratios),
    )


def measure_floor(problem: dict[str, Any], repeats: int) -> tuple[float, float, float]:
    """:func:`measure` for :func:`hand_written` (forward alone vs forward + hand-written backward)."""
    run = hand_written(problem)
    init = torch.zeros(problem['d'], dtype=DTYPE)
    lam = torch.tensor(problem['lam0'], dtype=DTYPE)
    fwd, total = [], []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            problem['inner'](init, lam, *problem['args'])
        t1 = time.perf_counter()
        run(init, lam, *problem['args'])
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        total.append(t2 - t1)
    ratios = [b / a for a, b in zip(fwd[1:], total[1:])]
    return (
        statistics.median(fwd[1:]) * 1e3,
        statistics.median(total[1:]) * 1e3,
        statistics.median(ratios),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=11)
    ns = parser.parse_args()
    solvers = {
        'solve_cg': torchopt.linear_solve.solve_cg(),
        'solve_normal_cg (default)': torchopt.linear_solve.solve_normal_cg(),
        'solve_gmres': torchopt.linear_solve.solve_gmres(),
        'solve_bicgstab': torchopt.linear_solve.solve_bicgstab(),
        'solve_inv': torchopt.linear_solve.solve_inv(),
    }
    print(f'torch {torch.__version__}, threads={torch.get_num_threads()}, dtype={DTYPE}')
    print(f'{"problem":<22}{"linear solve":<28}{"forward ms":>11}{"fwd+bwd ms":>12}{"ratio":>8}')
    for name, factory in (
        ('ridge n=500 d=200', ridge_problem),
        ('logistic n=500 d=100', logistic_problem),
    ):
        problem = factory()
        for label, solve in solvers.items():
            fwd, total, ratio = measure(problem, solve, ns.repeats)
            print(f'{name:<22}{label:<28}{fwd:>11.2f}{total:>12.2f}{ratio:>8.2f}')
        fwd, total, ratio = measure_floor(problem, ns.repeats)
        print(f'{name:<22}{"hand-written HVP + CG":<28}{fwd:>11.2f}{total:>12.2f}{ratio:>8.2f}')
        autograd_problem = with_autograd_gradients(problem)
        for label in ('solve_cg', 'solve_normal_cg (default)'):
            fwd, total, ratio = measure(autograd_problem, solvers[label], ns.repeats)
            print(
                f'{name:<22}{"autograd GD, " + label.split()[0]:<28}{fwd:>11.2f}{total:>12.2f}{ratio:>8.2f}'
            )


if __name__ == '__main__':
    main()
