"""custom_root / custom_fixed_point: hyper-gradients against closed forms and unrolled solves."""

import inspect

import pytest
import torch

import torchopt
from torchopt_implicit import custom_fixed_point, custom_root, linear_solve

F64 = torch.float64


def _ridge_data(gen, n=40, d=8):
    X = torch.randn(n, d, generator=gen, dtype=F64)
    y = torch.randn(n, generator=gen, dtype=F64)
    Xv = torch.randn(n, d, generator=gen, dtype=F64)
    yv = torch.randn(n, generator=gen, dtype=F64)
    return X, y, Xv, yv


def ridge_optimality(w, lam, X, y):
    return X.T @ (X @ w - y) + lam * w


def _closed_form_hypergrad(X, y, Xv, yv, lam):
    d = X.shape[1]
    H = X.T @ X + lam * torch.eye(d, dtype=F64)
    w = torch.linalg.solve(H, X.T @ y)
    dw = -torch.linalg.solve(H, w)  # dw/dlam
    return (Xv.T @ (Xv @ w - yv)) @ dw


SOLVES = {
    'cg': linear_solve.solve_cg(rtol=1e-14),
    'normal_cg': linear_solve.solve_normal_cg(rtol=1e-14),
    'inv': linear_solve.solve_inv(),
    'gmres': linear_solve.solve_gmres(rtol=1e-14),
    'bicgstab': linear_solve.solve_bicgstab(rtol=1e-14),
}


@pytest.mark.parametrize('name', sorted(SOLVES))
def test_ridge_hypergradient_closed_form(name, gen) -> None:
    X, y, Xv, yv = _ridge_data(gen)
    d = X.shape[1]

    @custom_root(ridge_optimality, argnums=1, solve=SOLVES[name])
    def ridge(init, lam, X, y):
        return torch.linalg.solve(X.T @ X + lam * torch.eye(d, dtype=F64), X.T @ y)

    lam = torch.tensor(2.5, dtype=F64, requires_grad=True)
    w = ridge(torch.zeros(d, dtype=F64), lam, X, y)
    (g,) = torch.autograd.grad(0.5 * ((Xv @ w - yv) ** 2).sum(), lam)
    ref = _closed_form_hypergrad(X, y, Xv, yv, 2.5)
    assert abs((g - ref) / ref) <= 1e-9
    assert not w.requires_grad or w.grad_fn is not None


def test_default_solve_is_normal_cg_and_scalar_problem() -> None:
    # scalar root of x * theta - 1 = 0: x = 1 / theta, dx/dtheta = -1/theta^2 (upstream #222)
    @custom_root(lambda x, theta: x * theta - 1.0, argnums=1)
    def solver(init, theta):
        return 1.0 / theta

    theta = torch.tensor(4.0, dtype=F64, requires_grad=True)
    x = solver(torch.tensor(0.0, dtype=F64), theta)
    assert type(x.grad_fn).__name__ == 'ImplicitMetaGradientBackward'  # upstream's node name
    (g,) = torch.autograd.grad(x, theta)
    torch.testing.assert_close(g, torch.tensor(-1.0 / 16, dtype=F64), rtol=1e-12, atol=0)


def _logistic(gen, n=30, d=4):
    X = torch.randn(n, d, generator=gen, dtype=F64)
    y = (torch.randn(n, generator=gen, dtype=F64) > 0).to(F64)
    return X, y


def logistic_grad(w, lam, X, y):
    return X.T @ (torch.sigmoid(X @ w) - y) / X.shape[0] + lam * w


def test_logistic_agrees_with_long_unrolled_solve(gen) -> None:
    X, y = _logistic(gen)
    d = X.shape[1]

    def gd(w, lam, steps):
        for _ in range(steps):
            w = w - 2.0 * logistic_grad(w, lam, X, y)
        return w

    @custom_root(logistic_grad, argnums=1, solve=linear_solve.solve_cg(rtol=1e-13))
    def solver(init, lam, X, y):
        return gd(init, lam, 3000)

    lam = torch.tensor(0.1, dtype=F64, requires_grad=True)
    w_impl = solver(torch.zeros(d, dtype=F64), lam, X, y)
    (g_impl,) = torch.autograd.grad(w_impl.square().sum(), lam)
    lam2 = torch.tensor(0.1, dtype=F64, requires_grad=True)
    w_unrolled = gd(torch.zeros(d, dtype=F64), lam2, 3000)
    (g_unrolled,) = torch.autograd.grad(w_unrolled.square().sum(), lam2)
    torch.testing.assert_close(w_impl, w_unrolled.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_impl, g_unrolled, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize('solve', ['cg', 'normal_cg'])  # normal_cg: symmetric -> MINRES, batched
def test_vmap_and_jacrev_over_problems(gen, solve) -> None:
    X, y, _, _ = _ridge_data(gen, n=20, d=5)
    factory = linear_solve.solve_cg if solve == 'cg' else linear_solve.solve_normal_cg

    @custom_root(ridge_optimality, argnums=1, solve=factory(rtol=1e-13))
    def ridge(init, lam, X, y):
        return torch.linalg.solve(X.T @ X + lam * torch.eye(5, dtype=F64), X.T @ y)

    init = torch.zeros(5, dtype=F64)
    lams = torch.tensor([0.1, 1.0, 10.0], dtype=F64)
    ys = torch.stack([y, 2 * y, -y])

    def loss(lam, yy):
        return ridge(init, lam, X, yy).square().sum()

    batched = torch.func.vmap(torch.func.grad(loss))(lams, ys)
    looped = torch.stack([torch.func.grad(loss)(lam, yy) for lam, yy in zip(lams, ys)])
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)
    # the solution itself batched
    sols = torch.func.vmap(lambda lam: ridge(init, lam, X, y))(lams)
    for lam, sol in zip(lams, sols):
        torch.testing.assert_close(
            sol, torch.linalg.solve(X.T @ X + lam * torch.eye(5, dtype=F64), X.T @ y)
        )
    # jacobian of the solution w.r.t. lam: -H^{-1} w
    jac = torch.func.jacrev(lambda lam: ridge(init, lam, X, y))(torch.tensor(1.0, dtype=F64))
    H = X.T @ X + torch.eye(5, dtype=F64)
    torch.testing.assert_close(
        jac, -torch.linalg.solve(H, torch.linalg.solve(H, X.T @ y)), rtol=1e-10, atol=1e-12
    )


def test_multi_leaf_solution_and_pytree_argnums(gen) -> None:
    # minimize 0.5||X w + b - y||^2 + 0.5 l2 ||w||^2 + 0.5 lb b^2 over (w, b); thetas are a dict
    X, y, _, _ = _ridge_data(gen, n=25, d=3)

    def optimality(params, hyper, X, y):
        w, b = params
        r = X @ w + b - y
        return (X.T @ r + hyper['l2'] * w, r.sum() + hyper['lb'] * b)

    def dense(hyper, X):
        A = torch.cat([X, torch.ones(X.shape[0], 1, dtype=F64)], dim=1)
        reg = torch.diag(torch.cat([hyper['l2'].expand(3), hyper['lb'].reshape(1)]))
        sol = torch.linalg.solve(A.T @ A + reg, A.T @ y)
        return sol[:3], sol[3]

    for solve in (
        linear_solve.solve_cg(rtol=1e-14),
        linear_solve.solve_inv(),
        linear_solve.solve_gmres(rtol=1e-14),
    ):

        @custom_root(optimality, argnums=(1, 2), solve=solve)
        def solver(init, hyper, X, y):
            with torch.no_grad():
                return dense(hyper, X)

        hyper = {
            'l2': torch.tensor(0.3, dtype=F64, requires_grad=True),
            'lb': torch.tensor(2.0, dtype=F64, requires_grad=True),
        }
        Xr = X.clone().requires_grad_()
        w, b = solver((torch.zeros(3, dtype=F64), torch.tensor(0.0, dtype=F64)), hyper, Xr, y)
        loss = w.square().sum() + 3 * b
        grads = torch.autograd.grad(loss, (hyper['l2'], hyper['lb'], Xr))
        hyper2 = {k: v.detach().clone().requires_grad_() for k, v in hyper.items()}
        Xr2 = X.clone().requires_grad_()
        w2, b2 = dense(hyper2, Xr2)
        refs = torch.autograd.grad(w2.square().sum() + 3 * b2, (hyper2['l2'], hyper2['lb'], Xr2))
        for g, r in zip(grads, refs):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def test_recorded_graph_and_functorch_paths_agree(gen) -> None:
    # backward() records F once and reuses its graph; torch.func.grad goes through
    # torch.func.vjp. Both must give the same hyper-gradients (two leaves, a kwarg, an unused
    # solution leaf in one residual).
    X, y, _, _ = _ridge_data(gen, n=30, d=4)

    def optimality(params, hyper, X, *, y):
        w, c = params
        return (X.T @ (X @ w - y) + hyper[0] * w, hyper[1] * (c - 1.0))

    @custom_root(optimality, argnums=1, solve=linear_solve.solve_normal_cg(rtol=1e-13))
    def solver(init, hyper, X, *, y):
        w = torch.linalg.solve(X.T @ X + hyper[0] * torch.eye(4, dtype=F64), X.T @ y)
        return w, torch.ones((), dtype=F64)

    def loss(hyper):
        w, c = solver((torch.zeros(4, dtype=F64), torch.zeros((), dtype=F64)), hyper, X, y=y)
        return (w**3).sum() + c

    hyper = torch.tensor([0.7, 2.0], dtype=F64, requires_grad=True)
    (g_recorded,) = torch.autograd.grad(loss(hyper), hyper)
    g_func = torch.func.grad(loss)(hyper.detach())
    torch.testing.assert_close(g_recorded, g_func, rtol=1e-10, atol=1e-12)
    assert g_recorded[1] == 0.0


def test_inputs_outside_argnums_get_no_gradient_and_no_solve(gen) -> None:
    X, y, _, _ = _ridge_data(gen, n=30, d=4)
    calls = []

    def counting_solve(matvec, b):
        calls.append(1)
        return linear_solve.solve_cg()(matvec, b)

    @custom_root(ridge_optimality, argnums=1, solve=counting_solve)
    def ridge(init, lam, X, y):
        return torch.linalg.solve(X.T @ X + lam * torch.eye(4, dtype=F64), X.T @ y)

    Xr = X.clone().requires_grad_()  # requires grad, but is not in argnums
    w = ridge(torch.zeros(4, dtype=F64), torch.tensor(1.0, dtype=F64), Xr, y)
    assert torch.autograd.grad(w.sum(), Xr, allow_unused=True) == (None,)
    assert not calls


def test_second_order_through_implicit_gradient(gen) -> None:
    # create_graph=True takes the composable path; its derivative of the hyper-gradient must
    # match central differences of the (first-order, recorded-graph) hyper-gradient.
    X, y, Xv, yv = _ridge_data(gen, n=30, d=5)

    @custom_root(ridge_optimality, argnums=1, solve=linear_solve.solve_cg(rtol=1e-14))
    def ridge(init, lam, X, y):
        return torch.linalg.solve(X.T @ X + lam * torch.eye(5, dtype=F64), X.T @ y)

    def hypergrad(value, create_graph=False):
        lam = torch.tensor(value, dtype=F64, requires_grad=True)
        w = ridge(torch.zeros(5, dtype=F64), lam, X, y)
        (g,) = torch.autograd.grad(0.5 * ((Xv @ w - yv) ** 2).sum(), lam, create_graph=create_graph)
        return lam, g

    lam, g = hypergrad(1.3, create_graph=True)
    (h,) = torch.autograd.grad(g, lam)
    eps = 1e-5
    fd = (hypergrad(1.3 + eps)[1] - hypergrad(1.3 - eps)[1]) / (2 * eps)
    torch.testing.assert_close(
        g, torch.as_tensor(_closed_form_hypergrad(X, y, Xv, yv, 1.3)), rtol=1e-9, atol=0
    )
    torch.testing.assert_close(h, fd, rtol=1e-6, atol=0)


def test_has_aux_and_keyword_binding() -> None:
    def optimality(x, theta, *, scale=1.0):
        return scale * (x - theta**2)

    @custom_root(optimality, argnums=1, has_aux=True, solve=linear_solve.solve_cg())
    def solver(init, theta, *, scale=1.0):
        return theta.detach() ** 2, {'iters': 3, 'value': theta.detach() * 0}

    theta = torch.tensor([1.5, -2.0], dtype=F64, requires_grad=True)
    x, aux = solver(torch.zeros(2, dtype=F64), theta, scale=2.0)
    assert aux['iters'] == 3 and not aux['value'].requires_grad
    (g,) = torch.autograd.grad(x.sum(), theta)
    torch.testing.assert_close(g, 2 * theta.detach())
    assert inspect.signature(solver).parameters.keys() == {'init', 'theta', 'scale'}


def test_fixed_point_against_finite_differences(gen) -> None:
    W = 0.3 * torch.randn(4, 4, generator=gen, dtype=F64)

    def T(x, theta):
        return torch.tanh(W @ x) + theta

    def iterate(theta):
        x = torch.zeros(4, dtype=F64)
        for _ in range(200):
            x = T(x, theta)
        return x

    @custom_fixed_point(T, argnums=1, solve=linear_solve.solve_gmres(rtol=1e-13))
    def solver(init, theta):
        return iterate(theta)

    theta0 = torch.randn(4, generator=gen, dtype=F64)
    theta = theta0.clone().requires_grad_()
    (g,) = torch.autograd.grad(solver(torch.zeros(4, dtype=F64), theta).sum(), theta)
    eps = 1e-6
    fd = torch.stack(
        [
            (iterate(theta0 + eps * e).sum() - iterate(theta0 - eps * e).sum()) / (2 * eps)
            for e in torch.eye(4, dtype=F64)
        ]
    )
    torch.testing.assert_close(g, fd, rtol=1e-7, atol=1e-9)


def test_argnums_checked_at_decoration() -> None:
    def f(x, a):
        return x - a

    with pytest.raises(ValueError, match='must not contain 0'):
        custom_root(f, argnums=0)
    with pytest.raises(ValueError, match='must not contain 0'):
        custom_root(f, argnums=(1, 0))
    with pytest.raises(TypeError, match='argnums'):
        custom_root(f, argnums='1')
    with pytest.raises(ValueError, match='repeat'):
        custom_root(f, argnums=(1, 1))
    with pytest.raises(ValueError, match=r'only has 2 positional parameter'):
        custom_root(f, argnums=2)(lambda init, a: a)


def test_bad_outputs_and_arguments() -> None:
    @custom_root(lambda x, a: x - a, argnums=1)
    def bad(init, a):
        return 'not a tensor'

    with pytest.raises(
        RuntimeError, match=r'^custom_root\(optimality_fn\)\(solver_fn\)\(\*args\): output'
    ):
        bad(torch.zeros(1), torch.ones(1))

    @custom_root(lambda x, a: x - a, argnums=1, has_aux=True)
    def no_aux(init, a):
        return a

    with pytest.raises(RuntimeError, match='has_aux'):
        no_aux(torch.zeros(1), torch.ones(1))

    @custom_root(lambda x, a: x - a, argnums=1)
    def ok(init, a):
        return a

    with pytest.raises(RuntimeError, match='argnums'):
        ok(torch.zeros(1), 3.0)


def test_upstream_spelling_through_torchopt(gen) -> None:
    X, y, Xv, yv = _ridge_data(gen)

    @torchopt.diff.implicit.custom_root(
        ridge_optimality, argnums=1, solve=torchopt.linear_solve.solve_normal_cg(rtol=1e-14)
    )
    def ridge(init, lam, X, y):
        return torchopt.linalg.cg(X.T @ X + lam * torch.eye(8, dtype=F64), X.T @ y, rtol=1e-14)

    lam = torch.tensor(2.5, dtype=F64, requires_grad=True)
    w = ridge(torch.zeros(8, dtype=F64), lam, X, y)
    (g,) = torch.autograd.grad(0.5 * ((Xv @ w - yv) ** 2).sum(), lam)
    ref = _closed_form_hypergrad(X, y, Xv, yv, 2.5)
    assert abs((g - ref) / ref) <= 1e-9


# --- a non-symmetric Jacobian: the transpose that normal CG needs ---------------------------------
# x* = 0.5 tanh(W x*) + b has dF/dx = I - 0.5 diag(sech^2) W, not symmetric. The first-order
# backward runs its products on one recorded graph, which torch.func cannot differentiate; normal
# CG (the default solve) must still get A^T from somewhere (it returned zeros before).


def _nonsym_data(seed=0, d=5):
    gen = torch.Generator().manual_seed(seed)
    W = (0.4 * torch.randn(d, d, generator=gen, dtype=F64)).requires_grad_()
    b = torch.randn(d, generator=gen, dtype=F64).requires_grad_()
    return W, b


def _nonsym_step(x, W, b):
    return 0.5 * torch.tanh(x @ W.T) + b


def _nonsym_iterate(x, W, b):
    with torch.no_grad():
        for _ in range(200):
            x = _nonsym_step(x, W, b)
    return x


def _nonsym_unrolled_grads(W, b, steps=200):
    x = torch.zeros_like(b)
    for _ in range(steps):
        x = _nonsym_step(x, W, b)
    return torch.autograd.grad((x * torch.arange(1.0, 6.0, dtype=F64)).sum(), (W, b))


NONSYM_SOLVES = {
    'default': None,
    'normal_cg': linear_solve.solve_normal_cg(rtol=1e-14, maxiter=200),
    'normal_cg_maxiter10_atol0': linear_solve.solve_normal_cg(maxiter=10, atol=0),
    'gmres': linear_solve.solve_gmres(rtol=1e-14),
    'inv': linear_solve.solve_inv(),
}


@pytest.mark.parametrize('solve', list(NONSYM_SOLVES), ids=list(NONSYM_SOLVES))
@pytest.mark.parametrize('tree', [False, True], ids=['tensor', 'dict'])
def test_nonsymmetric_jacobian_first_order(solve, tree) -> None:
    W, b = _nonsym_data()
    expected = _nonsym_unrolled_grads(W, b)
    kw = {} if NONSYM_SOLVES[solve] is None else {'solve': NONSYM_SOLVES[solve]}
    if tree:

        def optimality(x, W, b):
            return {'x': x['x'] - _nonsym_step(x['x'], W, b)}

        @custom_root(optimality, argnums=(1, 2), **kw)
        def solver(x0, W, b):
            return {'x': _nonsym_iterate(x0['x'], W, b)}

        x = solver({'x': torch.zeros_like(b)}, W, b)['x']
    else:

        @custom_root(lambda x, W, b: x - _nonsym_step(x, W, b), argnums=(1, 2), **kw)
        def solver(x0, W, b):
            return _nonsym_iterate(x0, W, b)

        x = solver(torch.zeros_like(b), W, b)
    got = torch.autograd.grad((x * torch.arange(1.0, 6.0, dtype=F64)).sum(), (W, b))
    assert got[1].abs().max() > 0.1  # not the silent zeros
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def test_nonsymmetric_jacobian_recorded_matches_functional_path() -> None:
    """The first-order fast path and the torch.func path (create_graph) agree."""
    W, b = _nonsym_data(seed=1)

    @custom_fixed_point(_nonsym_step, argnums=(1, 2))
    def solver(x0, W, b):
        return _nonsym_iterate(x0, W, b)

    first = torch.autograd.grad(solver(torch.zeros_like(b), W, b).sum(), (W, b))
    second = torch.autograd.grad(solver(torch.zeros_like(b), W, b).sum(), (W, b), create_graph=True)
    for a, c in zip(first, second):
        torch.testing.assert_close(a, c.detach(), rtol=1e-12, atol=1e-12)
    assert first[1].abs().max() > 0.1
