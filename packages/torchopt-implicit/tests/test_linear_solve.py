"""torchopt.linear_solve: the solver factories and utils against dense references."""

import pytest
import torch

from torchopt_implicit import linear_solve
from torchopt_implicit.linear_solve.utils import (
    LinearOperator,
    make_normal_matvec,
    make_ridge_matvec,
    make_rmatvec,
    materialize_matvec,
)

ALL = {
    'cg': linear_solve.solve_cg,
    'normal_cg': linear_solve.solve_normal_cg,
    'gmres': linear_solve.solve_gmres,
    'bicgstab': linear_solve.solve_bicgstab,
}


def _coupled_system(spd, gen):
    big = spd(7, gen)

    def matvec(tree):
        out = big @ torch.cat([tree[0], tree[1].reshape(-1)])
        return (out[:3], out[3:].reshape(2, 2))

    b = (
        torch.randn(3, generator=gen, dtype=torch.float64),
        torch.randn(2, 2, generator=gen, dtype=torch.float64),
    )
    ref = torch.linalg.solve(big, torch.cat([b[0], b[1].reshape(-1)]))
    return big, matvec, b, ref


def _flat(tree):
    return torch.cat([t.reshape(-1) for t in tree])


@pytest.mark.parametrize('name', sorted(ALL))
def test_iterative_solvers_multi_leaf(name, spd, gen) -> None:
    _, matvec, b, ref = _coupled_system(spd, gen)
    x = ALL[name](rtol=1e-13)(matvec, b)
    torch.testing.assert_close(_flat(x), ref, rtol=1e-9, atol=1e-11)


def test_solve_inv_keeps_cross_leaf_coupling(spd, gen) -> None:
    # upstream kept only the per-leaf diagonal blocks of A
    _, matvec, b, ref = _coupled_system(spd, gen)
    x = linear_solve.solve_inv()(matvec, b)
    torch.testing.assert_close(_flat(x), ref, rtol=1e-11, atol=1e-12)
    assert x[1].shape == (2, 2)


def test_solve_inv_scalar_ridge_and_ns(spd, gen) -> None:
    x = linear_solve.solve_inv()(lambda v: 3.0 * v, torch.tensor(6.0, dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor(2.0, dtype=torch.float64))
    a = spd(5, gen) / 4
    b = torch.randn(5, generator=gen, dtype=torch.float64)
    x = linear_solve.solve_inv(ridge=0.5)(lambda v: a @ v, b)
    torch.testing.assert_close(
        x, torch.linalg.solve(a + 0.5 * torch.eye(5, dtype=torch.float64), b)
    )
    x = linear_solve.solve_inv(ns=True, maxiter=300)(lambda v: a @ v, b)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize('name', sorted(ALL))
def test_ridge_and_call_time_override(name, spd, gen) -> None:
    a = spd(6, gen)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    solver = ALL[name](ridge=0.3, rtol=1e-2, maxiter=1)
    ref = torch.linalg.solve(a + 0.3 * torch.eye(6, dtype=torch.float64), b)
    if name == 'normal_cg':  # ridge is added to A^T A
        ref = torch.linalg.solve(a.T @ a + 0.3 * torch.eye(6, dtype=torch.float64), a.T @ b)
    x = solver(lambda v: a @ v, b, rtol=1e-13, maxiter=None)  # call-time keywords win
    torch.testing.assert_close(x, ref, rtol=1e-9, atol=1e-11)


def test_init_is_used(spd, gen) -> None:
    a = spd(6, gen)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(a, b)
    calls = []

    def matvec(v):
        calls.append(1)
        return a @ v

    x = linear_solve.solve_cg(init=exact)(matvec, b)
    torch.testing.assert_close(x, exact)
    assert len(calls) == 1  # only the initial residual


def test_unknown_keyword_rejected_at_factory_time() -> None:
    with pytest.raises(TypeError, match='tol'):
        linear_solve.solve_cg(tol=1e-3)
    with pytest.raises(TypeError, match='rtol'):
        linear_solve.solve_inv()(lambda v: v, torch.ones(2), rtol=1.0)


def test_normal_cg_nonsymmetric_and_symmetric(gen, spd) -> None:
    a = torch.randn(8, 8, generator=gen, dtype=torch.float64) + 4 * torch.eye(
        8, dtype=torch.float64
    )
    b = torch.randn(8, generator=gen, dtype=torch.float64)
    x = linear_solve.solve_normal_cg(rtol=1e-13)(lambda v: a @ v, b)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    s = spd(8, gen) - 0.5 * torch.eye(8, dtype=torch.float64)  # symmetric, maybe indefinite
    x = linear_solve.solve_normal_cg(rtol=1e-13)(lambda v: s @ v, b)
    torch.testing.assert_close(x, torch.linalg.solve(s, b), rtol=1e-8, atol=1e-10)
    # an explicit transpose is used as given
    op = LinearOperator(lambda v: a @ v, lambda v: a.T @ v)
    x = linear_solve.solve_normal_cg(rtol=1e-13)(op, b)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


def test_normal_cg_symmetric_shortcut_and_singular_fallback(gen, spd, sym_with_eigs) -> None:
    s = spd(40, gen, shift=0.05)
    b = torch.randn(40, generator=gen, dtype=torch.float64)
    counts = {}
    for label, solver in (
        ('shortcut', linear_solve.solve_normal_cg(rtol=1e-10)),
        ('normal', linear_solve.solve_normal_cg(rtol=1e-10, ridge=0.0)),  # ridge disables it
    ):
        calls = []
        x = solver(lambda v, calls=calls: calls.append(1) or s @ v, b)
        torch.testing.assert_close(x, torch.linalg.solve(s, b), rtol=1e-7, atol=1e-9)
        counts[label] = len(calls)
    assert counts['shortcut'] < counts['normal'] / 2, counts
    # singular and inconsistent: MINRES cannot meet the tolerance and gives up early (no run to
    # the default maxiter of 10 * n); normal CG then returns the minimum-norm least-squares
    # solution, as without the shortcut
    eigs = torch.linspace(0.5, 3.0, 30, dtype=torch.float64)
    eigs[:2] = 0.0
    a = sym_with_eigs(eigs, gen)
    rhs = torch.randn(30, generator=gen, dtype=torch.float64)
    calls = []
    x = linear_solve.solve_normal_cg(rtol=1e-12)(lambda v: calls.append(1) or a @ v, rhs)
    torch.testing.assert_close(x, torch.linalg.pinv(a) @ rhs, rtol=1e-7, atol=1e-9)
    assert len(calls) < 200, len(calls)  # MINRES alone would have been allowed 300


def test_utils(gen) -> None:
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    v = torch.randn(4, generator=gen, dtype=torch.float64)
    mv = lambda x: a @ x  # noqa: E731
    torch.testing.assert_close(make_rmatvec(mv, v)(v), a.T @ v)
    torch.testing.assert_close(make_normal_matvec(mv)(v), a.T @ a @ v)
    torch.testing.assert_close(make_ridge_matvec(mv, 0.5)(v), a @ v + 0.5 * v)
    matrix, flat_mv, ravel, unravel = materialize_matvec(mv, v)
    torch.testing.assert_close(matrix, a)
    tree = (torch.ones(2, 2, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    big = torch.randn(7, 7, generator=gen, dtype=torch.float64)
    matrix, flat_mv, ravel, unravel = materialize_matvec(lambda t: unravel_(big @ ravel_(t)), tree)
    torch.testing.assert_close(matrix, big)
    assert unravel(ravel(tree))[0].shape == (2, 2)


def ravel_(t):
    return torch.cat([t[0].reshape(-1), t[1]])


def unravel_(v):
    return (v[:4].reshape(2, 2), v[4:])
