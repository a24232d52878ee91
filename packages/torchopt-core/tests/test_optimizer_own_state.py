"""A user's own entries in ``optimizer.state``, as ``torch.optim`` keeps them (float64, 1e-12).

``torch.optim.Optimizer.state`` is a ``defaultdict(dict)``: wrappers such as Lookahead store their
buffers in ``opt.state[p]`` under their own names, and code that walks ``model.parameters()``
reads ``opt.state[q]`` of a parameter the optimizer does not hold. Both raised in torchopt's
classes; the reference here is ``torch.optim`` wrapped the same way.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from optimizer_table import init_params, loss, max_err

import torchopt

pytestmark = pytest.mark.usefixtures('float64_default')

TOL = 1e-12
PAIRS = {
    'Adam': (torchopt.Adam, torch.optim.Adam, dict(lr=0.05)),
    'AdamW': (torchopt.AdamW, torch.optim.AdamW, dict(lr=0.05, weight_decay=0.1)),
    'SGD-momentum': (torchopt.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    'RMSprop': (torchopt.RMSProp, torch.optim.RMSprop, dict(lr=0.01)),
    'Adagrad': (torchopt.AdaGrad, torch.optim.Adagrad, dict(lr=0.05)),
}


class Lookahead:
    """timm's Lookahead, reduced: its slow weights live in the base optimizer's ``state``."""

    def __init__(self, base: torch.optim.Optimizer, alpha: float = 0.5, k: int = 3) -> None:
        self.base = base
        self.param_groups = base.param_groups
        self.defaults = base.defaults
        self.state = base.state
        for group in self.param_groups:
            group.setdefault('lookahead_alpha', alpha)
            group.setdefault('lookahead_k', k)
            group.setdefault('lookahead_step', 0)

    @torch.no_grad()
    def step(self, closure=None):
        out = self.base.step(closure)
        for group in self.param_groups:
            group['lookahead_step'] += 1
            if group['lookahead_step'] % group['lookahead_k']:
                continue
            for p in group['params']:
                state = self.base.state[p]
                if 'slow_buffer' not in state:
                    state['slow_buffer'] = p.clone()
                slow = state['slow_buffer']
                slow.add_(p - slow, alpha=group['lookahead_alpha'])
                p.copy_(slow)
        return out

    def state_dict(self):
        return self.base.state_dict()

    def load_state_dict(self, state_dict):
        self.base.load_state_dict(state_dict)


def _train(make, steps=10, params=None, state_dict=None):
    params = params or [p.detach().clone().requires_grad_() for p in init_params(0)]
    opt = Lookahead(make(params))
    if state_dict is not None:
        opt.load_state_dict(state_dict)
    for _ in range(steps):
        opt.base.zero_grad()
        loss(params).backward()
        opt.step()
    return params, opt


@pytest.mark.parametrize('name', list(PAIRS))
def test_lookahead_over_torchopt_runs_as_over_torch_optim(name):
    ours, theirs, kwargs = PAIRS[name]
    got, opt = _train(lambda ps: ours(ps, **kwargs))
    want, ref = _train(lambda ps: theirs(ps, **kwargs))
    assert max_err(got, want) <= TOL
    saved, ref_saved = opt.state_dict(), ref.state_dict()
    assert saved['state'].keys() == ref_saved['state'].keys()
    for idx, entry in ref_saved['state'].items():
        assert saved['state'][idx].keys() == entry.keys()
        assert (saved['state'][idx]['slow_buffer'] - entry['slow_buffer']).abs().max() <= TOL
    assert saved['param_groups'][0]['lookahead_step'] == 10


def _copies(opt):
    return [p.detach().clone().requires_grad_() for p in opt.param_groups[0]['params']]


@pytest.mark.parametrize('name', list(PAIRS))
def test_own_entries_move_between_torch_optim_and_torchopt_checkpoints(name):
    ours, theirs, kwargs = PAIRS[name]
    _, ref = _train(lambda ps: theirs(ps, **kwargs), steps=6)
    _, opt = _train(lambda ps: ours(ps, **kwargs), steps=6)
    ref_saved, saved = ref.state_dict(), opt.state_dict()
    # torch.optim -> torchopt and torchopt -> torch.optim, then four more steps on both sides
    got, _ = _train(lambda ps: ours(ps, **kwargs), 4, _copies(ref), ref_saved)
    want, _ = _train(lambda ps: theirs(ps, **kwargs), 4, _copies(opt), saved)
    straight, _ = _train(lambda ps: theirs(ps, **kwargs), steps=10)
    assert max_err(got, straight) <= TOL
    assert max_err(want, straight) <= TOL


def _adam(steps=2):
    params = [p.detach().clone().requires_grad_() for p in init_params(0)]
    opt = torchopt.Adam(params, lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        loss(params).backward()
        opt.step()
    return opt, params


def test_an_own_entry_is_kept_by_reference_and_removed_alone():
    opt, ps = _adam()
    slow = torch.zeros_like(ps[0])
    opt.state[ps[0]]['slow'] = slow
    assert opt.state[ps[0]]['slow'] is slow and 'slow' in opt.state[ps[0]]
    assert sorted(opt.state[ps[0]]) == ['exp_avg', 'exp_avg_sq', 'slow', 'step']
    assert list(opt.state[ps[0]])[-1] == 'slow'  # after the buffers
    assert opt.state_dict()['state'][0]['slow'] is slow  # references, as torch.optim's
    opt.state[ps[0]].update(count=3, exp_avg=torch.ones_like(ps[0]))  # buffers copied, own kept
    assert opt.state[ps[0]]['count'] == 3 and torch.equal(opt.state[ps[0]]['exp_avg'],
                                                          torch.ones_like(ps[0]))  # fmt: skip
    del opt.state[ps[0]]['slow']
    assert 'slow' not in opt.state[ps[0]] and 'slow' not in opt.state_dict()['state'][0]
    with pytest.raises(KeyError):
        del opt.state[ps[0]]['slow']
    with pytest.raises(TypeError, match='cannot be deleted'):
        del opt.state[ps[0]]['exp_avg']


def test_an_own_entry_before_the_first_step_leaves_the_step_unchanged():
    opt, ps = _adam(steps=0)
    opt.state[ps[1]]['mask'] = torch.ones_like(ps[1])
    assert ps[1] in opt.state and ps[0] not in opt.state
    assert opt.state_dict()['state'] == {1: {'mask': opt.state[ps[1]]['mask']}}
    for _ in range(3):
        opt.zero_grad()
        loss(ps).backward()
        opt.step()
    ref, ref_ps = _adam(steps=3)
    assert max_err(ps, ref_ps) == 0.0
    assert sorted(opt.state[ps[1]]) == ['exp_avg', 'exp_avg_sq', 'mask', 'step']


def test_resetting_a_parameter_drops_its_own_entries():
    opt, ps = _adam()
    mask = torch.ones_like(ps[0])
    opt.state[ps[0]]['mask'] = mask
    popped = opt.state.pop(ps[0])
    assert popped['mask'] is mask and ps[0] not in opt.state
    opt.state[ps[0]]['mask'] = mask
    del opt.state[ps[0]]
    assert ps[0] not in opt.state
    opt.state[ps[0]] = {'mask': mask}  # only own entries: the buffers start afresh
    assert dict(opt.state[ps[0]]) == {'mask': mask}
    opt.state.clear()
    assert len(opt.state) == 0 and opt.state_dict()['state'] == {}


def test_other_keys_are_a_defaultdict_as_in_torch_optim():
    opt, ps = _adam()
    ref = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    frozen = torch.zeros(3)  # a model's parameter the optimizer does not hold
    for o in (opt, ref):
        assert o.state[frozen] == {} and frozen in o.state
        o.state[frozen]['seen'] = 1
        assert o.state[frozen] == {'seen': 1}
        del o.state[frozen]
        assert frozen not in o.state
    opt.state['global_step'] = 7  # a key that is not a tensor is saved as it is
    saved = opt.state_dict()
    assert saved['state']['global_step'] == 7
    opt.state[frozen] = {'x': 1}
    assert frozen not in [k for k in opt.state_dict()['state'] if isinstance(k, torch.Tensor)]
    fresh, fresh_ps = _adam(steps=0)
    fresh.load_state_dict(saved)
    assert fresh.state['global_step'] == 7


def test_loaded_own_entries_are_copies_on_the_parameters_dtype():
    opt, ps = _adam()
    saved = opt.state_dict()
    slow32 = torch.ones(ps[0].shape, dtype=torch.float32)
    counter = torch.tensor(4)
    saved['state'][0]['slow'] = slow32
    saved['state'][0]['history'] = [slow32, {'count': counter}, 'note']
    fresh, fps = _adam(steps=0)
    fresh.load_state_dict(saved)
    slow = fresh.state[fps[0]]['slow']
    assert slow.dtype == torch.float64 and torch.equal(slow, slow32.double())
    history = fresh.state[fps[0]]['history']
    assert history[0].dtype == torch.float64 and history[2] == 'note'
    assert history[1]['count'].dtype == counter.dtype  # integer tensors keep their dtype
    slow.add_(1.0)
    history[1]['count'].add_(1)
    assert torch.equal(slow32, torch.ones_like(slow32)) and int(counter) == 4  # caller's intact
    fresh.load_state_dict(_adam()[0].state_dict())  # a load replaces the own entries too
    assert 'slow' not in fresh.state[fps[0]]


def test_other_optimizers_buffer_names_stay_reserved():
    opt, ps = _adam()
    saved = opt.state_dict()
    before = {k: v.clone() for k, v in opt.state[ps[0]].items()}
    with pytest.raises(ValueError, match=r"unexpected state keys \['momentum_buffer'\]"):
        opt.state[ps[0]]['momentum_buffer'] = torch.zeros_like(ps[0])
    bad = {**saved, 'state': {**saved['state'], 0: {**saved['state'][0], 'sum': ps[0] * 0}}}
    with pytest.raises(ValueError, match=r"unexpected state keys \['sum'\]"):
        opt.load_state_dict(bad)
    assert all(torch.equal(opt.state[ps[0]][k], v) for k, v in before.items())


@pytest.mark.parametrize('how', ['deepcopy', 'pickle', 'torch.save'])
def test_own_entries_survive_copies_and_checkpoints(how):
    opt, ps = _adam()
    opt.state[ps[0]]['slow'] = ps[0].detach() * 2
    if how == 'deepcopy':
        other = copy.deepcopy(opt)
    elif how == 'pickle':
        other = pickle.loads(pickle.dumps(opt))
    else:
        buf = io.BytesIO()
        torch.save(opt.state_dict(), buf)
        buf.seek(0)
        other, _ = _adam(steps=0)
        other.load_state_dict(torch.load(buf, weights_only=True))
    q = other.param_groups[0]['params'][0]
    assert torch.equal(other.state[q]['slow'], ps[0].detach() * 2)
    assert other.state[q]['slow'] is not opt.state[ps[0]]['slow']


def test_the_parameter_index_follows_the_param_groups():
    opt, ps = _adam()
    extra = torch.zeros(2, requires_grad=True)
    assert opt.state[extra] == {}  # not a parameter yet: a plain dict
    del opt.state[extra]
    opt.add_param_group({'params': [extra]})
    opt.state[extra]['mask'] = torch.ones(2)
    assert opt.state_dict()['state'][len(ps)]['mask'].shape == (2,)
    swapped = torch.zeros(2, requires_grad=True)
    opt.param_groups[1]['params'] = [swapped]  # replaced in place of the other one
    assert 'mask' not in opt.state[swapped]
    opt.state[swapped]['mask'] = torch.zeros(2)
    assert opt.state_dict()['state'][len(ps)]['mask'].sum() == 0
    assert opt.state[extra]['mask'].sum() == 2  # keyed by the tensor, as torch.optim's state
