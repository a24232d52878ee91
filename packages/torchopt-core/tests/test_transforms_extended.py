"""The transformations of issue #20: the conformance contract and optax's semantics."""

from __future__ import annotations

import functools
import math

import optree
import pytest
import torch

import torchopt
from torchopt import transform as T


@pytest.fixture(autouse=True)
def _float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _params():
    g = torch.Generator().manual_seed(3)
    return {
        'a': torch.randn(4, 3, generator=g),
        'b': torch.randn(5, generator=g),
        'c': (torch.randn(2, 2, generator=g),),
    }


def _grads(seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    return {
        'a': torch.randn(4, 3, generator=g),
        'b': torch.randn(5, generator=g),
        'c': (torch.randn(2, 2, generator=g),),
    }


LABELS = {'a': 'adam', 'b': 'sgd', 'c': ('adam',)}
# The transformations; the optimizers' conformance runs over the optimizer table
# (test_transform_conformance.py, test_parity_extended.py).
FACTORIES = {
    'clip': lambda: T.clip(0.5),
    'clip_by_block_rms': lambda: T.clip_by_block_rms(0.3),
    'clip_by_global_norm': lambda: T.clip_by_global_norm(1.0),
    'scale_by_learning_rate': lambda: T.scale_by_learning_rate(0.1),
    'scale_by_learning_rate_schedule': lambda: T.scale_by_learning_rate(lambda c: 0.1 / (1 + c)),
    'scale_by_sign': lambda: T.scale_by_sign(),
    'set_to_zero': lambda: T.set_to_zero(),
    'centralize': lambda: T.centralize(),
    'zero_nans': lambda: T.zero_nans(),
    'add_noise': lambda: T.add_noise(0.01, 0.55, seed=3),
    'ema': lambda: T.ema(0.9),
    'ema_no_debias': lambda: T.ema(0.9, debias=False),
    'apply_if_finite': lambda: T.apply_if_finite(torchopt.adam(0.1), 2),
    'multi_steps': lambda: T.MultiSteps(torchopt.adam(0.1), 2),
    'partition': lambda: T.partition(
        {'adam': torchopt.adam(0.1), 'sgd': torchopt.sgd(0.1)}, LABELS
    ),  # fmt: skip
    'multi_transform': lambda: T.multi_transform(
        {'adam': torchopt.adam(0.1), 'sgd': torchopt.sgd(0.1, momentum=0.9)}, LABELS
    ),
    'freeze': lambda: T.freeze({'a': True, 'b': False, 'c': True}),
    'selective_transform': lambda: T.selective_transform(
        torchopt.adam(0.1), freeze_mask={'a': False, 'b': True, 'c': False}
    ),
    'inject_hyperparams': lambda: T.inject_hyperparams(torchopt.adam)(lr=0.1),
    'scale_by_amsgrad': lambda: T.scale_by_amsgrad(),
    'scale_by_belief': lambda: T.scale_by_belief(),
    'scale_by_yogi': lambda: T.scale_by_yogi(),
    'scale_by_novograd': lambda: T.scale_by_novograd(weight_decay=0.1),
    'scale_by_adan': lambda: T.scale_by_adan(),
    'scale_by_lars_trust_ratio': lambda: T.scale_by_lars_trust_ratio(0.01),
    'scale_by_rprop': lambda: T.scale_by_rprop(0.01),
    'scale_by_asgd': lambda: T.scale_by_asgd(0.01, t0=1),
    'scale_by_adafactor': lambda: T.scale_by_adafactor(weight_decay=0.1),
    'scale_by_shape': lambda: T.scale_by_shape(lambda s: s[0], weight_decay=0.1),
}


def _leaves(tree):
    return optree.tree_leaves(tree)


@pytest.fixture(params=sorted(FACTORIES))
def name(request):
    return request.param


def test_inplace_and_functional_agree(name):
    t1, t2 = FACTORIES[name](), FACTORIES[name]()
    p = _params()
    s1, s2 = t1.init(p), t2.init(p)
    for k in range(3):
        u1, s1 = t1.update(_grads(k), s1, params=p, inplace=True)
        u2, s2 = t2.update(_grads(k), s2, params=p, inplace=False)
        for a, b in zip(_leaves(u1), _leaves(u2)):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_inplace_returns_the_same_tensor_objects(name):
    t = FACTORIES[name]()
    p = _params()
    state = t.init(p)
    for k in range(2):  # MultiSteps: the accumulating step and the emitting one
        grads = _grads(k)
        updates, state = t.update(grads, state, params=p, inplace=True)
        for before, after in zip(_leaves(grads), _leaves(updates)):
            assert after is before


def test_out_of_place_never_mutates_inputs(name):
    t = FACTORIES[name]()
    p = _params()
    _, state = t.update(_grads(), t.init(p), params=p, inplace=False)
    grads = _grads(5)
    tensors = _leaves((grads, state, p))
    snapshot = [x.clone() for x in tensors]
    t.update(grads, state, params=p, inplace=False)
    for before, after in zip(snapshot, tensors):
        assert torch.equal(before, after)


def test_none_leaves_pass_through(name):
    t = FACTORIES[name]()
    p = _params()
    state = t.init(p)
    for inplace in (False, True, False):
        grads = _grads()
        grads['b'] = None
        updates, state = t.update(grads, state, params=p, inplace=inplace)
        assert updates['b'] is None
        assert updates['a'].shape == p['a'].shape


def test_states_are_pure_tensor_trees(name):
    state = FACTORIES[name]().init(_params())
    assert all(isinstance(x, torch.Tensor) for x in _leaves(state))


# Piecewise constant in the gradient: their derivative is exactly zero (where it exists).
PIECEWISE_CONSTANT = {'scale_by_sign', 'set_to_zero', 'scale_by_rprop'}  # freeze: 'b' passes


def test_out_of_place_is_differentiable(name):
    t = FACTORIES[name]()
    p = {k: v for k, v in _params().items()}
    x = torch.tensor(1.5, requires_grad=True)
    state = t.init(p)
    grads = optree.tree_map(lambda g: g * x, _grads())
    for _ in range(2):
        updates, state = t.update(grads, state, params=p, inplace=False)
    out = sum(u.sum() for u in _leaves(updates))
    # Disconnected from x (set_to_zero): the derivative is exactly zero.
    dx = torch.autograd.grad(out, [x], allow_unused=True)[0] if out.requires_grad else None
    if name in PIECEWISE_CONSTANT:
        assert dx is None or torch.equal(dx, torch.zeros_like(dx)), dx
    elif name == 'multi_steps':
        assert dx is None or torch.isfinite(dx)
    else:
        assert dx is not None and torch.isfinite(dx)


# --- semantics ------------------------------------------------------------------------------------


def _flat(tree):
    return torch.cat([x.reshape(-1) for x in _leaves(tree)])


def test_clip_by_value():
    u, _ = T.clip(0.5).update(_grads(), EmptyState(), inplace=False)
    flat, ref = _flat(u), _flat(_grads())
    assert flat.abs().max() <= 0.5
    torch.testing.assert_close(flat, ref.clamp(-0.5, 0.5))


def EmptyState():  # noqa: N802
    return torchopt.base.EmptyState()


def test_clip_by_block_rms_bounds_each_leaf():
    grads = _grads()
    u, _ = T.clip_by_block_rms(0.3).update(grads, EmptyState(), inplace=False)
    for g, x in zip(_leaves(grads), _leaves(u)):
        rms = g.square().mean().sqrt()
        expect = g if rms <= 0.3 else g * 0.3 / rms
        torch.testing.assert_close(x, expect, rtol=1e-14, atol=0)
    small = {'a': torch.full((2,), 0.1)}
    u, _ = T.clip_by_block_rms(0.3).update(small, EmptyState(), inplace=False)
    torch.testing.assert_close(u['a'], small['a'], rtol=0, atol=0)


def test_clip_by_global_norm_is_optax_and_differentiable():
    grads = _grads()
    norm = _flat(grads).norm()
    u, _ = T.clip_by_global_norm(1.0).update(grads, EmptyState(), inplace=False)
    assert math.isclose(_flat(u).norm().item(), 1.0, rel_tol=1e-14)
    torch.testing.assert_close(_flat(u), _flat(grads) / norm, rtol=1e-14, atol=0)
    u, _ = T.clip_by_global_norm(2 * norm.item()).update(grads, EmptyState(), inplace=False)
    torch.testing.assert_close(_flat(u), _flat(grads), rtol=0, atol=0)

    def f(a, b):
        out, _ = T.clip_by_global_norm(1.0).update([a, b], EmptyState(), inplace=False)
        return out[0].sum() + (out[1] ** 2).sum()

    xs = (torch.randn(3, requires_grad=True), torch.randn(2, 2, requires_grad=True))
    assert torch.autograd.gradcheck(f, xs)


def test_apply_if_finite_skips_and_counts():
    opt = T.apply_if_finite(torchopt.adam(0.1), max_consecutive_errors=2)
    params = [torch.ones(3)]
    state = opt.init(params)
    bad = [torch.tensor([1.0, float('nan'), 1.0])]
    u, state = opt.update([torch.ones(3)], state, params=params)
    assert state.inner_state[0].count[0].item() == 1
    for k in range(2):  # skipped: zero updates, Adam's state untouched
        u, state = opt.update([b.clone() for b in bad], state, params=params)
        assert torch.equal(u[0], torch.zeros(3))
        assert state.inner_state[0].count[0].item() == 1
        assert state.notfinite_count.item() == k + 1 and not state.last_finite
    u, state = opt.update([b.clone() for b in bad], state, params=params)  # gives up: applied
    assert state.inner_state[0].count[0].item() == 2 and torch.isnan(u[0]).any()
    assert state.total_notfinite.item() == 3
    state = opt.init(params)
    _, state = opt.update([b.clone() for b in bad], state, params=params)
    _, state = opt.update([torch.ones(3)], state, params=params)
    assert state.notfinite_count.item() == 0 and bool(state.last_finite)
    assert state.total_notfinite.item() == 1


def _train(opt, micro_grads, params, inplace=True):
    state = opt.init(params)
    outs = []
    for g in micro_grads:
        u, state = opt.update([x.clone() for x in g], state, params=params, inplace=inplace)
        params = torchopt.apply_updates(params, u, inplace=inplace)
        outs.append(u)
    return params, state, outs


@pytest.mark.parametrize('inplace', [True, False])
def test_multi_steps_equals_one_step_with_the_mean(inplace):
    gen = torch.Generator().manual_seed(0)
    micro = [[torch.randn(3, generator=gen), torch.randn(2, 2, generator=gen)] for _ in range(6)]
    start = [torch.ones(3), torch.zeros(2, 2)]
    got, state, outs = _train(T.MultiSteps(torchopt.adam(0.1), 3), micro,
                              [x.clone() for x in start], inplace)  # fmt: skip
    means = [[sum(g[i] for g in micro[k : k + 3]) / 3 for i in range(2)] for k in (0, 3)]
    want, _, _ = _train(torchopt.adam(0.1), means, [x.clone() for x in start], inplace)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    assert all(torch.equal(x, torch.zeros_like(x)) for i in (0, 1, 3, 4) for x in outs[i])
    opt = T.MultiSteps(torchopt.adam(0.1), 3)
    assert bool(opt.has_updated(state)) and opt.gradient_transformation() is opt
    assert state.gradient_step.item() == 2 and state.mini_step.item() == 0


def test_multi_steps_sums_and_skips():
    micro = [[torch.full((2,), float(k + 1))] for k in range(2)]
    _, _, outs = _train(T.MultiSteps(torchopt.sgd(1.0), 2, use_grad_mean=False), micro,
                        [torch.zeros(2)])  # fmt: skip
    torch.testing.assert_close(outs[1][0], torch.full((2,), -3.0))
    opt = T.MultiSteps(torchopt.sgd(1.0), 2, should_skip_update_fn=T.skip_not_finite)
    micro = [[torch.ones(2)], [torch.tensor([float('inf'), 1.0])], [torch.full((2,), 3.0)]]
    _, state, outs = _train(opt, micro, [torch.zeros(2)])
    torch.testing.assert_close(outs[2][0], torch.full((2,), -2.0))  # mean of 1 and 3
    assert state.skip_state['num_not_finite'].item() == 0
    big = functools.partial(T.skip_large_updates, max_squared_norm=10.0)
    opt = T.MultiSteps(torchopt.sgd(1.0), 1, should_skip_update_fn=big)
    _, _, outs = _train(opt, [[torch.full((2,), 5.0)], [torch.ones(2)]], [torch.zeros(2)])
    assert torch.equal(outs[0][0], torch.zeros(2)) and torch.equal(outs[1][0], -torch.ones(2))


def test_multi_steps_averages_a_leaf_over_its_present_micro_steps():
    opt = T.MultiSteps(torchopt.sgd(1.0), 3)
    params = [torch.zeros(2), torch.zeros(2)]
    state = opt.init(params)
    for g in ([torch.ones(2), None], [torch.full((2,), 3.0), None], [None, None]):
        u, state = opt.update(g, state, params=params, inplace=False)
    torch.testing.assert_close(u[0], torch.full((2,), -2.0))
    assert u[1] is None  # no gradient in the whole window: skipped


def test_lookahead_matches_the_two_loops():
    fast_opt = torchopt.sgd(0.1)
    opt = T.lookahead(fast_opt, sync_period=3, slow_step_size=0.5)
    target = torch.tensor([1.0, -2.0])
    params = T.LookaheadParams.init_synced([torch.zeros(2)])
    state = opt.init(params)
    fast, slow = torch.zeros(2), torch.zeros(2)
    for step in range(7):
        grad = params.fast[0] - target
        updates, state = opt.update([grad], state, params=params)
        params = torchopt.apply_updates(params, updates)
        fast = fast - 0.1 * (fast - target)
        if step % 3 == 2:
            slow = slow + 0.5 * (fast - slow)
            fast = slow.clone()
        torch.testing.assert_close(params.fast[0], fast, rtol=0, atol=1e-15)
        torch.testing.assert_close(params.slow[0], slow, rtol=0, atol=1e-15)
    assert state.steps_since_sync.item() == 1


def test_ema_of_updates():
    g = {'a': torch.full((3,), 2.0)}
    t, raw = T.ema(0.9), T.ema(0.9, debias=False)
    s, s_raw = t.init(g), raw.init(g)
    for k in range(1, 4):
        u, s = t.update({'a': torch.full((3,), 2.0)}, s, inplace=False)
        v, s_raw = raw.update({'a': torch.full((3,), 2.0)}, s_raw, inplace=False)
        torch.testing.assert_close(u['a'], g['a'], rtol=1e-15, atol=0)  # debiased: the constant
        torch.testing.assert_close(v['a'], (1 - 0.9**k) * g['a'], rtol=1e-15, atol=0)


def test_params_ema_and_incremental_update():
    params = {'w': torch.zeros(2, requires_grad=True)}
    averager = T.params_ema(0.5)
    state = averager.init(params)
    debiased = T.params_ema(0.5, debias=True)
    d_state = debiased.init(params)
    expect = torch.zeros(2)
    for _ in range(1, 4):
        with torch.no_grad():
            params['w'].add_(1.0)
        state = averager.update(params, state)
        d_state = debiased.update(params, d_state, inplace=False)
        expect = 0.5 * expect + 0.5 * params['w'].detach()
        torch.testing.assert_close(averager.value(state)['w'], expect)
    assert not averager.value(state)['w'].requires_grad
    raw = sum(0.5 ** (3 - k) * 0.5 * k for k in range(1, 4))
    torch.testing.assert_close(debiased.value(d_state)['w'], torch.full((2,), raw / (1 - 0.5**3)))
    new, old = {'a': torch.ones(2)}, {'a': torch.zeros(2)}
    out = T.incremental_update(new, old, 0.25)
    torch.testing.assert_close(out['a'], torch.full((2,), 0.25))
    T.incremental_update(new, old, 0.25, inplace=True)
    torch.testing.assert_close(old['a'], torch.full((2,), 0.25))


@pytest.mark.parametrize('inplace', [True, False])
def test_partition_equals_separate_optimizers(inplace):
    params = _params()
    labels = lambda tree: {'a': 'adam', 'b': 'sgd', 'c': ('adam',)}  # noqa: E731
    opt = T.partition({'adam': torchopt.adam(0.1), 'sgd': torchopt.sgd(0.1, momentum=0.9)},
                      labels)  # fmt: skip
    adam, sgd = torchopt.adam(0.1), torchopt.sgd(0.1, momentum=0.9)
    p = {k: optree.tree_map(torch.clone, v) for k, v in params.items()}
    pa = [p['a'].clone(), p['c'][0].clone()]
    pb = [p['b'].clone()]
    s, sa, sb = opt.init(p), adam.init(pa), sgd.init(pb)
    assert set(s.inner_states) == {'adam', 'sgd'}
    for k in range(3):
        u, s = opt.update(_grads(k), s, params=p, inplace=inplace)
        p = torchopt.apply_updates(p, u, inplace=inplace)
        g = _grads(k)
        ua, sa = adam.update([g['a'], g['c'][0]], sa, params=pa, inplace=inplace)
        pa = torchopt.apply_updates(pa, ua, inplace=inplace)
        ub, sb = sgd.update([g['b']], sb, params=pb, inplace=inplace)
        pb = torchopt.apply_updates(pb, ub, inplace=inplace)
    torch.testing.assert_close(p['a'], pa[0], rtol=0, atol=0)
    torch.testing.assert_close(p['c'][0], pa[1], rtol=0, atol=0)
    torch.testing.assert_close(p['b'], pb[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match='no corresponding transformation'):
        T.partition({'adam': torchopt.adam(0.1)}, labels).init(params)


def test_partition_accepts_a_label_prefix():
    opt = T.partition({'g': torchopt.sgd(1.0), 'd': torchopt.sgd(0.5)}, ('g', 'd'))
    params = ({'x': torch.zeros(2), 'y': torch.zeros(1)}, [torch.zeros(3)])
    grads = ({'x': torch.ones(2), 'y': torch.ones(1)}, [torch.ones(3)])
    u, _ = opt.update(grads, opt.init(params), params=params, inplace=False)
    assert torch.equal(u[0]['x'], -torch.ones(2)) and torch.equal(u[1][0], -0.5 * torch.ones(3))


def test_freeze_and_selective_transform():
    params = _params()
    frozen = T.freeze({'a': True, 'b': False, 'c': True})
    u, _ = frozen.update(_grads(), frozen.init(params), inplace=False)
    assert torch.equal(u['a'], torch.zeros(4, 3)) and torch.equal(u['b'], _grads()['b'])
    u, _ = T.freeze(True).update(_grads(), T.freeze(True).init(params), inplace=False)
    assert all(torch.equal(x, torch.zeros_like(x)) for x in _leaves(u))
    opt = T.selective_transform(torchopt.adamw(0.1, weight_decay=0.5),
                                freeze_mask={'a': True, 'b': False, 'c': False})  # fmt: skip
    state = opt.init(params)
    adam_state = state.inner_states['train'][0]
    assert len(adam_state.mu) == 2  # the frozen leaf never reaches the optimizer
    u, _ = opt.update(_grads(), state, params=params, inplace=False)
    assert torch.equal(u['a'], torch.zeros(4, 3)) and not torch.equal(u['b'], torch.zeros(5))


def test_add_noise_is_annealed_and_reproducible():
    t = T.add_noise(eta=0.04, gamma=1.0, seed=7)
    zeros = [torch.zeros(200_000)]
    state = t.init(zeros)
    stds = []
    for _ in range(3):
        u, state = t.update([torch.zeros(200_000)], state, inplace=False)
        stds.append(u[0].std().item())
    for k, s in enumerate(stds, start=1):
        assert abs(s - math.sqrt(0.04 / k)) < 0.01 * math.sqrt(0.04 / k)
    again = T.add_noise(eta=0.04, gamma=1.0, seed=7)
    s2 = again.init(zeros)
    first, s2 = again.update([torch.zeros(200_000)], s2, inplace=False)
    other = T.add_noise(eta=0.04, gamma=1.0, seed=8)
    u_other, _ = other.update([torch.zeros(200_000)], other.init(zeros), inplace=False)
    replay = T.add_noise(eta=0.04, gamma=1.0, seed=7)
    r_state = replay.init(zeros)
    u1, r_state = replay.update([torch.zeros(200_000)], r_state, inplace=False)
    assert torch.equal(u1[0], first[0]) and not torch.equal(u1[0], u_other[0])
    saved = optree.tree_map(torch.clone, r_state)  # resuming a saved state continues the stream
    a, _ = replay.update([torch.zeros(200_000)], r_state, inplace=False)
    b, _ = replay.update([torch.zeros(200_000)], saved, inplace=False)
    assert torch.equal(a[0], b[0])


def test_centralize_zero_nans_and_sign():
    g = {'m': torch.arange(6.0).reshape(2, 3), 'v': torch.arange(3.0)}
    u, _ = T.centralize().update(g, EmptyState(), inplace=False)
    torch.testing.assert_close(u['m'].mean(dim=1), torch.zeros(2))
    assert torch.equal(u['v'], g['v'])
    t = T.zero_nans()
    bad = {'m': torch.tensor([[float('nan'), 1.0, float('inf')]]), 'v': torch.ones(3)}
    u, s = t.update(bad, t.init(bad), inplace=False)
    assert torch.equal(u['m'], torch.tensor([[0.0, 1.0, float('inf')]]))
    assert {k: bool(x) for k, x in s.found_nan.items()} == {'m': True, 'v': False}
    u, _ = T.scale_by_sign().update({'a': torch.tensor([-2.0, 0.0, 3.0])}, EmptyState(),
                                     inplace=False)  # fmt: skip
    assert torch.equal(u['a'], torch.tensor([-1.0, 0.0, 1.0]))


def test_scale_by_learning_rate():
    g = [torch.ones(2)]
    u, _ = T.scale_by_learning_rate(0.1).update(g, EmptyState(), inplace=False)
    assert torch.equal(u[0], torch.full((2,), -0.1))
    u, _ = T.scale_by_learning_rate(0.1, flip_sign=False).update(g, EmptyState(), inplace=False)
    assert torch.equal(u[0], torch.full((2,), 0.1))
    t = T.scale_by_learning_rate(lambda c: 0.1 * (c + 1))
    s = t.init(g)
    for k in range(3):
        u, s = t.update([torch.ones(2)], s, inplace=False)
        torch.testing.assert_close(u[0], torch.full((2,), -0.1 * (k + 1)))


def test_lars_trust_ratio_is_one_for_zero_norms():
    t = T.scale_by_lars_trust_ratio(0.5)
    u, _ = t.update([torch.ones(2), torch.zeros(2)], EmptyState(),
                    params=[torch.zeros(2), torch.ones(2)], inplace=False)  # fmt: skip
    assert torch.equal(u[0], torch.ones(2)) and torch.equal(u[1], torch.zeros(2))
