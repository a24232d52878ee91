"""torchopt.linalg: cg, minres, gmres, bicgstab, ns, ns_inv and utils against dense references."""

import subprocess
import sys
import textwrap

import pytest
import torch

from torchopt_implicit import linalg
from torchopt_implicit.linalg.utils import ConvergenceWarning, cat_shapes, normalize_matvec

SOLVERS = [linalg.cg, linalg.minres, linalg.gmres, linalg.bicgstab]


@pytest.mark.parametrize('solver', SOLVERS)
@pytest.mark.parametrize('precond', [None, 'jacobi'])
def test_spd_matrix_matches_dense_solve(solver, precond, gen, spd) -> None:
    a = spd(25, gen) + torch.diag(torch.linspace(0, 5, 25, dtype=torch.float64))
    b = torch.randn(25, generator=gen, dtype=torch.float64)
    x = solver(a, b, rtol=1e-12, M=precond)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize('dtype', [torch.float64, torch.complex128])  # host floats / tensor scalars
@pytest.mark.parametrize('solver', [linalg.gmres, linalg.bicgstab])
def test_nonsymmetric_matches_dense_solve(solver, gen, dtype) -> None:
    a = torch.randn(20, 20, generator=gen, dtype=dtype) + 8 * torch.eye(20, dtype=dtype)
    b = torch.randn(20, generator=gen, dtype=dtype)
    x = solver(lambda v: a @ v, b, rtol=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize('x0', [False, True])
def test_minres_symmetric_indefinite(gen, x0, sym_with_eigs) -> None:
    eigs = torch.linspace(-4.0, 6.0, 30, dtype=torch.float64)
    eigs[eigs.abs() < 0.5] = 0.5  # indefinite, well away from singular
    a = sym_with_eigs(eigs, gen)
    b = torch.randn(30, generator=gen, dtype=torch.float64)
    init = torch.randn(30, generator=gen, dtype=torch.float64) if x0 else None
    x = linalg.minres(lambda v: a @ v, b, init, rtol=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-11)
    # far fewer products than the dimension would suggest is not promised; exactness at n is
    calls = []
    linalg.minres(lambda v: calls.append(1) or a @ v, b, rtol=1e-12, maxiter=30, warn=False)
    assert len(calls) <= 30


def test_gmres_short_restart(gen) -> None:
    a = torch.randn(20, 20, generator=gen, dtype=torch.float64) + 8 * torch.eye(
        20, dtype=torch.float64
    )
    b = torch.randn(20, generator=gen, dtype=torch.float64)
    x = linalg.gmres(a, b, rtol=1e-12, restart=3, maxiter=2000)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize('solver', SOLVERS)
def test_multi_leaf_tree_with_cross_coupling(solver, gen, spd) -> None:
    big = spd(7, gen)  # couples the (3,)-leaf and the (2, 2)-leaf

    def matvec(tree):
        v = torch.cat([tree['a'], tree['b'].reshape(-1)])
        out = big @ v
        return {'a': out[:3], 'b': out[3:].reshape(2, 2)}

    b = {
        'a': torch.randn(3, generator=gen, dtype=torch.float64),
        'b': torch.randn(2, 2, generator=gen, dtype=torch.float64),
    }
    x = solver(matvec, b, rtol=1e-12)
    ref = torch.linalg.solve(big, torch.cat([b['a'], b['b'].reshape(-1)]))
    torch.testing.assert_close(torch.cat([x['a'], x['b'].reshape(-1)]), ref, rtol=1e-9, atol=1e-11)
    assert x['b'].shape == (2, 2)


def test_tree_of_matrices_and_x0(gen, spd) -> None:
    a1, a2 = spd(4, gen), spd(3, gen)
    b = (
        torch.randn(4, generator=gen, dtype=torch.float64),
        torch.randn(3, generator=gen, dtype=torch.float64),
    )
    x0 = (torch.ones(4, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    x = linalg.cg((a1, a2), b, x0, rtol=1e-12)
    torch.testing.assert_close(x[0], torch.linalg.solve(a1, b[0]))
    torch.testing.assert_close(x[1], torch.linalg.solve(a2, b[1]))
    with pytest.raises(ValueError, match='x0'):
        linalg.cg((a1, a2), b, (torch.ones(4, dtype=torch.float64),))


@pytest.mark.parametrize('solver', SOLVERS)
def test_scalar_system_is_solved(solver) -> None:
    # upstream #222: maxiter = 10 * sum(shape) = 0 for a scalar, which returned x0
    x = solver(lambda v: 4.0 * v, torch.tensor(2.0, dtype=torch.float64))
    assert x.shape == ()
    torch.testing.assert_close(x, torch.tensor(0.5, dtype=torch.float64))


def test_default_maxiter_counts_elements() -> None:
    # CG breaks down on this indefinite system; the warning names the cap it ran to.
    b = torch.ones(10, 10, dtype=torch.float64)
    signs = torch.ones(10, 10, dtype=torch.float64)
    signs[::2] = -1
    with pytest.warns(ConvergenceWarning, match=r'maxiter=1000 '):
        linalg.cg(lambda v: signs * v, b)


@pytest.mark.parametrize('solver', SOLVERS)
def test_convergence_warning_reports_residual(solver, gen, spd) -> None:
    a = spd(30, gen, shift=1e-3)
    b = torch.randn(30, generator=gen, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match='residual norm'):
        solver(a, b, rtol=1e-14, maxiter=2, warn=True)
    # an explicit maxiter is a deliberate truncation: silent by default
    x = solver(a, b, rtol=1e-14, maxiter=2)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize('solver', SOLVERS)
def test_vmap_equals_loop(solver, gen, spd) -> None:
    mats = torch.stack([spd(12, gen, shift=s) for s in (0.1, 1.0, 10.0)])
    rhs = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    batched = torch.func.vmap(lambda m, v: solver(lambda x: m @ x, v, rtol=1e-10))(mats, rhs)
    looped = torch.stack([solver(lambda x, m=m: m @ x, v, rtol=1e-10) for m, v in zip(mats, rhs)])
    tol = 1e-9 if solver is not linalg.gmres else 1e-8  # batched matmuls round differently
    torch.testing.assert_close(batched, looped, rtol=tol, atol=tol)
    torch.testing.assert_close(batched, torch.linalg.solve(mats, rhs), rtol=1e-8, atol=1e-9)


def test_ns_matches_series(gen, spd) -> None:
    a = 0.5 * spd(6, gen, shift=0.5) / 3
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    eye = torch.eye(6, dtype=torch.float64)
    for alpha in (None, 0.7):
        step = eye - (a if alpha is None else alpha * a)
        series = sum(torch.linalg.matrix_power(step, k) for k in range(11)) @ b
        ref = series if alpha is None else alpha * series
        torch.testing.assert_close(linalg.ns(lambda v: a @ v, b, alpha=alpha), ref)
        torch.testing.assert_close(linalg.ns(a, b, alpha=alpha), ref)
    torch.testing.assert_close(
        linalg.ns(a, b, maxiter=400), torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10
    )


def test_ns_inv_matches_series(gen, spd) -> None:
    a = 0.5 * spd(5, gen, shift=0.5) / 3
    eye = torch.eye(5, dtype=torch.float64)
    ref = sum(torch.linalg.matrix_power(eye - 0.5 * a, k) for k in range(7)) * 0.5
    torch.testing.assert_close(linalg.ns_inv(a, 7, alpha=0.5), ref)
    torch.testing.assert_close(
        linalg.ns_inv((a,), maxiter=500)[0], torch.linalg.inv(a), rtol=1e-8, atol=1e-10
    )
    with pytest.raises(ValueError, match='square'):
        linalg.ns_inv(torch.ones(2, 3))
    with pytest.raises(ValueError, match='square'):
        linalg.ns(torch.ones(2, 3), torch.ones(2))


def test_utils() -> None:
    assert cat_shapes((torch.zeros(2, 3), {'a': torch.zeros(4)})) == (2, 3, 4)
    fn = lambda x: x  # noqa: E731
    assert normalize_matvec(fn) is fn
    mv = normalize_matvec((torch.eye(2) * 2, torch.eye(3)))
    out = mv((torch.ones(2), torch.ones(3)))
    torch.testing.assert_close(out[0], 2 * torch.ones(2))
    with pytest.raises(TypeError, match='square matrix'):
        normalize_matvec(torch.ones(2, 3))
    with pytest.raises(ValueError, match='leaves'):
        mv((torch.ones(2),))


def test_jacobi_preconditioner(gen, spd) -> None:
    a = spd(8, gen) + torch.diag(torch.arange(8, dtype=torch.float64) * 10)
    v = torch.randn(8, generator=gen, dtype=torch.float64)
    exact = linalg.utils.jacobi_preconditioner(lambda x: a @ x, v)
    torch.testing.assert_close(exact(v), v / a.diagonal())
    torch.testing.assert_close(linalg.utils.jacobi_preconditioner(a, v)(v), v / a.diagonal())
    diag = torch.diag(torch.arange(1, 9, dtype=torch.float64))
    est = linalg.utils.jacobi_preconditioner(lambda x: diag @ x, v, num_samples=3, generator=gen)
    torch.testing.assert_close(est(v), v / diag.diagonal())  # exact for a diagonal operator


def test_minres_stops_at_least_squares_solution_of_inconsistent_system(gen, sym_with_eigs) -> None:
    # singular symmetric A, b with a null-space component: no x meets the residual tolerance;
    # MINRES must stop at a least-squares solution (A^T r = 0) long before maxiter
    eigs = torch.linspace(1.0, 5.0, 40, dtype=torch.float64)
    eigs[:3] = 0.0
    a = sym_with_eigs(eigs, gen)
    b = torch.randn(40, generator=gen, dtype=torch.float64)
    calls = []
    with pytest.warns(ConvergenceWarning, match='least-squares'):
        x = linalg.minres(lambda v: calls.append(1) or a @ v, b, rtol=1e-5)
    assert len(calls) < 40  # maxiter would be 400
    # A^T r = A r ~ 0: the normal equations hold to the tolerance although r itself does not vanish
    r = b - a @ x
    assert (a @ r).norm() <= 1e-5 * 5.0 * r.norm()
    x_ls = torch.linalg.lstsq(a, b, driver='gelsd').solution
    torch.testing.assert_close(a @ x, a @ x_ls, rtol=1e-4, atol=1e-4)
    _, status = linalg.minres_with_status(a, b, warn=False)
    assert status == 'lstsq'
    # too tight for the least-squares test in float64: the stagnation window gives up instead
    calls.clear()
    _, status = linalg.minres_with_status(
        lambda v: calls.append(1) or a @ v, b, rtol=1e-12, warn=False, stagnation_window=10
    )
    assert status == 'lstsq' and len(calls) < 60
    _, status = linalg.minres_with_status(a, a @ b, rtol=1e-10, warn=False)  # consistent
    assert status == 'converged'


@pytest.mark.parametrize('solver', [linalg.minres, linalg.gmres])
def test_complex_hermitian_indefinite(solver, gen) -> None:
    # minres: Hermitian Lanczos with real alpha/beta; gmres: the complex (batched lstsq) path
    b_mat = torch.randn(20, 20, generator=gen, dtype=torch.complex128)
    h = b_mat + b_mat.conj().T + 0.1 * torch.eye(20, dtype=torch.complex128)
    rhs = torch.randn(20, generator=gen, dtype=torch.complex128)
    x = solver(h, rhs, rtol=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(h, rhs), rtol=1e-9, atol=1e-10)


def test_minres_symmetry_check_costs_no_extra_product(gen, spd) -> None:
    nonsym = torch.randn(12, 12, generator=gen, dtype=torch.float64) + 6 * torch.eye(
        12, dtype=torch.float64
    )
    b = torch.randn(12, generator=gen, dtype=torch.float64)
    calls = []
    _, status = linalg.minres_with_status(
        lambda v: calls.append(1) or nonsym @ v, b, check_symmetry=True
    )
    assert status == 'asymmetric' and len(calls) == 2
    sym = spd(12, gen)
    x, status = linalg.minres_with_status(sym, b, rtol=1e-12, check_symmetry=True)
    assert status == 'converged'
    torch.testing.assert_close(x, torch.linalg.solve(sym, b), rtol=1e-9, atol=1e-11)
    # under vmap: one non-symmetric member stops the batch
    mats = torch.stack([sym, nonsym])
    statuses = []

    def solve(m, rhs):
        x, status = linalg.minres_with_status(lambda v: m @ v, rhs, check_symmetry=True)
        statuses.append(status)
        return x

    torch.func.vmap(solve)(mats, torch.stack([b, b]))
    assert statuses == ['asymmetric']


def test_minres_check_residual_confirms_on_the_true_residual(gen, spd) -> None:
    a = spd(15, gen)
    b = torch.randn(15, generator=gen, dtype=torch.float64)
    calls = []
    x, status = linalg.minres_with_status(lambda v: calls.append(1) or a @ v, b, rtol=1e-10)
    plain = len(calls)
    calls.clear()
    x2, status2 = linalg.minres_with_status(
        lambda v: calls.append(1) or a @ v, b, rtol=1e-10, check_residual=True
    )
    assert status == status2 == 'converged' and len(calls) == plain + 1
    torch.testing.assert_close(x2, x)
    # an operator whose products drift from one call to the next: the estimate converges,
    # the true residual (from a different product) does not
    drift = iter(range(1000))
    _, status = linalg.minres_with_status(
        lambda v: a @ v * (1 + 1e-3 * next(drift)), b, rtol=1e-10, check_residual=True,
        warn=False,
    )  # fmt: skip
    assert status != 'converged'


def test_host_scalars_do_not_warn_under_func_grad_or_a_recorded_graph() -> None:
    # torch warns once per process when a tensor that requires grad is converted to a Python
    # scalar; the solvers read their stopping tests and scalar recurrences off the graph on
    # purpose. A fresh interpreter, since an earlier test may have used up the one warning.
    code = textwrap.dedent(
        """
        import warnings
        import torch
        from torchopt_implicit import linalg
        warnings.simplefilter('error')
        g = torch.Generator().manual_seed(0)
        m = torch.randn(6, 6, generator=g, dtype=torch.float64)
        a = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)
        b = torch.randn(6, generator=g, dtype=torch.float64)
        for solver in (linalg.cg, linalg.minres, linalg.gmres, linalg.bicgstab):
            def loss(rhs, solver=solver):
                return solver(lambda v: a @ v, rhs, rtol=1e-10).square().sum()
            torch.func.grad(loss)(b)
            loss(b.clone().requires_grad_()).backward()
        print('ok')
        """
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'
