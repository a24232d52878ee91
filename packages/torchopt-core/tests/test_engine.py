"""The step engine's contract (issue #16): per-parameter tensor state, missing gradients, vmap,
torch.compile, and one dispatcher.

The shape-mismatch matrix (which runs each case in a subprocess) is in ``test_shape_checks.py``.
"""

from __future__ import annotations

import optree
import pytest
import torch
from optimizer_table import (
    init_params,
    max_err,
    missing_schedule,
    row_params,
    rows,
    run_class,
    run_functional,
    run_reference,
)
from optimizer_table import loss as _loss

import torchopt

STEPS = 20
TOL = 1e-12


def _init_params() -> list[torch.Tensor]:
    return init_params(3, n=4)


pytestmark = pytest.mark.usefixtures('float64_default')  # torch.optim's scalars in float64


def _max_err(a, b):
    return max_err(a, b)


@rows()
def test_class_skips_missing_gradients_like_the_reference(row):
    """A parameter whose gradient is None is skipped and its own step count does not advance."""
    missing = missing_schedule(4, STEPS)
    params = row_params(row, 3, n=4)
    expected = run_reference(row, params, missing)
    assert max_err(run_class(row, params, missing), expected) <= row.tol


@rows()
@pytest.mark.parametrize('inplace', [True, False])
def test_functional_skips_missing_gradients_like_the_reference(row, inplace):
    missing = missing_schedule(4, STEPS)
    params = row_params(row, 3, n=4)
    expected = run_reference(row, params, missing)
    assert max_err(run_functional(row, params, missing, inplace), expected) <= row.tol


def test_step_counts_are_per_parameter_tensors():
    params = (torch.zeros(3), torch.zeros(2))
    state = torchopt.adam(1e-2).init(params)
    for grads in [(torch.ones(3), torch.ones(2)), (torch.ones(3), None), (torch.ones(3), None)]:
        _, state = torchopt.adam(1e-2).update(grads, state)
    counts = state[0].count
    assert all(isinstance(c, torch.Tensor) and c.dim() == 0 for c in counts)
    assert [c.item() for c in counts] == [3.0, 1.0]


@rows()
def test_states_are_pure_tensor_trees(row):
    params = row_params(row, 3, n=4)
    state = row.fn(**row.kwargs).init(params)
    leaves = optree.tree_leaves(state)
    assert all(isinstance(x, torch.Tensor) for x in leaves)


def _ensemble(row, n: int = 3) -> tuple[list, list]:
    params = [torch.stack([p + k for k in range(n)]) for p in row_params(row, 3, n=4)]
    grads = [torch.randn_like(p) for p in params]
    return params, grads


@rows()
@pytest.mark.parametrize('inplace', [False, True])
def test_vmap_over_init_and_update_matches_a_loop(row, inplace):
    """Upstream's functorch examples train an ensemble by vmapping init and update (#18 item 5).

    Both updates: ``inplace=True`` (the default) writes the batched state, so every buffer that
    ``vmap(init)`` returns must have one element per member (step counts included, not an
    expanded scalar). Muon's Newton-Schulz iteration runs in bfloat16, where a batched matmul
    rounds differently from the per-matrix one: its rows are compared at bfloat16's resolution
    (2**-8) times the step size.
    """
    tol = 2e-3 if row.matrices_only else 1e-12
    opt = row.fn(**row.kwargs)
    params, grads = _ensemble(row)
    state = torch.func.vmap(opt.init)(params)

    def step(g, s, p):
        updates, s = opt.update(g, s, params=p, inplace=inplace)
        return torchopt.apply_updates(p, updates, inplace=False), s

    fresh = lambda: [g.clone() for g in grads]  # noqa: E731  (an in-place update writes them)
    new_params, state = torch.func.vmap(step)(fresh(), state, params)
    new_params, state = torch.func.vmap(step)(fresh(), state, new_params)  # a second step
    for k in range(params[0].shape[0]):
        p_k = [p[k].clone() for p in params]
        s_k = opt.init(p_k)
        for _ in range(2):
            u, s_k = opt.update([g[k] for g in grads], s_k, params=p_k, inplace=False)
            p_k = torchopt.apply_updates(p_k, u, inplace=False)
        for got, want in zip(new_params, p_k):
            torch.testing.assert_close(got[k], want, rtol=tol, atol=tol)


class _CountingBackend:
    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.mark.parametrize('name', ['adam', 'adamw', 'sgd'])
def test_compiled_inplace_step_compiles_once(name):
    """Tensor step counts: a compiled in-place step does not recompile as the count grows."""
    torch._dynamo.reset()
    make = {
        'adam': lambda: torchopt.adam(1e-2),
        'adamw': lambda: torchopt.adamw(1e-2),
        'sgd': lambda: torchopt.sgd(1e-2, momentum=0.9),
    }[name]
    opt = make()
    params = [p.clone() for p in _init_params()]
    state = opt.init(params)
    backend = _CountingBackend()

    @torch.compile(backend=backend)
    def step(grads, state):
        updates, state = opt.update(grads, state, params=params, inplace=True)
        torchopt.apply_updates(params, updates, inplace=True)
        return state

    ref_params = [p.clone() for p in params]
    ref_state = make().init(ref_params)
    graphs_after_first = None
    for k in range(STEPS):
        grads = [torch.full_like(p, 0.1 * (k + 1)) for p in params]
        state = step([g.clone() for g in grads], state)
        u, ref_state = make().update(grads, ref_state, params=ref_params, inplace=True)
        torchopt.apply_updates(ref_params, u, inplace=True)
        if k == 0:
            graphs_after_first = backend.graphs
    assert graphs_after_first >= 1
    assert backend.graphs == graphs_after_first
    for a, b in zip(params, ref_params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()


def test_fused_step_survives_wrapping_in_a_chain():
    """The fused step is declared by the alias: chain(clip, adam) still runs it in step()."""
    from torchopt import _dispatch

    impl = torchopt.chain(torchopt.clip_grad_norm(1.0), torchopt.adam(1e-2))
    prefix, fused = _dispatch.find_fused(impl)
    assert fused is not None and fused.kind == 'adam' and len(prefix) == 1
    params = [p.clone().requires_grad_() for p in _init_params()]
    ref = [p.clone().requires_grad_() for p in _init_params()]
    ours = torchopt.Optimizer(params, impl)
    theirs = torch.optim.Adam(ref, lr=1e-2, foreach=False)
    for _ in range(5):
        for ps in (params, ref):
            for p in ps:
                p.grad = None
            _loss(ps).backward()
        torch.nn.utils.clip_grad_norm_(ref, 1.0)
        ours.step()
        theirs.step()
    assert _max_err(params, ref) <= 1e-10  # clip's 1e-6 in the denominator differs from torch's


def test_the_fused_paths_run_and_match_the_composed_chain(monkeypatch):
    """The class step of sgd/adam/adamw runs torch's fused kernel; the composed chain agrees."""
    calls = []
    for kernel in ('_fused_adam_', '_fused_adamw_', '_fused_sgd_'):
        original = getattr(torch, kernel)

        def spy(*args, _original=original, _name=kernel, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch, kernel, spy)
    for cls, kwargs, kernel in [
        (torchopt.Adam, dict(lr=1e-2, weight_decay=0.1), '_fused_adam_'),
        (torchopt.AdamW, dict(lr=1e-2), '_fused_adamw_'),
        (torchopt.SGD, dict(lr=1e-2, momentum=0.9, dampening=0.3), '_fused_sgd_'),
    ]:
        calls.clear()
        params = [p.clone().requires_grad_() for p in _init_params()]
        opt = cls(params, **kwargs)
        for _ in range(4):
            opt.zero_grad()
            _loss(params).backward()
            opt.step()
        assert kernel in calls


@pytest.mark.parametrize('kwargs', [dict(), dict(weight_decay=0.3), dict(maximize=True)])
@pytest.mark.parametrize('api', ['class', 'functional'])
def test_adamw_amsgrad_runs_the_fused_kernel_and_matches_torch_optim(monkeypatch, api, kwargs):
    """AdamW(amsgrad=True): torch's fused AdamW kernel (its amsgrad flag), in the class step and
    the functional in-place update, equal to torch.optim.AdamW(amsgrad=True) in float64 over 12
    steps in which every third step one gradient is missing (its count must not advance)."""
    calls = []
    original = torch._fused_adamw_

    def spy(*args, **kw):
        calls.append(kw['amsgrad'])
        return original(*args, **kw)

    monkeypatch.setattr(torch, '_fused_adamw_', spy)
    params = [p.clone().requires_grad_() for p in _init_params()]
    ref = [p.detach().clone().requires_grad_() for p in params]
    theirs = torch.optim.AdamW(ref, lr=5e-2, amsgrad=True, foreach=False, **kwargs)
    if api == 'class':
        opt = torchopt.AdamW(params, lr=5e-2, amsgrad=True, **kwargs)
    else:
        impl = torchopt.adamw(5e-2, amsgrad=True, **kwargs)
        state = impl.init(tuple(p.detach() for p in params))
    for step in range(12):
        torch.manual_seed(step)
        grads = [torch.randn_like(p) * (1 + step % 4) for p in params]
        if step % 3 == 2:
            grads[1] = None
        for ps in (params, ref):
            for p, g in zip(ps, grads):
                p.grad = None if g is None else g.clone()
        if api == 'class':
            opt.step()
        else:
            with torch.no_grad():
                plain = tuple(p.detach() for p in params)
                updates, state = impl.update(tuple(p.grad for p in params), state, params=plain)
                torchopt.apply_updates(plain, updates)
        theirs.step()
    assert calls and all(calls)
    assert _max_err(params, ref) <= 1e-12


@pytest.mark.parametrize('kwargs', [dict(), dict(weight_decay=0.1), dict(maximize=True)])
@pytest.mark.parametrize(
    ('fn', 'torch_cls'), [(torchopt.adam, torch.optim.Adam), (torchopt.adamw, torch.optim.AdamW)]
)
def test_functional_inplace_update_is_one_kernel_pass(monkeypatch, fn, torch_cls, kwargs):
    """In place, the whole Adam update (-lr included) is one fused kernel call per step."""
    calls = []
    original = torch._fused_adamw_

    def spy(*args, **kw):
        calls.append(kw['lr'])
        return original(*args, **kw)

    params = [p.clone() for p in _init_params()]
    ref = [p.clone().requires_grad_() for p in params]
    opt = fn(1e-2, **kwargs)
    ref_opt = torch_cls(ref, lr=1e-2, foreach=False, **kwargs)
    state = opt.init(params)
    for _ in range(4):
        grads = [torch.randn_like(p) for p in params]
        monkeypatch.setattr(torch, '_fused_adamw_', spy)
        updates, state = opt.update([g.clone() for g in grads], state, params=params)
        monkeypatch.undo()
        torchopt.apply_updates(params, updates)
        for r, g in zip(ref, grads):
            r.grad = g
        ref_opt.step()
    assert calls == [1e-2] * 4
    assert _max_err(params, ref) <= 1e-13


def test_vmap_over_tasks_with_a_scalar_parameter_keeps_its_dtype():
    """Double-precision bias corrections (tensors under vmap) must not promote 0-dim params."""
    torch.set_default_dtype(torch.float32)
    opt = torchopt.adam(0.3)
    x, y = torch.randn(4, 10, 3), torch.randn(4, 10)

    def adapt(params, x, y):
        state = opt.init(params)
        for _ in range(3):
            grads = torch.func.grad(lambda p: ((x @ p['w'] + p['b'] - y) ** 2).mean())(params)
            updates, state = opt.update(grads, state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        return params

    init = {'w': torch.zeros(3), 'b': torch.zeros(())}
    batched = torch.func.vmap(adapt, in_dims=(None, 0, 0))(init, x, y)
    assert batched['b'].dtype == torch.float32 and batched['b'].shape == (4,)
    for t in range(4):
        torch.testing.assert_close(adapt(init, x[t], y[t])['b'], batched['b'][t])


@pytest.mark.parametrize(
    'kwargs',
    [dict(), dict(weight_decay=0.1), dict(maximize=True), dict(nesterov=True), dict(dampening=0.3)],
)
def test_functional_inplace_sgd_momentum_matches_torch_optim(monkeypatch, kwargs):
    """The in-place momentum update (out= ops on large leaves, foreach on small) is torch's SGD.

    The tree mixes leaves below and above the per-tensor size (2**16 elements), and one leaf
    misses its gradient in every other step (its buffer must not move).
    """
    from torchopt import _kernels

    taken = []
    original = _kernels._sgd_update

    def spy(*args):
        done = original(*args)
        taken.append(done is not None)
        return done

    monkeypatch.setattr(_kernels, '_sgd_update', spy)
    shapes = [(3,), (_kernels._PER_TENSOR_NUMEL + 7,), (300, 300), (5, 4)]
    g0 = torch.Generator().manual_seed(11)
    params = [torch.randn(s, generator=g0) for s in shapes]
    ref = [p.clone().requires_grad_() for p in params]
    opt = torchopt.sgd(1e-2, momentum=0.9, **kwargs)
    ref_opt = torch.optim.SGD(ref, lr=1e-2, momentum=0.9, foreach=False, **kwargs)
    state = opt.init(params)
    for step in range(8):
        grads = [torch.randn(s, generator=g0) for s in shapes]
        if step % 2:
            grads[1] = None
        given = [None if g is None else g.clone() for g in grads]
        updates, state = opt.update(given, state, params=params, inplace=True)
        assert all(u is g for u, g in zip(updates, given) if g is not None)  # written in place
        torchopt.apply_updates(params, updates)
        for r, g in zip(ref, grads):
            r.grad = g
        ref_opt.step()
    assert _max_err(params, ref) <= 1e-13
    # Heavy-ball momentum takes the two-pass path; dampened and Nesterov the composed chain.
    fast = 'nesterov' not in kwargs and 'dampening' not in kwargs
    assert taken == [fast] * 8


@pytest.mark.parametrize('kwargs', [dict(), dict(weight_decay=0.1), dict(maximize=True)])
def test_functional_inplace_sgd_momentum_accel_kernel_matches_torch_optim(monkeypatch, kwargs):
    """``sgd(..., use_accelerated_op=True)``: accel's one-pass kernel runs and is torch's SGD."""
    torchopt_accel = pytest.importorskip('torchopt_accel')
    calls = []
    original = torchopt_accel.sgd_update_

    def spy(*args, **kw):
        calls.append(len(args[0]))
        return original(*args, **kw)

    monkeypatch.setattr(torchopt_accel, 'sgd_update_', spy)
    shapes = [(3,), (70_000,), (20, 30)]
    g0 = torch.Generator().manual_seed(12)
    params = [torch.randn(s, generator=g0) for s in shapes]
    ref = [p.clone().requires_grad_() for p in params]
    opt = torchopt.sgd(1e-2, momentum=0.9, use_accelerated_op=True, **kwargs)
    ref_opt = torch.optim.SGD(ref, lr=1e-2, momentum=0.9, foreach=False, **kwargs)
    state = opt.init(params)
    for step in range(6):
        grads = [torch.randn(s, generator=g0) for s in shapes]
        if step % 2:
            grads[0] = None  # skipped: its buffer must not move
        given = [None if g is None else g.clone() for g in grads]  # overwritten with updates
        updates, state = opt.update(given, state, params=params, inplace=True)
        torchopt.apply_updates(params, updates)
        for r, g in zip(ref, grads):
            r.grad = g
        ref_opt.step()
    assert calls == [3, 2] * 3  # the kernel took every step, on the present leaves
    assert _max_err(params, ref) <= 1e-13
