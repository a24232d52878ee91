"""A shared conformance suite run over every transformation and every row of the optimizer table."""

from __future__ import annotations

import pickle

import pytest
import torch
from optimizer_table import ALL

import torchopt
from torchopt import transform

FACTORIES = {
    'scale': lambda: transform.scale(0.5),
    'scale_by_schedule': lambda: transform.scale_by_schedule(lambda c: 1.0 / (1 + c)),
    'scale_by_adam': lambda: transform.scale_by_adam(),
    'scale_by_adam_root': lambda: transform.scale_by_adam(eps_root=1e-8),
    'scale_by_adamax': lambda: transform.scale_by_adamax(),
    'scale_by_radam': lambda: transform.scale_by_radam(),
    'scale_by_nadam': lambda: transform.scale_by_nadam(),
    'scale_by_rms': lambda: transform.scale_by_rms(),
    'scale_by_stddev': lambda: transform.scale_by_stddev(),
    'scale_by_rss': lambda: transform.scale_by_rss(),
    'scale_by_adadelta': lambda: transform.scale_by_adadelta(),
    'scale_by_lion': lambda: transform.scale_by_lion(),
    'trace': lambda: transform.trace(0.9),
    'trace_nesterov': lambda: transform.trace(0.9, nesterov=True),
    'nan_to_num': lambda: transform.nan_to_num(),
    'add_decayed_weights': lambda: transform.add_decayed_weights(0.1),
    'masked': lambda: transform.masked(transform.scale(2.0), {'a': True, 'b': False, 'c': True}),
    'clip_grad_norm': lambda: torchopt.clip_grad_norm(0.1),
    'adamw_mask': lambda: torchopt.adamw(0.1, mask={'a': True, 'b': True, 'c': False}),
}
# Every row of the optimizer table, with its options.
FACTORIES.update({
    f'row:{row.id}': (lambda row=row: row.fn(**row.kwargs)) for row in ALL
})  # fmt: skip
MATRICES_ONLY = {f'row:{row.id}' for row in ALL if row.matrices_only}
_current = {'name': ''}  # the factory under test (its rows may need matrices)


def _tree(seed: int):
    g = torch.Generator().manual_seed(seed)
    matrices = _current['name'] in MATRICES_ONLY
    return {
        'a': torch.randn(4, 3, generator=g, dtype=torch.float64),
        'b': torch.randn(5, 2, generator=g, dtype=torch.float64)
        if matrices
        else torch.randn(5, generator=g, dtype=torch.float64),
        'c': (
            torch.randn(2, 2, generator=g, dtype=torch.float64)
            if matrices
            else torch.randn(2, generator=g, dtype=torch.float64),
        ),
    }


def _params():
    return _tree(3)


def _grads():
    return _tree(4)


def _leaves(tree):
    return torchopt.pytree.tree_leaves(tree)


@pytest.fixture(params=sorted(FACTORIES))
def name(request):
    _current['name'] = request.param
    yield request.param
    _current['name'] = ''


def test_inplace_and_functional_agree(name):
    t1, t2 = FACTORIES[name](), FACTORIES[name]()
    p = _params()
    s1, s2 = t1.init(p), t2.init(p)
    for _ in range(3):
        u1, s1 = t1.update(_grads(), s1, params=p, inplace=True)
        u2, s2 = t2.update(_grads(), s2, params=p, inplace=False)
        for a, b in zip(_leaves(u1), _leaves(u2)):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_inplace_returns_same_tensor_objects(name):
    t = FACTORIES[name]()
    p = _params()
    state = t.init(p)
    grads = _grads()
    updates, _ = t.update(grads, state, params=p, inplace=True)
    for before, after in zip(_leaves(grads), _leaves(updates)):
        assert after is before


def test_out_of_place_never_mutates_inputs(name):
    t = FACTORIES[name]()
    p = _params()
    state = t.init(p)
    state, _ = t.update(_grads(), state, params=p, inplace=False)[1], None
    grads = _grads()
    tensors = [x for x in _leaves((grads, state, p)) if isinstance(x, torch.Tensor)]
    snapshot = [x.clone() for x in tensors]
    t.update(grads, state, params=p, inplace=False)
    for before, after in zip(snapshot, tensors):
        assert torch.equal(before, after)


def test_none_leaves_pass_through(name):
    t = FACTORIES[name]()
    p = _params()
    state = t.init(p)
    grads = _grads()
    grads['b'] = None
    for inplace in (False, True):
        updates, state = t.update(grads, state, params=p, inplace=inplace)
        assert updates['b'] is None
        assert updates['a'].shape == p['a'].shape


# The masks of 'masked' and 'adamw_mask' name leaves of the three-leaf tree.
@pytest.mark.parametrize('empty_name', sorted(set(FACTORIES) - {'masked', 'adamw_mask'}))
def test_empty_tree(empty_name):
    t = FACTORIES[empty_name]()
    state = t.init({})
    updates, _ = t.update({}, state, params={}, inplace=False)
    assert updates == {}


def test_state_is_picklable_and_transformation_too(name):
    t = FACTORIES[name]()
    state = t.init(_params())
    assert pickle.loads(pickle.dumps(state)) is not None


def _double_init(params):
    return torchopt.base.EmptyState()


def _double_update(updates, state, *, params=None, inplace=True):
    return torchopt.pytree.tree_map(lambda u: u * 2, updates), state


def test_chain_algebra():
    s = transform.scale(2.0)
    assert torchopt.chain() == torchopt.base.identity()
    assert torchopt.chain(s) is s
    chained = torchopt.chain(s, torchopt.base.identity(), torchopt.chain(s, s))
    assert chained.transformations == (s, s, s)
    assert torchopt.base.ChainedGradientTransformation(s) == s
    assert torchopt.base.identity() == torchopt.base.identity()
    only_identities = torchopt.base.ChainedGradientTransformation(torchopt.base.identity())
    assert len(only_identities.transformations) == 1
    picklable = torchopt.base.GradientTransformation(_double_init, _double_update)
    pickled = torchopt.chain(picklable, picklable)
    assert pickle.loads(pickle.dumps(pickled)) == pickled
    g = {'a': torch.ones(2)}
    state = chained.init(g)
    assert isinstance(state, tuple) and len(state) == 3
    u, _ = chained.update({'a': torch.ones(2)}, state)
    torch.testing.assert_close(u['a'], torch.full((2,), 8.0))
    with pytest.raises(ValueError, match='number of updates and states'):
        chained.update(g, state[:2])


def test_chain_flat_matches_chain():
    ts = [transform.scale_by_adam(), transform.trace(0.5), transform.scale(-0.1)]
    a, b = torchopt.chain(*ts), torchopt.combine.chain_flat(*ts)
    p = _params()
    sa, sb = a.init(p), b.init(p)
    for _ in range(3):
        ua, sa = a.update(_grads(), sa, inplace=False)
        ub, sb = b.update(_grads(), sb, inplace=False)
    for x, y in zip(_leaves(ua), _leaves(ub)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert torchopt.chain.flat is torchopt.combine.chain_flat


def test_gradient_transformation_chain_method():
    s = transform.scale(3.0)
    c = s.chain(transform.scale(2.0))
    u, _ = c.update({'a': torch.ones(1)}, c.init({'a': torch.ones(1)}))
    assert u['a'].item() == 6.0


def test_trace_first_step_flag_lives_in_the_state():
    """Upstream kept 'first step done' in the transformation: a fresh state got (1-d)*g."""
    t = torchopt.sgd(lr=1.0, momentum=0.9, dampening=0.5)
    p = (torch.zeros(3),)
    s_old = t.init(p)
    _, s_old = t.update((torch.ones(3),), s_old, inplace=False)
    fresh = t.init(p)
    u, _ = t.update((torch.ones(3),), fresh, inplace=False)
    torch.testing.assert_close(u[0], -torch.ones(3))  # trace = g on a fresh state


def test_register_hook_applies_on_backward():
    seen = []
    t = torchopt.chain(
        torchopt.hook.register_hook(lambda g: seen.append(g.clone()) or g * 0), transform.scale(1.0)
    )
    x = torch.ones(3, requires_grad=True)
    g = x * 2.0
    u, _ = t.update((g,), t.init((x,)), inplace=False)
    u[0].sum().backward()
    assert len(seen) == 1
    torch.testing.assert_close(x.grad, torch.zeros(3))


def test_hooks_replace_nan():
    g = torch.tensor([float('nan'), 1.0, float('inf')])
    torch.testing.assert_close(torchopt.hook.zero_nan_hook(g)[:2], torch.tensor([0.0, 1.0]))
    h = torchopt.hook.nan_to_num_hook(nan=1.0, posinf=2.0)
    torch.testing.assert_close(h(g), torch.tensor([1.0, 1.0, 2.0]))


def test_nan_to_num_is_exported():
    t = torchopt.nan_to_num(nan=5.0)
    u, _ = t.update((torch.tensor([float('nan')]),), t.init((torch.zeros(1),)))
    assert u[0].item() == 5.0
