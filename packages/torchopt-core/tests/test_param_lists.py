"""Parameters given with names, and param lists edited between steps, as ``torch.optim`` takes them.

``torch.optim`` (2.5 and later) takes ``model.named_parameters()`` and keeps the names in each
group's ``'param_names'``; and since it keys its state by tensor, code that appends to
``opt.param_groups[i]['params']`` (a layer unfrozen in place) gets a fresh state for the new
parameters at the next step while the others keep theirs. Every row with a ``torch.optim``
reference, float64, 1e-12.
"""

from __future__ import annotations

import pytest
import torch
from optimizer_table import CASES, loss, max_err, row_params, rows

import torchopt

pytestmark = pytest.mark.usefixtures('float64_default')

TOL = 1e-12


def _named(params):
    return [(f'layer{i}.weight', p) for i, p in enumerate(params)]


def _train(make, params, steps=5, edit=None):
    """``steps`` steps of ``make(params)``; ``edit(opt, params)`` before step 2."""
    opt = make(params)
    for k in range(steps):
        if k == 2 and edit is not None:
            edit(opt, params)
        opt.zero_grad()
        loss(params).backward()
        opt.step()
    return [p.detach() for p in params], opt


def _fresh(row, n=3):
    return [p.detach().clone().requires_grad_() for p in row_params(row, 0, n)]


@rows(CASES)
def test_named_parameters_are_taken_and_kept_as_torch_optim(row):
    ours = _fresh(row)
    got, opt = _train(lambda ps: row.cls(_named(ps), **row.kwargs), ours)
    theirs = _fresh(row)
    want, ref = _train(lambda ps: row.make_torch(_named(ps)), theirs)
    assert max_err(got, want) <= TOL
    assert opt.param_groups[0]['param_names'] == ref.param_groups[0]['param_names']
    saved = opt.state_dict()['param_groups'][0]
    assert saved['param_names'] == ref.state_dict()['param_groups'][0]['param_names']


def test_named_groups_and_their_checkpoints_move_both_ways():
    def groups(ps):
        return [{'params': _named(ps[:2]), 'lr': 0.05}, {'params': _named(ps[2:])}]

    for first, then in [(torch.optim.Adam, torchopt.Adam), (torchopt.Adam, torch.optim.Adam)]:
        params = [p.detach().clone().requires_grad_() for p in row_params(CASES[0], 1, 3)]
        opt = first(groups(params), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            loss(params).backward()
            opt.step()
        other = then(groups(params), lr=0.1)
        other.param_groups[0]['param_names'] = ['renamed', 'names']
        other.load_state_dict(opt.state_dict())  # the saved names override, as torch.optim
        assert [g['param_names'] for g in other.param_groups] == [
            ['layer0.weight', 'layer1.weight'],
            ['layer0.weight'],
        ]
        for p in params:
            assert sorted(other.state[p]) == sorted(opt.state[p])


def test_names_on_some_parameters_or_groups_only_are_refused_as_torch_optim():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    for cls in (torch.optim.Adam, torchopt.Adam):
        with pytest.raises(ValueError, match='Some param names are missing'):
            cls([('a', a), b])
        opt = cls([('a', a)])
        with pytest.raises(ValueError, match='cannot add param group without names'):
            opt.add_param_group({'params': [b]})
        opt = cls([a])
        with pytest.raises(ValueError, match='cannot add param group with names'):
            opt.add_param_group({'params': [('b', b)]})


def _append(opt, params):
    opt.param_groups[0]['params'].extend(params[2:])


def _prepend(opt, params):
    opt.param_groups[0]['params'][:0] = params[2:]


def _remove(opt, params):
    del opt.param_groups[0]['params'][0]


def _swap(opt, params):
    opt.param_groups[0]['params'].reverse()


def _replace(opt, params):
    opt.param_groups[0]['params'][0] = params[2]


EDITS = {
    'append': _append,
    'prepend': _prepend,
    'remove': _remove,
    'swap': _swap,
    'replace': _replace,
}


@pytest.mark.parametrize('edit', list(EDITS))
@rows(CASES)
def test_a_param_list_edited_between_steps_continues_as_torch_optim(row, edit):
    """The optimizer starts on the first two of four parameters; before the third step the
    list is edited in place (the other two added, or the first removed)."""

    def run(make):
        params = _fresh(row, 4)
        before = [p.detach().clone() for p in params]
        got, opt = _train(lambda ps: make(ps[:2]), params, edit=EDITS[edit])
        return got, before, opt, params

    got, before, opt, params = run(lambda ps: row.cls(ps, **row.kwargs))
    want, _, ref, ref_params = run(row.make_torch)
    assert max_err(got, want) <= TOL
    if edit in ('remove', 'replace'):
        assert not torch.equal(got[0], before[0])  # stepped before it was removed
    else:
        n = 2 if edit == 'swap' else 4
        assert len(opt.state_dict()['param_groups'][0]['params']) == n
    for p, q in zip(params, ref_params):  # the parameters optimized now have torch's buffers
        if any(q is r for r in ref.param_groups[0]['params']):
            assert sorted(opt.state[p]) == sorted(ref.state[q]), row.id


def test_the_state_view_and_checkpoint_follow_an_edit_before_the_next_step():
    params = [p.detach().clone().requires_grad_() for p in row_params(CASES[0], 2, 4)]
    opt = torchopt.Adam(params[:2], lr=0.1)
    opt.zero_grad()
    loss(params).backward()
    opt.step()
    exp_avg = opt.state[params[0]]['exp_avg']
    opt.param_groups[0]['params'].append(params[2])
    assert opt.state[params[0]]['exp_avg'] is exp_avg  # kept by reference
    assert dict(opt.state[params[2]]) == {}  # no state before its first step, as torch.optim
    assert sorted(opt.state_dict()['state']) == [0, 1]


def test_a_generic_chain_follows_an_appended_parameter():
    """``Optimizer(params, impl)``: the same for a transformation the classes do not build."""

    def run(append_at):
        params = [p.detach().clone().requires_grad_() for p in row_params(CASES[0], 3, 3)]
        impl = torchopt.chain(torchopt.clip_grad_norm(1e9), torchopt.adam(0.1))
        opt = torchopt.Optimizer(params[:2] if append_at else params, impl)
        for k in range(5):
            if append_at is not None and k == append_at:
                opt.param_groups[0]['params'].append(params[2])
            opt.zero_grad()
            loss(params).backward()
            opt.step()
        return [p.detach() for p in params]

    ref = [p.detach().clone().requires_grad_() for p in row_params(CASES[0], 3, 3)]
    torch_opt = torch.optim.Adam(ref[:2], lr=0.1)
    for k in range(5):
        if k == 2:
            torch_opt.param_groups[0]['params'].append(ref[2])
        torch_opt.zero_grad()
        loss(ref).backward()
        torch_opt.step()
    assert max_err(run(2), [p.detach() for p in ref]) <= TOL


@rows(CASES)
def test_a_parameter_repeated_in_a_group_is_kept_once_with_a_warning(row):
    """TorchOpt 0.7 took ``[a, b, a]``; torch.optim warns. Each tensor is stepped once.

    The reference is ``torch.optim`` with every tensor passed once: a repeated entry adds
    nothing, so the step is the one the user gets without the repeat.
    """
    ours = _fresh(row)
    with pytest.warns(UserWarning, match='duplicate parameters: torchopt keeps each once'):
        opt = row.cls([ours[0], ours[1], ours[0], ours[2], ours[1]], **row.kwargs)
    assert [id(p) for p in opt.param_groups[0]['params']] == [id(p) for p in ours]
    got, _ = _train(lambda ps: opt, ours)
    want, _ = _train(row.make_torch, _fresh(row))
    assert max_err(got, want) <= TOL


def test_repeated_named_parameters_keep_the_first_name_and_groups_still_may_not_share():
    a, b = (torch.zeros(2, requires_grad=True) for _ in range(2))
    with pytest.warns(UserWarning, match='duplicate parameters'):
        opt = torchopt.Adam([('a', a), ('b', b), ('again', a)])
    assert opt.param_groups[0]['param_names'] == ['a', 'b']
    assert len(opt.state_dict()['param_groups'][0]['params']) == 2
    with pytest.raises(ValueError, match='more than one parameter group'):
        opt.add_param_group({'params': [('b', b)]})
    with pytest.raises(ValueError, match='more than one parameter group'):
        torchopt.SGD([{'params': [a]}, {'params': [b, a]}], lr=0.1)
