"""States shaped like the params, as TorchOpt 0.7 returns them from its tree-level transforms.

Upstream's ``torchopt.transform.scale_by_adam().init({'a': a, 'b': b}).mu`` is ``{'a': .., 'b':
..}``; only the ``.flat`` variants (and the optimizer aliases, built with ``chain.flat``) keep
flat lists. The math is the same either way: every test compares the tree form against the
flat one on the same numbers, and one against ``torch.optim.Adam``.
"""

from __future__ import annotations

import inspect
import io
import pickle

import optree
import pytest
import torch

import torchopt
from torchopt import transform as T

#: The TorchOpt 0.7 factories with per-leaf state, and arguments where they need some.
UPSTREAM_STATEFUL = {
    'scale_by_accelerated_adam': (),
    'scale_by_adadelta': (),
    'scale_by_adam': (),
    'scale_by_adamax': (),
    'scale_by_radam': (),
    'scale_by_rms': (),
    'scale_by_rss': (),
    'scale_by_schedule': (torchopt.schedule.linear_schedule(0.1, 0.01, 3),),
    'scale_by_stddev': (),
    'trace': (),
}
#: Every 0.7 factory that upstream gives ``.flat`` and ``.impl`` (all but ``nan_to_num``).
UPSTREAM_WITH_FLAT = (
    *UPSTREAM_STATEFUL,
    'add_decayed_weights',
    'masked',
    'scale',
)


def _params() -> dict:
    torch.manual_seed(0)
    return {
        'w': torch.randn(3, 2, dtype=torch.float64),
        'sub': {'b': torch.randn(2, dtype=torch.float64), 'c': torch.randn(2, 2).double()},
    }


def _grads(params: dict, k: int) -> dict:
    torch.manual_seed(100 + k)
    return optree.tree_map(torch.randn_like, params)


def _fields(state: object) -> dict:
    return dict(zip(state._fields, state))  # type: ignore[attr-defined]


def _run(t: torchopt.base.GradientTransformation, flat: bool, steps: int) -> tuple:
    """``steps`` updates on ``_params()``, as the tree or as its list of leaves (``flat``)."""
    params: object = _params()
    if flat:
        params = optree.tree_leaves(params)
    state = t.init(params)
    states, updates = [state], []
    for k in range(steps):
        grads = _grads(_params(), k)
        u, state = t.update(optree.tree_leaves(grads) if flat else grads, state, params=params,
                            inplace=False)  # fmt: skip
        updates.append(u)
        states.append(state)
    return updates, states


@pytest.mark.parametrize('name', sorted(UPSTREAM_STATEFUL))
def test_state_is_shaped_like_the_params_and_holds_the_flat_numbers(name):
    params = _params()
    leaves = optree.tree_leaves(params)
    factory = getattr(T, name)
    tree_updates, tree_states = _run(factory(*UPSTREAM_STATEFUL[name]), False, 3)
    flat_updates, flat_states = _run(factory.flat(*UPSTREAM_STATEFUL[name]), True, 3)
    spec = optree.tree_structure(params)
    for tree_state, flat_state in zip(tree_states, flat_states):
        assert type(tree_state) is type(flat_state)
        for field, value in _fields(tree_state).items():
            assert optree.tree_structure(value) == spec, (name, field)
            flat_value = getattr(flat_state, field)
            assert isinstance(flat_value, list) and len(flat_value) == len(leaves)
            for a, b in zip(optree.tree_leaves(value), flat_value):
                assert torch.equal(a, b), (name, field)
    for tu, fu in zip(tree_updates, flat_updates):
        for a, b in zip(optree.tree_leaves(tu), fu):
            assert torch.equal(a, b)


def test_every_stateful_factory_returns_a_tree_shaped_state():
    """The whole transform namespace, not only 0.7's: optax's states are tree-shaped too."""
    params = _params()
    spec = optree.tree_structure(params)
    needs = {
        'scale_by_schedule': (torchopt.schedule.linear_schedule(0.1, 0.01, 3),),
        'ema': (0.9,),
        'add_noise': (0.1, 0.5, 0),
    }
    seen = 0
    for name in T.__all__:
        factory = getattr(T, name)
        if not inspect.isfunction(factory):
            continue
        try:
            t = factory(*needs.get(name, ()))
        except TypeError:  # a wrapper that needs an inner transformation
            continue
        if not getattr(t, 'tree_state', False):
            continue
        params = {'w': torch.randn(3, 2).double(), 'sub': {'c': torch.randn(2, 2).double()}}
        spec = optree.tree_structure(params)
        state = t.init(params)
        per_leaf = {f: v for f, v in _fields(state).items() if not isinstance(v, torch.Tensor)}
        assert per_leaf, name
        for field, value in per_leaf.items():
            assert optree.tree_structure(value) == spec, (name, field)
        _, state = t.update(optree.tree_map(torch.ones_like, params), state, params=params)
        for field in per_leaf:
            assert optree.tree_structure(getattr(state, field)) == spec, (name, field)
        seen += 1
    assert seen >= 20  # the count guards against the loop silently matching nothing


def test_a_tree_level_chain_matches_torch_optim_adam(float64_default):
    params = _params()
    t = torchopt.chain(T.scale_by_adam(b1=0.8, b2=0.95, eps=1e-6), T.scale(-0.05))
    state = t.init(params)
    ref = [p.clone().requires_grad_() for p in optree.tree_leaves(params)]
    opt = torch.optim.Adam(ref, lr=0.05, betas=(0.8, 0.95), eps=1e-6, foreach=False)
    for k in range(5):
        grads = _grads(params, k)
        for r, g in zip(ref, optree.tree_leaves(grads)):
            r.grad = g.clone()  # before the in-place update writes into ``grads``
        opt.step()
        updates, state = t.update(grads, state, params=params)
        params = torchopt.apply_updates(params, updates)
    for p, r in zip(optree.tree_leaves(params), ref):
        torch.testing.assert_close(p, r.detach(), rtol=1e-12, atol=1e-14)
    assert set(state[0].mu) == {'w', 'sub'} and set(state[0].mu['sub']) == {'b', 'c'}
    for p, r in zip(optree.tree_leaves(state[0].mu), ref):
        torch.testing.assert_close(p, opt.state[r]['exp_avg'], rtol=1e-12, atol=1e-14)


def test_flat_sequences_and_aliases_keep_flat_lists():
    """Lists and tuples of leaves (the classes' and MetaOptimizer's form), and chain.flat."""
    leaves = optree.tree_leaves(_params())
    for params in (leaves, tuple(leaves)):
        assert isinstance(T.scale_by_adam().init(params).mu, list)
    assert isinstance(torchopt.adam().init(_params())[0].mu, list)  # the documented alias layout
    assert isinstance(torchopt.chain.flat(T.scale_by_adam()).init(_params())[0].mu, list)
    single = torch.zeros(3)  # one bare leaf: a list, so a tensor field stays distinguishable
    assert isinstance(T.scale_by_adam().init(single).mu, list)


def test_flat_and_impl_attributes():
    for name in UPSTREAM_WITH_FLAT:
        factory = getattr(T, name)
        assert callable(factory.flat) and callable(factory.impl), name
    assert not hasattr(T.nan_to_num, 'flat')  # as upstream
    params = _params()
    assert isinstance(T.scale_by_rms.impl(already_flattened=True).init(params).nu, list)
    assert isinstance(T.scale_by_rms.impl(already_flattened=False).init(params).nu, dict)
    assert isinstance(T.scale_by_rms.impl().init(params).nu, dict)
    assert T.trace.flat(momentum=0.0) == torchopt.base.identity()  # a trace without momentum
    assert T.scale_by_adam.flat.__doc__ == T.scale_by_adam.__doc__


def test_a_flat_state_from_an_older_version_is_still_accepted():
    params = _params()
    leaves = optree.tree_leaves(params)
    t = T.scale_by_adam()
    old = T.scale_by_adam.flat().init(leaves)  # what init returned before states were trees
    updates, state = t.update(_grads(params, 0), old, params=params, inplace=False)
    expected, _ = t.update(_grads(params, 0), t.init(params), params=params, inplace=False)
    assert isinstance(state.mu, dict)
    for a, b in zip(optree.tree_leaves(updates), optree.tree_leaves(expected)):
        assert torch.equal(a, b)


def test_a_malformed_tree_state_names_the_field():
    params = _params()
    t = T.scale_by_adam()
    state = t.init(params)
    with pytest.raises(ValueError, match=r'scale_by_adam: `state\.nu` must be shaped like'):
        t.update(params, state._replace(nu={'w': state.nu['w']}))
    wrong = {**state.mu, 'w': torch.zeros(5)}
    with pytest.raises(ValueError, match=r"leaf 2 \(path \('w',\)\).*state\.mu has shape \(5,\)"):
        t.update(_grads(params, 0), state._replace(mu=wrong))


def test_tree_states_save_and_load_weights_only():
    params = _params()
    t = torchopt.chain(T.scale_by_adam(), T.trace(0.9), T.scale(-0.1))
    _, state = t.update(_grads(params, 0), t.init(params), params=params)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert optree.tree_structure(loaded) == optree.tree_structure(state)
    assert all(torch.equal(a, b) for a, b in zip(optree.tree_leaves(loaded),
                                                 optree.tree_leaves(state)))  # fmt: skip
    again = pickle.loads(pickle.dumps(state))
    u1, _ = t.update(_grads(params, 1), again, params=params, inplace=False)
    u2, _ = t.update(_grads(params, 1), state, params=params, inplace=False)
    assert all(torch.equal(a, b) for a, b in zip(optree.tree_leaves(u1), optree.tree_leaves(u2)))


def test_inplace_updates_keep_the_state_tensors():
    """In place, the tree form holds the same tensor objects the step wrote into."""
    params = _params()
    t = T.scale_by_adam()
    state = t.init(params)
    mu = state.mu['sub']['c']
    _, new = t.update(_grads(params, 0), state, params=params)
    assert new.mu['sub']['c'] is mu and not torch.equal(mu, torch.zeros_like(mu))


def test_optimizer_classes_with_a_tree_level_chain_keep_torch_style_state():
    ps = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))]
    opt = torchopt.Optimizer(ps, torchopt.chain(T.scale_by_adam(), T.scale(-0.1)))
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    assert isinstance(opt.state_groups[0][0].mu, list)
    sd = opt.state_dict()
    assert sd['state'] and set(sd['state']) == {0, 1}


def test_tree_states_under_vmap_and_compile():
    """``vmap`` over init and update, and one graph under ``torch.compile(fullgraph=True)``."""
    from torch._dynamo.testing import CompileCounter

    t = torchopt.chain(T.scale_by_adam(), T.trace(0.9), T.scale(-0.1))

    def step(p: dict, s: tuple, g: dict) -> tuple:
        u, s = t.update(g, s, params=p, inplace=False)
        return torchopt.apply_updates(p, u, inplace=False), s

    batch = {'w': torch.randn(4, 3, dtype=torch.float64), 'b': torch.randn(4, 2).double()}
    grads = optree.tree_map(torch.randn_like, batch)
    new, states = torch.func.vmap(step)(batch, torch.func.vmap(t.init)(batch), grads)
    assert set(states[0].mu) == {'w', 'b'}
    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for i in range(4):
        p = {k: v[i] for k, v in batch.items()}
        g = {k: v[i] for k, v in grads.items()}
        expected, expected_state = step(p, t.init(p), g)
        got, got_state = compiled(p, t.init(p), g)
        assert optree.tree_structure(got_state) == optree.tree_structure(expected_state)
        for a, b, c in zip(optree.tree_leaves(got), optree.tree_leaves(expected),
                           optree.tree_leaves({k: v[i] for k, v in new.items()})):  # fmt: skip
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(c, b, rtol=1e-12, atol=1e-14)
    assert counter.frame_count == 1


def test_nested_list_params_get_nested_lists_and_flat_lists_still_load():
    """``[[w1, b1], [w2]]``: the state is a list of lists; a flat list of 3 is still taken."""
    torch.manual_seed(0)
    params = [[torch.randn(2, 2).double(), torch.randn(2).double()], [torch.randn(3).double()]]
    grads = optree.tree_map(torch.randn_like, params)
    t = T.scale_by_adam()
    state = t.init(params)
    assert optree.tree_structure(state.mu) == optree.tree_structure(params)
    tree_u, tree_s = t.update(grads, state, params=params, inplace=False)
    flat_u, flat_s = t.update(grads, T.scale_by_adam.flat().init(optree.tree_leaves(params)),
                              params=params, inplace=False)  # fmt: skip
    assert optree.tree_structure(flat_s.mu) == optree.tree_structure(params)
    for a, b in zip(optree.tree_leaves((tree_u, tree_s)), optree.tree_leaves((flat_u, flat_s))):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r'`state\.mu` must be shaped like'):
        t.update(grads, tree_s._replace(mu=tree_s.mu[:1]), params=params)


@pytest.mark.parametrize('callable_mask', [False, True])
def test_masked_inner_states_hold_masked_nodes_where_the_mask_is_false(callable_mask):
    """TorchOpt 0.7: ``masked(scale_by_adam(), mask).init(p).inner_state.mu['b']`` is a
    ``MaskedNode()``; the numbers are those of the flat form, and it saves and loads."""
    params = _params()
    tree_mask = {'w': True, 'sub': {'b': False, 'c': True}}
    mask = (lambda p: tree_mask) if callable_mask else tree_mask
    t = T.masked(T.scale_by_adam(), mask)
    flat = T.masked.flat(T.scale_by_adam(), mask)
    state, flat_state = t.init(params), flat.init(params)
    assert state.inner_state.mu['sub']['b'] == T.MaskedNode()
    assert isinstance(flat_state.inner_state.mu, list) and len(flat_state.inner_state.mu) == 2
    for k in range(3):
        grads = _grads(params, k)
        u, state = t.update(grads, state, params=params, inplace=False)
        fu, flat_state = flat.update(grads, flat_state, params=params, inplace=False)
        for a, b in zip(optree.tree_leaves(u), optree.tree_leaves(fu)):
            assert torch.equal(a, b)
        assert torch.equal(u['sub']['b'], grads['sub']['b'])  # left alone
    for field in ('mu', 'nu', 'count'):
        tree_value = getattr(state.inner_state, field)
        assert tree_value['sub']['b'] == T.MaskedNode()
        kept = [tree_value['sub']['c'], tree_value['w']]  # the masked-in leaves, in leaf order
        assert all(torch.equal(a, b) for a, b in zip(kept, getattr(flat_state.inner_state, field)))
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded.inner_state.mu['sub']['b'] == T.MaskedNode()
    u1, _ = t.update(_grads(params, 5), loaded, params=params, inplace=False)
    u2, _ = flat.update(_grads(params, 5), flat_state, params=params, inplace=False)
    assert all(torch.equal(a, b) for a, b in zip(optree.tree_leaves(u1), optree.tree_leaves(u2)))
    with pytest.raises(ValueError, match=r'`state\.mu` must be shaped like'):
        t.update(_grads(params, 6), loaded._replace(inner_state=loaded.inner_state._replace(
            mu={'w': loaded.inner_state.mu['w']})), params=params)  # fmt: skip
