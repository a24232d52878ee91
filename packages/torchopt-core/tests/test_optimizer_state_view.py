"""``Optimizer.state`` edited as ``torch.optim`` code edits it, against ``torch.optim`` in float64.

Reset idioms (``opt.state = defaultdict(dict)``, ``opt.state.clear()``, ``del opt.state[p]``,
``opt.state.pop(p)``), in-place edits of a buffer, and assignments of buffers and whole entries
are applied to ``torch.optim`` and to the torch-like class at the same step; the two must then go
on to the same parameters (<= 1e-12) and show the same state. Bad edits raise and change nothing.
"""

from __future__ import annotations

import collections

import pytest
import torch
from optimizer_table import CASES, EXTRA, loss, max_err, row_params, rows

import torchopt

STEPS, AT = 8, 3
UNCOUNTED = ('RMSprop', 'Adadelta')

# torch.optim keeps some scalars in the default dtype (conftest.float64_default)
pytestmark = pytest.mark.usefixtures('float64_default')


def _shaped(opt, p):
    """The names of ``p``'s buffers that have ``p``'s shape (moments, traces)."""
    return sorted(k for k, v in opt.state[p].items() if v.shape == p.shape)


def _clear(opt, ps):
    opt.state.clear()


def _assign_empty(opt, ps):
    opt.state = collections.defaultdict(dict)


def _del_one(opt, ps):
    if ps[1] in opt.state:  # del of a parameter without state is a KeyError, as for a dict
        del opt.state[ps[1]]


def _scale_in_place(opt, ps):
    for name in _shaped(opt, ps[0]):
        opt.state[ps[0]][name].mul_(0.5)


def _assign_buffers(opt, ps):
    for name in _shaped(opt, ps[0]):
        opt.state[ps[0]][name] = torch.full_like(ps[0], 0.25)


def _assign_entry(opt, ps):
    entry = dict(opt.state[ps[2]])
    opt.state[ps[2]] = {
        k: v * 0.5 if v.shape == ps[2].shape and k != 'step' else v.clone()
        for k, v in entry.items()
    }


def _assign_step(opt, ps):
    opt.state[ps[0]]['step'] = torch.tensor(10.0)


ACTIONS = {
    'clear': _clear,
    'assign-empty': _assign_empty,
    'del-one': _del_one,
    'scale-in-place': _scale_in_place,
    'assign-buffers': _assign_buffers,
    'assign-entry': _assign_entry,
    'assign-step': _assign_step,
}


def _run(make, params, action):
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = make(ps)
    for k in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss(ps).backward()
        opt.step()
        if k == AT:
            action(opt, ps)
    return opt, ps


def _applies(row, action):
    """Whether ``action`` means anything for ``row`` (both libraries keep what it edits)."""
    if action != 'assign-step':
        return True
    # torch.optim.ASGD's eta and mu follow the old step; here they are derived from it
    return 'step' in row.checkpoint and not row.id.startswith('ASGD')


EDITS = [(row, action) for row in CASES for action in sorted(ACTIONS) if _applies(row, action)]


@pytest.mark.parametrize(('row', 'action'), EDITS, ids=[f'{a}-{r.id}' for r, a in EDITS])
def test_state_edits_act_as_in_torch_optim(row, action):
    params = row_params(row, seed=3)
    ref, ref_ps = _run(row.make_torch, params, ACTIONS[action])
    ours, ps = _run(lambda xs: row.cls(xs, **row.kwargs), params, ACTIONS[action])
    assert max_err(ps, ref_ps) <= row.tol
    for p, q in zip(ps, ref_ps):
        _assert_same_entry(row, ours.state[p], ref.state[q])


def _assert_same_entry(row, ours, ref):
    assert sorted(ours) == sorted(ref)
    for name, value in ref.items():
        if name == 'step' and row.id.startswith(UNCOUNTED):
            continue  # TorchOpt 0.7's RMSProp/Adadelta states count nothing: step reads 1
        assert torch.allclose(ours[name].double(), value.double(), atol=1e-12), name


@rows([row for row in CASES if row.checkpoint])  # (plain SGD keeps no state to pop)
def test_pop_returns_the_old_buffers_and_resets(row):
    params = row_params(row, seed=4)
    popped = {}
    for label, make in (('torch', row.make_torch), ('ours', lambda xs: row.cls(xs, **row.kwargs))):
        opt, ps = _run(make, params, lambda o, ps, label=label: popped.__setitem__(
            label, o.state.pop(ps[0])))  # fmt: skip
        popped[label + '-after'] = ps
    _assert_same_entry(row, popped['ours'], popped['torch'])
    assert max_err(popped['ours-after'], popped['torch-after']) <= row.tol


@rows(EXTRA)
def test_clearing_the_state_restarts_the_optimizer(row):
    """Without torch.optim: after ``clear()`` the steps equal a new optimizer's from there."""
    params = row_params(row, seed=5)
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = row.cls(ps, **row.kwargs)

    def steps(o, xs, n):
        for _ in range(n):
            o.zero_grad(set_to_none=True)
            loss(xs).backward()
            o.step()

    steps(opt, ps, 3)
    fresh_ps = [p.detach().clone().requires_grad_() for p in ps]
    fresh = row.cls(fresh_ps, **row.kwargs)
    opt.state.clear()
    assert len(opt.state) == 0
    steps(opt, ps, 4)
    steps(fresh, fresh_ps, 4)
    assert max_err(ps, fresh_ps) == 0.0


def _adam():
    ps = [torch.randn(3, dtype=torch.float64, requires_grad=True), torch.randn(2, 2).double()]
    ps[1].requires_grad_()
    opt = torchopt.Adam(ps, lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        loss(ps).backward()
        opt.step()
    return opt, ps


def _values(opt):
    return {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in opt.state}


def _same(a, b):
    return a.keys() == b.keys() and all(
        a[k].keys() == b[k].keys() and all(torch.equal(a[k][n], b[k][n]) for n in a[k]) for k in a
    )


@pytest.mark.parametrize(
    ('edit', 'error', 'match'),
    [
        (lambda o, ps: o.state[ps[0]].__setitem__('exp_avg', torch.zeros(4)), ValueError,
         r"optimizer.state: .*'exp_avg' of parameter 0 has shape \(4,\), expected \(3,\)"),
        (lambda o, ps: o.state[ps[0]].__setitem__('momentum_buffer', torch.zeros(3)), ValueError,
         r"unexpected state keys \['momentum_buffer'\].*buffer names are reserved"),
        (lambda o, ps: o.state[ps[0]].__delitem__('exp_avg'), TypeError, 'cannot be deleted'),
        (lambda o, ps: setattr(o, 'state', [1]), TypeError, 'expected a mapping'),
        (lambda o, ps: o.state.__setitem__(ps[0], 3), TypeError, 'expected a mapping'),
        (lambda o, ps: setattr(o, 'state', {ps[1]: {}, ps[0]: {'exp_avg': torch.zeros(9)}}),
         ValueError, r'has shape \(9,\)'),
    ],
    ids=['shape', 'other-optimizers-name', 'delete-buffer', 'assign-list',
         'assign-number', 'assign-bad-entry'],
)  # fmt: skip
def test_bad_edits_raise_and_change_nothing(edit, error, match):
    opt, ps = _adam()
    before = _values(opt)
    with pytest.raises(error, match=match):
        edit(opt, ps)
    assert _same(_values(opt), before)


def test_the_view_is_live_and_keeps_the_optimizer_buffers():
    opt, ps = _adam()
    exp_avg = opt.state[ps[0]]['exp_avg']
    assert exp_avg is opt.state_dict()['state'][0]['exp_avg']  # the optimizer's own tensor
    opt.state[ps[0]]['exp_avg'] = torch.ones(3)  # copied in: the same tensor, new values
    assert opt.state[ps[0]]['exp_avg'] is exp_avg and torch.equal(exp_avg, torch.ones(3).double())
    assert ps[0] in opt.state and len(opt.state) == 2
    del opt.state[ps[0]]
    assert ps[0] not in opt.state and list(opt.state) == [ps[1]]
    assert opt.state.pop(ps[0], 'none') == 'none'
    with pytest.raises(KeyError, match='no state yet'):
        opt.state.pop(ps[0])
