"""The optimizers of issue #20: what the table's suites cannot show, and differentiability.

Parity (torch.optim to 1e-12, the optax-rule references of ``optimizer_references`` to 1e-10),
missing gradients, ``vmap`` and pure states run over every row of ``optimizer_table`` in
``test_parity_torch_optim.py`` and ``test_engine.py``, shape checks in ``test_shape_checks.py``.
Here: every row's out-of-place update is differentiable and mutates nothing, and the special
semantics (Muon's matrices, ASGD's averages, Adafactor's factored moments, the defaults).
"""

from __future__ import annotations

import inspect
import math

import optree
import pytest
import torch
from optimizer_table import init_params, row_params, rows
from optimizer_table import loss as _loss

import torchopt


@pytest.fixture(autouse=True)
def _float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _params(name: str, seed: int = 1, n: int = 3) -> list[torch.Tensor]:
    return init_params(seed, n, [(5, 3), (3, 7), (4, 4)] if name.startswith('Muon') else None)


def _max_err(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@rows()
def test_out_of_place_is_differentiable_and_never_mutates(row):
    params = [p.clone().requires_grad_() for p in row_params(row, 1)]
    opt = row.fn(**row.kwargs)
    state = opt.init(params)
    for _ in range(2):  # a second step differentiates through a non-trivial state
        grads = list(torch.autograd.grad(_loss(params), params, create_graph=True))
        snapshot = [x.clone() for x in optree.tree_leaves((grads, state, params))]
        inputs = optree.tree_leaves((grads, state, params))
        updates, state = opt.update(grads, state, params=params, inplace=False)
        assert all(torch.equal(a, b) for a, b in zip(snapshot, inputs))
        params = torchopt.apply_updates(params, updates, inplace=False)
    meta = torch.autograd.grad(_loss(params), [p for p in params if p.requires_grad],
                               allow_unused=True)  # fmt: skip
    assert all(m is None or torch.isfinite(m).all() for m in meta)


def test_muon_rejects_non_matrices_naming_the_leaf():
    with pytest.raises(ValueError, match=r'leaf 1.*shape \(3,\)'):
        torchopt.muon().init([torch.ones(2, 2), torch.ones(3)])


def test_asgd_keeps_the_averaged_parameters_like_torch():
    params = [p.clone().requires_grad_() for p in _params('ASGD')]
    ref = torch.optim.ASGD([p.clone().detach().requires_grad_() for p in params], lr=5e-2, t0=3,
                           foreach=False)  # fmt: skip
    ref_params = ref.param_groups[0]['params']
    opt = torchopt.asgd(lr=5e-2, t0=3)
    state = opt.init(params)
    for _ in range(10):
        grads = list(torch.autograd.grad(_loss(params), params))
        updates, state = opt.update(grads, state, params=params)
        torchopt.apply_updates(params, updates)
        ref.zero_grad()
        _loss(ref_params).backward()
        ref.step()
    averages = state[-1].ax
    assert _max_err(averages, [ref.state[p]['ax'] for p in ref_params]) <= 1e-13


def test_adafactor_keeps_factored_moments():
    opt = torchopt.adafactor()
    state = opt.init([torch.zeros(4, 6), torch.zeros(5), torch.zeros(2, 3, 4)])
    sub = state[-1]
    assert [tuple(x.shape) for x in sub.row_var] == [(4, 1), (0,), (2, 3, 1)]
    assert [tuple(x.shape) for x in sub.col_var] == [(1, 6), (0,), (2, 1, 4)]
    assert [tuple(x.shape) for x in sub.variance] == [(0,), (5,), (0,)]


def test_yogi_and_adabelief_defaults_are_optax_defaults():
    for fn, expected in [
        (torchopt.adabelief, dict(betas=(0.9, 0.999), eps=1e-16, eps_root=1e-16)),
        (torchopt.yogi, dict(betas=(0.9, 0.999), eps=1e-3, initial_accumulator_value=1e-6)),
        (torchopt.novograd, dict(betas=(0.9, 0.25), eps=1e-6, eps_root=0.0)),
        (torchopt.adan, dict(betas=(0.98, 0.92, 0.99), eps=1e-8, eps_root=1e-8)),
        (torchopt.lars, dict(trust_coefficient=0.001, momentum=0.9, eps=0.0)),
    ]:
        params = inspect.signature(fn).parameters
        assert {k: params[k].default for k in expected} == expected, fn.__name__


def test_the_torch_defaults_are_torch_optim_defaults():
    def defaults(f, skip=()):
        return {k: v.default for k, v in inspect.signature(f).parameters.items()
                if v.default is not inspect.Parameter.empty and k not in skip}  # fmt: skip

    torch_skip = ('foreach', 'capturable', 'differentiable', 'fused', 'params', 'amsgrad')
    for ours, theirs in [(torchopt.adafactor, torch.optim.Adafactor),
                         (torchopt.rprop, torch.optim.Rprop), (torchopt.asgd, torch.optim.ASGD),
                         (torchopt.muon, torch.optim.Muon)]:  # fmt: skip
        mine = defaults(ours, ('moment_requires_grad',))
        ref = defaults(theirs, torch_skip)
        assert {k: mine[k] for k in ref} == {k: v for k, v in ref.items()}, ours.__name__
    assert math.isclose(inspect.signature(torchopt.amsgrad).parameters['lr'].default, 1e-3)
