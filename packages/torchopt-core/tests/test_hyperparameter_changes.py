"""Hyper-parameters changed between steps, as ``torch.optim`` takes them (float64, 1e-12).

A change of ``weight_decay``, ``maximize`` or ``momentum`` adds or drops a member of the
optimizer's chain (``OneCycleLR`` sets an SGD's momentum; a checkpoint brings its own
hyper-parameters). ``torch.optim`` keeps every buffer and creates missing ones at the next step;
the rebuilt chain keeps the state of its unchanged members and starts the new ones.
"""

from __future__ import annotations

import pytest
import torch
from optimizer_table import init_params, loss, max_err
from torch.optim import lr_scheduler

import torchopt

pytestmark = pytest.mark.usefixtures('float64_default')

TOL = 1e-12
# (torchopt class, torch.optim class, constructor kwargs, change made before step 4)
CHANGES = {
    'SGD-momentum-on': (torchopt.SGD, torch.optim.SGD, dict(lr=0.1), dict(momentum=0.9)),
    'SGD-momentum-off': (torchopt.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9),
                         dict(momentum=0.0)),
    'SGD-nesterov-on': (torchopt.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9),
                        dict(nesterov=True)),
    'SGD-decay-maximize': (torchopt.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.5),
                           dict(weight_decay=0.1, maximize=True)),
    'Adam-decay-on': (torchopt.Adam, torch.optim.Adam, dict(lr=0.1), dict(weight_decay=0.1)),
    'Adam-maximize': (torchopt.Adam, torch.optim.Adam, dict(lr=0.1), dict(maximize=True)),
    'AdamW-decay-off': (torchopt.AdamW, torch.optim.AdamW, dict(lr=0.1),
                        dict(weight_decay=0.0)),
    'Adagrad-decay-on': (torchopt.AdaGrad, torch.optim.Adagrad, dict(lr=0.1),
                         dict(weight_decay=0.1)),
    'RMSprop-decay-on': (torchopt.RMSProp, torch.optim.RMSprop, dict(lr=0.01),
                         dict(weight_decay=0.1)),
    # changes of the state's types: the buffers move by their torch.optim names
    'SGD-dampening-on': (torchopt.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9),
                         dict(dampening=0.2)),
    'SGD-dampening-off': (torchopt.SGD, torch.optim.SGD,
                          dict(lr=0.1, momentum=0.9, dampening=0.2), dict(dampening=0.0)),
    'Adam-amsgrad-off': (torchopt.Adam, torch.optim.Adam, dict(lr=0.1, amsgrad=True),
                         dict(amsgrad=False)),
    'AdamW-amsgrad-off': (torchopt.AdamW, torch.optim.AdamW, dict(lr=0.1, amsgrad=True),
                          dict(amsgrad=False)),
    'RMSprop-centered-off': (torchopt.RMSProp, torch.optim.RMSprop,
                             dict(lr=0.01, centered=True, momentum=0.5),
                             dict(centered=False, momentum=0.0)),
}  # fmt: skip

# Switched off, then on again: torch.optim keeps the buffer meanwhile and uses it again.
OFF_AND_ON = {
    'SGD-momentum': (torchopt.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9),
                     dict(momentum=0.0), dict(momentum=0.9)),
    'SGD-momentum-dampened': (torchopt.SGD, torch.optim.SGD,
                              dict(lr=0.1, momentum=0.9, dampening=0.3),
                              dict(momentum=0.0), dict(momentum=0.5)),
    'Adam-amsgrad': (torchopt.Adam, torch.optim.Adam, dict(lr=0.1, amsgrad=True),
                     dict(amsgrad=False), dict(amsgrad=True)),
    'RMSprop-momentum-centered': (torchopt.RMSProp, torch.optim.RMSprop,
                                  dict(lr=0.01, momentum=0.9, centered=True),
                                  dict(momentum=0.0, centered=False),
                                  dict(momentum=0.5, centered=True)),
}  # fmt: skip


def _train(make, change=None, at=3, steps=8, scheduler=None, resume=None):
    """``steps`` steps; ``change`` before step ``at`` (or ``{step: change}``); ``resume``: before
    step 5, a new optimizer (``resume(params)``) loads the checkpoint and takes over."""
    params = [p.detach().clone().requires_grad_() for p in init_params(0)]
    opt = make(params)
    changes = change if isinstance(change, dict) and all(type(k) is int for k in change) else {}
    if change and not changes:
        changes = {at: change}
    sched = None
    for k in range(steps):
        if k == 5 and resume is not None:
            resumed = resume(params)
            resumed.load_state_dict(opt.state_dict())
            opt = resumed
        if k in changes:
            opt.param_groups[0].update(changes[k])
        opt.zero_grad()
        loss(params).backward()
        opt.step()
        if sched is not None:
            sched.step()
        elif scheduler is not None:  # attached after the first step
            sched = scheduler(opt)
    return [p.detach() for p in params]


@pytest.mark.parametrize('name', list(CHANGES))
def test_a_change_that_adds_or_drops_a_member_continues_as_torch_optim(name):
    ours, theirs, kwargs, change = CHANGES[name]
    want = _train(lambda ps: theirs(ps, **kwargs), change)
    got = _train(lambda ps: ours(ps, **kwargs), change)
    assert max_err(got, want) <= TOL


def test_one_cycle_lr_turns_on_the_momentum_of_a_plain_sgd():
    """``OneCycleLR`` (``cycle_momentum=True``), attached after a first step, writes a momentum
    into an SGD built without one."""

    def one_cycle(opt):
        return lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)

    want = _train(lambda ps: torch.optim.SGD(ps, lr=0.1), scheduler=one_cycle, steps=9)
    got = _train(lambda ps: torchopt.SGD(ps, lr=0.1), scheduler=one_cycle, steps=9)
    assert max_err(got, want) <= TOL


@pytest.mark.parametrize(
    ('ours', 'theirs', 'saved_kwargs'),
    [
        (torchopt.Adam, torch.optim.Adam, dict(weight_decay=0.1)),
        (torchopt.SGD, torch.optim.SGD, dict(momentum=0.9)),
        (torchopt.SGD, torch.optim.SGD, dict(momentum=0.9, weight_decay=0.1, maximize=True)),
    ],
    ids=['Adam-decay', 'SGD-momentum', 'SGD-all'],
)
def test_a_checkpoint_brings_its_hyper_parameters(ours, theirs, saved_kwargs):
    """A ``torch.optim`` checkpoint loads into a class built with other hyper-parameters."""

    def resumed(into_ours):
        params = [p.detach().clone().requires_grad_() for p in init_params(1)]
        opt = theirs(params, lr=0.1, **saved_kwargs)
        for _ in range(3):
            opt.zero_grad()
            loss(params).backward()
            opt.step()
        if into_ours:
            resumed_opt = ours(params, lr=0.1)
            resumed_opt.load_state_dict(opt.state_dict())
            opt = resumed_opt
        for _ in range(3):
            opt.zero_grad()
            loss(params).backward()
            opt.step()
        return [p.detach() for p in params]

    assert max_err(resumed(True), resumed(False)) <= TOL


@pytest.mark.parametrize('name', list(OFF_AND_ON))
def test_a_buffer_switched_off_is_kept_and_used_again(name):
    ours, theirs, kwargs, off, on = OFF_AND_ON[name]
    changes = {3: off, 6: on}
    want = _train(lambda ps: theirs(ps, **kwargs), changes, steps=9)
    got = _train(lambda ps: ours(ps, **kwargs), changes, steps=9)
    assert max_err(got, want) <= TOL


@pytest.mark.parametrize('direction', ['torch->torchopt', 'torchopt->torch'])
@pytest.mark.parametrize('name', list(OFF_AND_ON))
def test_a_kept_buffer_is_in_the_state_and_its_checkpoints(name, direction):
    """While switched off, ``opt.state[p]`` and ``state_dict()`` hold the kept buffer, as
    ``torch.optim``'s do; the checkpoint taken then resumes in the other library."""
    ours, theirs, kwargs, off, on = OFF_AND_ON[name]
    first, then = (theirs, ours) if direction == 'torch->torchopt' else (ours, theirs)
    changes = {3: off, 6: on}
    want = _train(lambda ps: theirs(ps, **kwargs), changes, steps=9)
    got = _train(lambda ps: first(ps, **kwargs), changes, steps=9,
                 resume=lambda ps: then(ps, **kwargs))  # fmt: skip
    assert max_err(got, want) <= TOL

    def switched_off(cls):
        params = [p.detach().clone().requires_grad_() for p in init_params(0)]
        opt = cls(params, **kwargs)
        for k in range(4):
            if k == 3:
                opt.param_groups[0].update(off)
            opt.zero_grad()
            loss(params).backward()
            opt.step()
        return opt, params

    (opt, params), (ref, ref_params) = switched_off(ours), switched_off(theirs)
    for p, q in zip(params, ref_params):
        assert sorted(opt.state[p]) == sorted(ref.state[q])
        for key, value in ref.state[q].items():
            if key == 'step' and theirs is torch.optim.RMSprop:
                continue  # not counted by torchopt.RMSProp's state: written as 1 (migration.md)
            assert torch.allclose(opt.state[p][key].double(), value.double(), atol=TOL, rtol=0)
    assert sorted(opt.state_dict()['state'][0]) == sorted(ref.state_dict()['state'][0])


def test_another_optimizers_kept_buffer_stays_refused():
    """Only the buffers a class keeps for its own switches are kept: ``torchopt.Adam`` refuses
    a momentum buffer, ``torchopt.SGD`` a ``max_exp_avg_sq``."""
    params = [p.detach().clone().requires_grad_() for p in init_params(0)]
    adam, sgd = torchopt.Adam(params, amsgrad=True), torchopt.SGD(params, lr=0.1, momentum=0.9)
    for opt in (adam, sgd):
        opt.zero_grad()
        loss(params).backward()
        opt.step()
    with pytest.raises(ValueError, match=r"unexpected state keys \['momentum_buffer'\]"):
        adam.state[params[0]]['momentum_buffer'] = torch.zeros_like(params[0])
    saved = sgd.state_dict()
    entry = {**saved['state'][0], 'max_exp_avg_sq': torch.zeros_like(params[0])}
    with pytest.raises(ValueError, match=r"unexpected state keys \['max_exp_avg_sq'\]"):
        sgd.load_state_dict({**saved, 'state': {**saved['state'], 0: entry}})
