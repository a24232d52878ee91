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
}  # fmt: skip


def _train(make, change=None, at=3, steps=8, scheduler=None):
    params = [p.detach().clone().requires_grad_() for p in init_params(0)]
    opt = make(params)
    sched = None
    for k in range(steps):
        if k == at and change:
            opt.param_groups[0].update(change)
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
