"""custom_root / custom_fixed_point under torch.compile(fullgraph=True) (issue #21).

Every test compiles a region that calls a decorated solver, runs it >= 20 times with new tensor
values of the same shapes, and checks: no graph break (``fullgraph=True``), exactly one graph,
and outputs and ``backward()`` gradients equal to the eager call in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import torchopt
from torchopt_implicit import custom_fixed_point, custom_root, linear_solve

F64 = torch.float64
CALLS = 20
TOL = {'rtol': 1e-10, 'atol': 1e-12}

# torch 2.13's dynamo instantiates ``torch.autograd.Function()`` to model ``ctx`` when it traces
# any autograd Function (side_effects.track_object_new) and records, but does not silence, the
# DeprecationWarning that raises; the suite turns warnings into errors.
pytestmark = pytest.mark.filterwarnings('ignore:.*should not be instantiated:DeprecationWarning')


class CountingBackend:
    """A dynamo backend that counts the graphs it is given and runs them as traced."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return gm.forward


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def ridge_optimality(w, lam, X, y):
    return X.T @ (X @ w - y) + lam * w


@custom_root(ridge_optimality, argnums=1, solve=linear_solve.solve_cg(rtol=1e-14))
def ridge(init, lam, X, y):
    return torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1], dtype=F64), X.T @ y)


def _outer_ridge(lam, X, y, Xv, yv):
    w = ridge(torch.zeros(X.shape[1], dtype=F64), lam, X, y)
    return 0.5 * ((Xv @ w - yv) ** 2).sum(), w


def _ridge_inputs(gen, k):
    X = torch.randn(30, 5, generator=gen, dtype=F64)
    y = torch.randn(30, generator=gen, dtype=F64)
    Xv = torch.randn(20, 5, generator=gen, dtype=F64)
    yv = torch.randn(20, generator=gen, dtype=F64)
    lam = torch.tensor(0.5 + 0.25 * k, dtype=F64, requires_grad=True)
    return lam, X, y, Xv, yv


def _closed_form_hypergrad(lam, X, y, Xv, yv):
    H = X.T @ X + lam * torch.eye(X.shape[1], dtype=F64)
    w = torch.linalg.solve(H, X.T @ y)
    return (Xv.T @ (Xv @ w - yv)) @ -torch.linalg.solve(H, w)


def _check_against_eager(compiled, eager, make_inputs, grad_of) -> None:
    """Call both ``CALLS`` times on fresh inputs; outputs and gradients must agree."""
    for k in range(CALLS):
        inputs_c, inputs_e = make_inputs(k), make_inputs(k)
        loss_c, out_c = compiled(*inputs_c)
        loss_e, out_e = eager(*inputs_e)
        torch.testing.assert_close(loss_c, loss_e, **TOL)
        torch.testing.assert_close(out_c, out_e, **TOL)
        loss_c.backward()
        loss_e.backward()
        for a, b in zip(grad_of(inputs_c), grad_of(inputs_e)):
            assert a is not None and b is not None
            torch.testing.assert_close(a, b, **TOL)


def test_custom_root_argnums_int_one_graph_and_eager_gradients(gen) -> None:
    backend = CountingBackend()
    compiled = torch.compile(_outer_ridge, backend=backend, fullgraph=True)
    data = [_ridge_inputs(gen, k) for k in range(CALLS)]

    def make_inputs(k):
        lam, *rest = data[k]
        return (lam.detach().clone().requires_grad_(), *rest)

    _check_against_eager(compiled, _outer_ridge, make_inputs, lambda inputs: [inputs[0].grad])
    assert backend.graphs == 1
    lam, X, y, Xv, yv = make_inputs(CALLS - 1)
    compiled(lam, X, y, Xv, yv)[0].backward()
    ref = _closed_form_hypergrad(lam.detach(), X, y, Xv, yv)
    torch.testing.assert_close(lam.grad, ref, rtol=1e-9, atol=0)


class Params(NamedTuple):
    a: torch.Tensor
    b: torch.Tensor


def quad_optimality(x, params, scale, mix, shift=0.0):
    # x = (u, v) minimizes 0.5 u^T A u - a^T u + 0.5 scale * ||v - mix * b - shift||^2
    u, v = x
    return (params.a.new_tensor(A) @ u - params.a, scale * (v - mix * params.b - shift))


A = [[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.5]]


@custom_root(
    quad_optimality, argnums=(1, 3), has_aux=True, solve=linear_solve.solve_normal_cg(rtol=1e-14)
)
def quad_solver(init, params, scale, mix, shift=0.0):
    u = torch.linalg.solve(params.a.new_tensor(A), params.a)
    v = mix * params.b + shift
    return (u, v), {'norm': u.norm(), 'iterations': 3}


def _outer_quad(a, b, mix):
    init = (torch.zeros(3, dtype=F64), torch.zeros(2, dtype=F64))
    (u, v), aux = quad_solver(init, Params(a, b), 2.0, mix, shift=0.5)
    assert aux['iterations'] == 3
    return (u**3).sum() + (v * aux['norm'].detach()).sum(), torch.cat([u, v, aux['norm'][None]])


def test_custom_root_tuple_argnums_trees_kwargs_and_aux(gen) -> None:
    backend = CountingBackend()
    compiled = torch.compile(_outer_quad, backend=backend, fullgraph=True)
    values = [torch.randn(6, generator=gen, dtype=F64) for _ in range(CALLS)]

    def make_inputs(k):
        a, b, mix = values[k].split([3, 2, 1])
        return tuple(t.clone().requires_grad_() for t in (a, b, mix[0]))

    _check_against_eager(
        compiled, _outer_quad, make_inputs, lambda inputs: [t.grad for t in inputs]
    )
    assert backend.graphs == 1


def _fixed_point_map(x, W, c):
    return torch.tanh(W @ x + c)


@custom_fixed_point(_fixed_point_map, argnums=(1, 2), solve=linear_solve.solve_gmres(rtol=1e-14))
def fixed_point(init, W, c):
    x = init
    for _ in range(60):  # a contraction (||W|| < 1): 60 steps reach float64 round-off
        x = torch.tanh(W @ x + c)
    return x


def _outer_fixed_point(W, c):
    x = fixed_point(torch.zeros(4, dtype=F64), W, c)
    return (x * torch.arange(1.0, 5.0, dtype=F64)).sum(), x


def test_custom_fixed_point_one_graph_and_eager_gradients(gen) -> None:
    backend = CountingBackend()
    compiled = torch.compile(_outer_fixed_point, backend=backend, fullgraph=True)
    Ws = [0.3 * torch.randn(4, 4, generator=gen, dtype=F64) / 2 for _ in range(CALLS)]
    cs = [torch.randn(4, generator=gen, dtype=F64) for _ in range(CALLS)]

    def make_inputs(k):
        return Ws[k].clone().requires_grad_(), cs[k].clone().requires_grad_()

    _check_against_eager(
        compiled, _outer_fixed_point, make_inputs, lambda inputs: [t.grad for t in inputs]
    )
    assert backend.graphs == 1
    # against finite differences of the unrolled map (independent of the implicit backward)
    W, c = make_inputs(0)
    compiled(W, c)[0].backward()
    eps = 1e-6
    dc = torch.zeros(4, dtype=F64)
    dc[2] = eps
    with torch.no_grad():
        fd = (_outer_fixed_point(W, c + dc)[0] - _outer_fixed_point(W, c - dc)[0]) / (2 * eps)
    torch.testing.assert_close(c.grad[2], fd, rtol=1e-7, atol=0)


def test_aot_eager_backend_runs_the_implicit_backward(gen) -> None:
    counter = CompileCounterWithBackend('aot_eager')
    compiled = torch.compile(_outer_ridge, backend=counter, fullgraph=True)
    data = [_ridge_inputs(gen, k) for k in range(CALLS)]

    def make_inputs(k):
        lam, *rest = data[k]
        return (lam.detach().clone().requires_grad_(), *rest)

    _check_against_eager(compiled, _outer_ridge, make_inputs, lambda inputs: [inputs[0].grad])
    # one graph; aot_eager may restart the first analysis once (float tensorification), which
    # calls the backend twice for that single compilation
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] == 1
    assert counter.frame_count <= 2


def test_no_grad_and_inputs_outside_argnums(gen) -> None:
    # nothing requires grad: the forward still compiles into one graph
    backend = CountingBackend()
    compiled = torch.compile(_outer_ridge, backend=backend, fullgraph=True)
    for k in range(CALLS):
        lam, X, y, Xv, yv = _ridge_inputs(gen, k)
        with torch.no_grad():
            loss, w = compiled(lam.detach(), X, y, Xv, yv)
        torch.testing.assert_close(loss, _outer_ridge(lam.detach(), X, y, Xv, yv)[0], **TOL)
    # only X (outside argnums) requires grad: it gets no gradient, as in eager
    X = X.clone().requires_grad_()
    loss, _ = torch.compile(_outer_ridge, backend=backend, fullgraph=True)(lam, X, y, Xv, yv)
    loss.backward()
    assert X.grad is None
    assert lam.grad is not None


def test_non_constant_argument_is_a_clear_error(gen) -> None:
    @custom_root(lambda x, theta, obj: x - theta, argnums=1)
    def solver(init, theta, obj):
        return theta.clone()

    opaque = object()
    compiled = torch.compile(lambda t: solver(t, t, opaque), backend='eager', fullgraph=True)
    with pytest.raises(
        Exception, match='under torch.compile: argument 2 of solver_fn holds a object'
    ):
        compiled(torch.ones(2, dtype=F64, requires_grad=True))


def test_upstream_spelling_compiles(gen) -> None:
    backend = CountingBackend()

    @torchopt.diff.implicit.custom_root(
        ridge_optimality, argnums=1, solve=torchopt.linear_solve.solve_cg()
    )
    def solver(init, lam, X, y):
        return torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1], dtype=F64), X.T @ y)

    compiled = torch.compile(
        lambda lam, X, y: solver(None, lam, X, y).sum(), backend=backend, fullgraph=True
    )
    for k in range(CALLS):
        lam, X, y, _, _ = _ridge_inputs(gen, k)
        compiled(lam, X, y).backward()
        ref = lam.detach().clone().requires_grad_()
        solver(None, ref, X, y).sum().backward()
        torch.testing.assert_close(lam.grad, ref.grad, **TOL)
    assert backend.graphs == 1
