"""Bad input gets a clear error naming the argument, and nothing the user passed is changed."""

from __future__ import annotations

import pytest
import torch

import torchopt


@pytest.mark.parametrize(
    ('factory', 'match'),
    [
        (lambda: torchopt.adam(lr=-1.0), 'learning rate'),
        (lambda: torchopt.adam(eps=-1e-8), 'epsilon'),
        (lambda: torchopt.adam(weight_decay=-0.1), 'weight_decay'),
        (lambda: torchopt.adam(betas=(1.0, 0.999)), 'beta parameter at index 0'),
        (lambda: torchopt.adam(betas=(0.9, -0.1)), 'beta parameter at index 1'),
        (lambda: torchopt.adamw(weight_decay=-1.0), 'weight_decay'),
        (lambda: torchopt.sgd(lr=-0.1), 'learning rate'),
        (lambda: torchopt.sgd(lr=0.1, momentum=-0.9), 'momentum'),
        (lambda: torchopt.sgd(lr=0.1, nesterov=True), 'Nesterov'),
        (lambda: torchopt.sgd(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), 'Nesterov'),
        (lambda: torchopt.rmsprop(alpha=1.5), 'alpha'),
        (lambda: torchopt.adagrad(lr_decay=-1.0), 'lr_decay'),
        (lambda: torchopt.adadelta(rho=1.0), 'rho'),
        (lambda: torchopt.radam(eps=-1.0), 'epsilon'),
        (lambda: torchopt.adamax(betas=(0.9, 1.0)), 'beta parameter at index 1'),
        (lambda: torchopt.clip_grad_norm(-1.0), 'max_norm'),
    ],
)
def test_bad_hyper_parameters_raise_value_error(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_betas_must_be_a_pair():
    with pytest.raises(TypeError, match='betas'):
        torchopt.adam(betas=0.9)


def test_lr_of_wrong_type():
    with pytest.raises(TypeError, match='learning rate'):
        torchopt.sgd(lr='0.1')


def test_optimizer_rejects_non_transformations_and_non_tensors():
    with pytest.raises(TypeError, match='GradientTransformation'):
        torchopt.Optimizer([torch.zeros(1)], impl=lambda x: x)
    with pytest.raises(TypeError, match='`params` must be a tree of tensors'):
        torchopt.SGD([torch.zeros(1), 3.0], lr=0.1)


def test_mismatched_update_and_state_trees_leave_inputs_untouched():
    opt = torchopt.adam(lr=0.1)
    params = {'a': torch.zeros(3), 'b': torch.zeros(2)}
    state = opt.init(params)
    grads = {'a': torch.ones(3)}
    tensors = [t for t in torchopt.pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]
    before = [t.clone() for t in tensors]
    with pytest.raises(ValueError, match='holds 2 tensors'):
        opt.update(grads, state, inplace=True)
    assert torch.equal(grads['a'], torch.ones(3))
    assert all(torch.equal(x, y) for x, y in zip(before, tensors))


def test_params_structure_must_match_updates():
    opt = torchopt.adamw(lr=0.1)
    params = {'a': torch.zeros(3)}
    state = opt.init(params)
    with pytest.raises(ValueError, match='`params` must have the same tree structure'):
        opt.update({'a': torch.ones(3)}, state, params={'b': torch.zeros(3)})


@pytest.mark.parametrize(
    'make',
    [
        lambda: torchopt.adamw(lr=0.1),
        lambda: torchopt.adam(lr=0.1, weight_decay=0.1),
        lambda: torchopt.sgd(lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda: torchopt.rmsprop(lr=0.1, weight_decay=0.1),
        lambda: torchopt.muon(lr=0.1, weight_decay=0.1),
        lambda: torchopt.transform.add_decayed_weights(0.1),
        lambda: torchopt.transform.add_decayed_weights(0.1, mask=(True,)),
        lambda: torchopt.lamb(lr=0.1),
        lambda: torchopt.lars(lr=0.1),
        lambda: torchopt.chain(torchopt.adam(0.1), torchopt.chain(torchopt.adamw(0.1))),
    ],
    ids=[
        'adamw', 'adam-wd', 'sgd-wd', 'rmsprop-wd', 'muon-wd', 'add_decayed_weights', 'masked',
        'lamb', 'lars', 'nested-chain',
    ],
)  # fmt: skip
@pytest.mark.parametrize('error', [AssertionError, ValueError])  # upstream asserted
def test_update_without_needed_params_raises_before_writing(make, error):
    opt = make()
    params = (torch.zeros(2, 2),)
    state = opt.init(params)
    before = [t.clone() for t in torchopt.pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]
    grads = (torch.ones(2, 2),)
    with pytest.raises(error, match='Parameters are required for weight decay|needs `params`'):
        opt.update(grads, state)
    assert torch.equal(grads[0], torch.ones(2, 2))  # nothing written before the error
    after = [t for t in torchopt.pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]
    assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_state_of_wrong_length_in_chain():
    opt = torchopt.adam()
    with pytest.raises(ValueError, match='number of updates and states'):
        opt.update((torch.ones(1),), ())


def test_apply_updates_structure_mismatch():
    with pytest.raises(ValueError, match='`updates` must have the structure of `params`'):
        torchopt.apply_updates({'a': torch.zeros(1)}, {'b': torch.zeros(1)})


def test_func_optimizer_bad_input():
    opt = torchopt.FuncOptimizer(torchopt.sgd(0.1))
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match='scalar'):
        opt.step(w * 2, (w,))
    with pytest.raises(TypeError, match='tree of tensors'):
        opt.step((w**2).sum(), (w, 'x'))
