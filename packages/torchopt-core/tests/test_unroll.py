"""``torchopt.unroll``: checkpointed and truncated differentiation through long loops.

References: the plain recorded loop (``checkpoints=None``) in float64, to 1e-12 relative, for
every functional optimizer, with and without dropout in the step; central finite differences
at K = 1000; a hand-written truncated unroll; ``torch.func.grad`` for the plain loop.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

import torchopt

DT = torch.float64


def _generic(name: str):
    """``torchopt.<name>`` with a moderate rate and the options that keep its update smooth."""
    fn = getattr(torchopt, name)
    accepted = inspect.signature(fn).parameters
    kwargs = {'lr': 0.01}
    if 'moment_requires_grad' in accepted:
        kwargs['moment_requires_grad'] = True
    if 'eps_root' in accepted and accepted['eps_root'].default == 0.0:
        kwargs['eps_root'] = 1e-12  # d sqrt(nu) / d nu finite at nu = 0
    return lambda: fn(**kwargs)


# Every functional optimizer (those added later get the generic settings), and a few variants.
OPTIMIZERS = {name: _generic(name) for name in torchopt.alias.__all__}
OPTIMIZERS.update(
    {
        'sgd_momentum_nesterov_wd': lambda: torchopt.sgd(
            0.05, momentum=0.9, nesterov=True, weight_decay=1e-2, moment_requires_grad=True
        ),
        'adam': lambda: torchopt.adam(0.02, eps=1e-3, eps_root=1e-12, moment_requires_grad=True),
        'adam_accelerated': lambda: torchopt.adam(
            0.02, eps=1e-3, eps_root=1e-12, moment_requires_grad=True, use_accelerated_op=True
        ),
        'adamw': lambda: torchopt.adamw(
            0.02, eps=1e-3, eps_root=1e-12, weight_decay=0.05, moment_requires_grad=True
        ),
        'adagrad': lambda: torchopt.adagrad(0.05, eps=1e-3),
        'adadelta': lambda: torchopt.adadelta(1.0, eps=1e-3, moment_requires_grad=True),
        'rmsprop_centered_momentum': lambda: torchopt.rmsprop(
            0.01, eps=1e-2, centered=True, momentum=0.5
        ),
    }
)


MATRICES_ONLY = {'muon'}  # optimizers defined for 2-D parameters only


def _problem(seed: int = 0, matrices_only: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 4, generator=g, dtype=DT)
    y = torch.randn(12, 2, generator=g, dtype=DT)
    params = {
        'w1': (torch.randn(4, 6, generator=g, dtype=DT) * 0.5).requires_grad_(),
        'b1': torch.zeros(6, dtype=DT, requires_grad=True),
        'w2': (torch.randn(6, 2, generator=g, dtype=DT) * 0.5).requires_grad_(),
    }
    if matrices_only:
        del params['b1']
    lam = torch.tensor(0.1, dtype=DT, requires_grad=True)  # meta-parameter in the closure
    return x, y, params, lam


def _forward(p, x, dropout: bool):
    h = torch.tanh(x @ p['w1'] + p.get('b1', 0.0))
    if dropout:
        h = F.dropout(h, 0.3, training=True)
    return h @ p['w2']


def _make_step(opt, x, y, lam, dropout: bool):
    def step(carry, t):
        params, state = carry
        batch = slice((3 * t) % 8, (3 * t) % 8 + 4)
        loss = F.mse_loss(_forward(params, x[batch], dropout), y[batch])
        loss = loss + lam * sum((p**2).sum() for p in params.values())
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        updates, state = opt.update(dict(zip(params, grads)), state, params=params, inplace=False)
        return torchopt.apply_updates(params, updates, inplace=False), state

    return step


def _meta_grads(name, k, dropout, seed=3, **kw):
    if name == 'adam_accelerated' and not torchopt.accelerated_op_available('cpu'):
        pytest.skip('torchopt-accel is not installed')
    x, y, params, lam = _problem(matrices_only=name in MATRICES_ONLY)
    opt = OPTIMIZERS[name]()
    step = _make_step(opt, x, y, lam, dropout)
    torch.manual_seed(seed)
    final, _ = torchopt.unroll(step, (params, opt.init(params)), k, **kw)
    outer = F.mse_loss(_forward(final, x, False), y)
    wrt = [*params.values(), lam]
    return torch.autograd.grad(outer, wrt, allow_unused=True), outer.detach(), torch.rand(3)


def _assert_rel(got, ref, rtol=1e-12):
    for a, b in zip(got, ref):
        assert (a is None) == (b is None)
        if b is not None:
            scale = b.abs().max().clamp_min(1e-300)
            assert float((a - b).abs().max() / scale) <= rtol, (a, b)


@pytest.mark.parametrize('dropout', [False, True], ids=['plain', 'dropout'])
@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_checkpointed_equals_full_unroll(name, dropout):
    # The plain recorded loop (the reference) must itself differentiate, for every optimizer
    # (Muon's included: its Newton-Schulz iteration is recorded like any other op).
    ref, ref_loss, ref_rng = _meta_grads(name, 50, dropout)
    assert all(g is not None and torch.isfinite(g).all() for g in ref)
    assert any(float(g.abs().max()) > 0 for g in ref)
    for checkpoints in (5, 'sqrt'):
        got, loss, rng = _meta_grads(name, 50, dropout, checkpoints=checkpoints)
        assert loss == ref_loss
        _assert_rel(got, ref)
        assert torch.equal(rng, ref_rng)  # the caller's random numbers continue as without


def test_every_functional_optimizer_is_covered():
    assert set(torchopt.alias.__all__) <= set(OPTIMIZERS)
    assert all(callable(getattr(torchopt, name)) for name in torchopt.alias.__all__)


def test_budget_edge_cases_equal_full_unroll():
    ref = _meta_grads('adam', 12, True)[0]
    for checkpoints in (1, 2, 11, 12, 500):
        _assert_rel(_meta_grads('adam', 12, True, checkpoints=checkpoints)[0], ref)


def test_initial_carry_and_closure_gradients_by_backward():
    """``.backward()`` accumulates into the initial parameters and the closure like the loop."""
    grads = []
    for kw in ({}, {'checkpoints': 4}):
        x, y, params, lam = _problem()
        opt = OPTIMIZERS['adam']()
        final, _ = torchopt.unroll(
            _make_step(opt, x, y, lam, False), (params, opt.init(params)), 20, **kw
        )
        F.mse_loss(_forward(final, x, False), y).backward()
        grads.append([p.grad for p in (*params.values(), lam)])
    _assert_rel(grads[1], grads[0])


def _gd_problem():
    g = torch.Generator().manual_seed(11)
    a = torch.randn(5, 3, generator=g, dtype=DT)
    b = torch.randn(5, generator=g, dtype=DT)
    w0 = torch.zeros(3, dtype=DT, requires_grad=True)
    return a, b, w0


def _gd_loss(lam, k, **kw):
    a, b, w0 = _gd_problem()
    opt = torchopt.sgd(2e-3, momentum=0.5)

    def step(carry, t):
        w, state = carry
        loss = ((a @ w - b) ** 2).sum() + lam * (w**2).sum()
        (g,) = torch.autograd.grad(loss, w, create_graph=True)
        u, state = opt.update(g, state, inplace=False)
        return torchopt.apply_updates(w, u, inplace=False), state

    w, _ = torchopt.unroll(step, (w0, opt.init(w0)), k, **kw)
    return ((w - 1.0) ** 2).sum()


@pytest.mark.parametrize('checkpoints', [16, 'sqrt'])
def test_finite_differences_at_1000_steps(checkpoints):
    lam = torch.tensor(0.3, dtype=DT, requires_grad=True)
    (got,) = torch.autograd.grad(_gd_loss(lam, 1000, checkpoints=checkpoints), lam)
    h = 1e-5
    plus = _gd_loss(torch.tensor(0.3 + h, dtype=DT), 1000, truncate=0)
    minus = _gd_loss(torch.tensor(0.3 - h, dtype=DT), 1000, truncate=0)
    fd = ((plus - minus) / (2 * h)).detach()
    assert abs(float(fd)) > 1e-3
    assert abs(float(got - fd)) <= 1e-7 * abs(float(fd))


@pytest.mark.parametrize('checkpoints', [None, 3])
@pytest.mark.parametrize('window', [0, 1, 7, 30, 40])
def test_truncate_equals_hand_written_truncated_unroll(window, checkpoints):
    k = 30
    x, y, params, lam = _problem()
    opt = OPTIMIZERS['adam']()
    step = _make_step(opt, x, y, lam, True)
    torch.manual_seed(5)
    carry = (params, opt.init(params))
    for t in range(max(0, k - window)):
        carry = torchopt.pytree.tree_map(
            lambda v: v.detach().requires_grad_(v.requires_grad), step(carry, t)
        )
    for t in range(max(0, k - window), k):
        carry = step(carry, t)
    ref_outer = F.mse_loss(_forward(carry[0], x, False), y)
    torch.manual_seed(5)
    final, _ = torchopt.unroll(
        step, (params, opt.init(params)), k, truncate=window, checkpoints=checkpoints
    )
    outer = F.mse_loss(_forward(final, x, False), y)
    assert outer == ref_outer
    wrt = [*params.values(), lam]
    ref = torch.autograd.grad(ref_outer, wrt, allow_unused=True)
    got = torch.autograd.grad(outer, wrt, allow_unused=True)
    _assert_rel(got, ref)
    if window == 0:  # detached everywhere: the flags are kept, but no gradient reaches wrt
        assert outer.requires_grad and all(g is None for g in got)
        return
    assert (got[0] is None) == (window < k)  # no gradient for the initial carry when truncated


def test_non_leaf_closure_and_structure_change():
    """A closure tensor with a history, ``None`` state until the first step, aliased leaves."""
    x, y, params, _ = _problem()
    log_lr = torch.tensor(-3.0, dtype=DT, requires_grad=True)
    opt = torchopt.adam(1.0, eps=1e-3, moment_requires_grad=True)

    def run(**kw):
        lr = log_lr.exp()  # non-leaf, computed outside the step
        shared = params['w2']

        def step(carry, t):
            p, state, tied = carry
            state = opt.init(p) if state is None else state
            loss = F.mse_loss(_forward(p, x, True), y) + (tied**2).sum() * 1e-3
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=True)
            u, state = opt.update(dict(zip(p, grads)), state, inplace=False)
            p = torchopt.apply_updates(p, {n: lr * v for n, v in u.items()}, inplace=False)
            return p, state, p['w2']

        torch.manual_seed(0)
        final, _, tied = torchopt.unroll(step, ({**params}, None, shared), 15, **kw)
        outer = F.mse_loss(_forward(final, x, False), y) + tied.sum()
        return torch.autograd.grad(outer, [*params.values(), log_lr])

    _assert_rel(run(checkpoints=4), run())


def test_saved_memory_is_the_budget():
    x, y, params, lam = _problem()
    opt = OPTIMIZERS['adam']()
    carry = (params, opt.init(params))
    n_tensors = len(torchopt.pytree.tree_leaves(carry))
    for k, c in [(40, 3), (200, 3), (200, 9)]:
        final, _ = torchopt.unroll(_make_step(opt, x, y, lam, False), carry, k, checkpoints=c)
        saved = final['w1'].grad_fn.saved_tensors
        assert len(saved) <= c * n_tensors


def test_step_modifying_the_carry_in_place_is_refused():
    w0 = torch.ones(3, requires_grad=True)

    def step(w, t):
        with torch.no_grad():
            w.mul_(0.5)
        return w * 1.0

    with pytest.raises(RuntimeError, match='in place'):
        torchopt.unroll(step, w0, 4, checkpoints=2)


def test_retain_graph_and_second_order_limits():
    _, _, w0 = _gd_problem()
    lam = torch.tensor(0.5, dtype=DT, requires_grad=True)

    def step(w, t):
        return w - 0.1 * lam * (w - 1.0)

    out = torchopt.unroll(step, w0, 6, checkpoints=2).sum()
    (g1,) = torch.autograd.grad(out, lam, retain_graph=True)
    (g2,) = torch.autograd.grad(out, lam)
    assert g1 == g2
    with pytest.raises(RuntimeError, match='backward through the graph a second time'):
        torch.autograd.grad(out, lam)
    out = torchopt.unroll(step, w0, 6, checkpoints=2).sum()
    with pytest.raises(RuntimeError, match='create_graph=True'):
        torch.autograd.grad(out, lam, create_graph=True)


def test_torch_func_grad():
    """``checkpoints=None`` and ``truncate`` are plain loops: they run under ``torch.func.grad``."""
    a, b, w0 = _gd_problem()
    w0 = w0.detach()

    def step_for(lam):
        def step(w, t):
            g = torch.func.grad(lambda v: ((a @ v - b) ** 2).sum() + lam * (v**2).sum())(w)
            return w - 1e-2 * g

        return step

    def outer(lam, **kw):
        return ((torchopt.unroll(step_for(lam), w0, 20, **kw) - 1.0) ** 2).sum()

    lam = torch.tensor(0.3, dtype=DT)
    leaf = lam.clone().requires_grad_()
    (ref,) = torch.autograd.grad(outer(leaf), leaf)
    _assert_rel([torch.func.grad(outer)(lam)], [ref])
    truncated = torch.func.grad(lambda v: outer(v, truncate=5))(lam)
    assert 0 < abs(float(truncated)) < abs(float(ref))
    with pytest.raises(RuntimeError, match='torch.func'):
        torch.func.grad(lambda v: outer(v, checkpoints=4))(lam)


def test_no_grad_zero_steps_and_non_tensor_leaves():
    w0 = torch.ones(2, requires_grad=True)
    carry = {'w': w0, 'count': 0, 'name': 'x'}

    def step(c, t):
        return {'w': c['w'] * 0.5, 'count': c['count'] + 1, 'name': c['name']}

    assert torchopt.unroll(step, carry, 0, checkpoints=3) is carry
    out = torchopt.unroll(step, carry, 5, checkpoints=2)
    assert out['count'] == 5 and out['name'] == 'x'
    out['w'].sum().backward()
    torch.testing.assert_close(w0.grad, torch.full((2,), 0.5**5))
    with torch.no_grad():
        out = torchopt.unroll(step, carry, 5, checkpoints=2)
    assert not out['w'].requires_grad


def test_argument_validation():
    step = lambda c, t: c  # noqa: E731
    w = torch.ones(1)
    with pytest.raises(TypeError, match='callable'):
        torchopt.unroll(1, w, 3)
    for bad, err in [(-1, ValueError), (2.0, TypeError), (True, TypeError)]:
        with pytest.raises(err, match='num_steps'):
            torchopt.unroll(step, w, bad)
    for bad, err in [(0, ValueError), ('log', ValueError), (False, TypeError), (1.5, TypeError)]:
        with pytest.raises(err, match='checkpoints'):
            torchopt.unroll(step, w, 3, checkpoints=bad)
    with pytest.raises(ValueError, match='truncate'):
        torchopt.unroll(step, w, 3, truncate=-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_dropout_checkpointed_equals_full():
    device = torch.device('cuda')
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g, dtype=DT).to(device)
    w0 = torch.randn(8, 8, generator=g, dtype=DT).to(device).requires_grad_()
    lam = torch.tensor(0.2, dtype=DT, device=device, requires_grad=True)
    opt = torchopt.adam(0.05, eps=1e-3, moment_requires_grad=True)

    def step(carry, t):
        w, state = carry
        loss = F.dropout(torch.tanh(x @ w), 0.3).pow(2).mean() + lam * w.pow(2).sum()
        (gw,) = torch.autograd.grad(loss, w, create_graph=True)
        u, state = opt.update(gw, state, inplace=False)
        return torchopt.apply_updates(w, u, inplace=False), state

    def run(**kw):
        torch.manual_seed(0)
        w, _ = torchopt.unroll(step, (w0, opt.init(w0)), 30, **kw)
        return torch.autograd.grad(torch.tanh(x @ w).sum(), [w0, lam])

    _assert_rel(run(checkpoints='sqrt'), run(), rtol=1e-10)
