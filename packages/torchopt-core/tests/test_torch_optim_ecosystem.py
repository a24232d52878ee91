"""The torch-like classes in the torch.optim ecosystem (#17): schedulers, param-group dicts,
torch.optim's state_dict layout, validated loads, hooks — and TorchOpt 0.7 code still working.
"""

from __future__ import annotations

import io

import optree
import pytest
import torch
from optimizer_table import init_params
from optimizer_table import loss as _loss
from torch.optim import lr_scheduler as sched

import torchopt

STEPS = 50
TOL = 1e-12

OPTIMIZERS = {
    'SGD-m': (torchopt.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    'Adam': (torchopt.Adam, torch.optim.Adam, dict(lr=0.05, weight_decay=0.01)),
    'AdamW': (torchopt.AdamW, torch.optim.AdamW, dict(lr=0.05)),
}

SCHEDULERS = {
    'StepLR': lambda o: sched.StepLR(o, step_size=10, gamma=0.5),
    'MultiStepLR': lambda o: sched.MultiStepLR(o, milestones=[10, 30], gamma=0.3),
    'ExponentialLR': lambda o: sched.ExponentialLR(o, gamma=0.95),
    'CosineAnnealingLR': lambda o: sched.CosineAnnealingLR(o, T_max=20, eta_min=1e-3),
    'CosineAnnealingWarmRestarts': lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=10),
    'OneCycleLR': lambda o: sched.OneCycleLR(o, max_lr=0.1, total_steps=STEPS),
    'CyclicLR': lambda o: sched.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=5),
    'LinearLR': lambda o: sched.LinearLR(o, start_factor=0.2, total_iters=20),
    'LambdaLR': lambda o: sched.LambdaLR(o, lambda epoch: 0.97**epoch),
    'SequentialLR': lambda o: sched.SequentialLR(
        o,
        [sched.LinearLR(o, start_factor=0.5, total_iters=10), sched.ExponentialLR(o, 0.9)],
        milestones=[10],
    ),
    'ChainedScheduler': lambda o: sched.ChainedScheduler(
        [sched.StepLR(o, step_size=7, gamma=0.7), sched.ExponentialLR(o, gamma=0.98)]
    ),
    'ReduceLROnPlateau': lambda o: sched.ReduceLROnPlateau(o, factor=0.5, patience=2),
}


@pytest.fixture(autouse=True)
def _float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _train(opt, params, scheduler=None, steps=STEPS, start=0):
    lrs = []
    for k in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        loss = _loss(params) * (1.0 + 0.1 * (k % 3))  # a plateau-free, noisy objective
        loss.backward()
        opt.step()
        lrs.append(float(opt.param_groups[0]['lr']))  # (a tensor lr is filled in place)
        if isinstance(scheduler, sched.ReduceLROnPlateau):
            scheduler.step(float(k % 5))  # a metric that stops improving
        elif scheduler is not None:
            scheduler.step()
    return lrs


def _pair(name, **extra):
    ours_cls, torch_cls, kwargs = OPTIMIZERS[name]
    kwargs = {**kwargs, **extra}
    ours_p = [p.clone().requires_grad_() for p in init_params(5)]
    ref_p = [p.clone().requires_grad_() for p in init_params(5)]
    return ours_cls(ours_p, **kwargs), ours_p, torch_cls(ref_p, foreach=False, **kwargs), ref_p


def _max_err(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize('scheduler', sorted(SCHEDULERS))
@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_every_scheduler_drives_torchopt_like_torch_optim(name, scheduler):
    ours, ours_p, ref, ref_p = _pair(name)
    assert isinstance(ours, torch.optim.Optimizer)
    lrs = _train(ours, ours_p, SCHEDULERS[scheduler](ours))
    ref_lrs = _train(ref, ref_p, SCHEDULERS[scheduler](ref))
    assert lrs == ref_lrs
    assert _max_err(ours_p, ref_p) <= TOL


@pytest.mark.parametrize('scheduler', ['StepLR', 'OneCycleLR', 'CosineAnnealingLR'])
@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_a_tensor_lr_that_schedulers_fill_in_place_is_read_live(name, scheduler):
    """torch.optim's schedulers ``fill_()`` a tensor ``lr`` instead of assigning a new one."""
    ours_cls, torch_cls, kwargs = OPTIMIZERS[name]
    ours_p = [p.clone().requires_grad_() for p in init_params(5)]
    ref_p = [p.clone().requires_grad_() for p in init_params(5)]
    ours = ours_cls(ours_p, **{**kwargs, 'lr': torch.tensor(0.05)})  # one tensor each
    ref = torch_cls(ref_p, foreach=False, **{**kwargs, 'lr': torch.tensor(0.05)})
    ours_lrs = _train(ours, ours_p, SCHEDULERS[scheduler](ours))
    ref_lrs = _train(ref, ref_p, SCHEDULERS[scheduler](ref))
    assert [float(x) for x in ours_lrs] == [float(x) for x in ref_lrs]
    assert len(set(map(float, ours_lrs))) > 2  # the schedule did change it
    assert _max_err(ours_p, ref_p) <= TOL


def test_param_group_dicts_with_their_own_hyper_parameters():
    a, b, c = (p.clone().requires_grad_() for p in init_params(2, n=3))
    ra, rb, rc = (p.clone().requires_grad_() for p in init_params(2, n=3))
    ours = torchopt.Adam([{'params': [a], 'lr': 1e-2}, {'params': [b], 'betas': (0.8, 0.9)}],
                         lr=5e-2)  # fmt: skip
    ref = torch.optim.Adam([{'params': [ra], 'lr': 1e-2}, {'params': [rb], 'betas': (0.8, 0.9)}],
                           lr=5e-2, foreach=False)  # fmt: skip
    ours.add_param_group({'params': [c], 'weight_decay': 0.1})
    ref.add_param_group({'params': [rc], 'weight_decay': 0.1})
    assert [g['lr'] for g in ours.param_groups] == [1e-2, 5e-2, 5e-2]
    for k in range(20):
        if k == 10:  # written between steps: takes effect at the next step, fused path too
            for opt in (ours, ref):
                opt.param_groups[0]['lr'] = 1e-3
                opt.param_groups[1]['betas'] = (0.5, 0.99)
        _train(ours, [a, b, c], steps=1, start=k)
        _train(ref, [ra, rb, rc], steps=1, start=k)
    assert _max_err([a, b, c], [ra, rb, rc]) <= TOL
    with pytest.raises(ValueError, match='more than one parameter group'):
        ours.add_param_group({'params': [a]})
    with pytest.raises(ValueError, match='learning rate'):
        ours.add_param_group({'params': [torch.zeros(2, requires_grad=True)], 'lr': -1.0})


def test_state_dict_uses_torch_optim_names_and_round_trips_weights_only():
    ours, ours_p, _, _ = _pair('Adam')
    _train(ours, ours_p, steps=3)
    sd = ours.state_dict()
    assert sorted(sd['state'][0]) == ['exp_avg', 'exp_avg_sq', 'step']
    assert sd['param_groups'][0]['params'] == [0, 1, 2] and sd['param_groups'][0]['lr'] == 0.05
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    twin_p = [p.detach().clone().requires_grad_() for p in ours_p]
    twin = torchopt.Adam(twin_p, lr=0.05, weight_decay=0.01)
    twin.load_state_dict(loaded)
    _train(ours, ours_p, steps=5, start=3)
    _train(twin, twin_p, steps=5, start=3)
    assert all(torch.equal(a, b) for a, b in zip(ours_p, twin_p))  # bit-identical resume


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
@pytest.mark.parametrize('direction', ['torch->torchopt', 'torchopt->torch'])
def test_checkpoints_move_between_torch_optim_and_torchopt(name, direction):
    ours, ours_p, ref, ref_p = _pair(name)
    reference = [p.detach().clone().requires_grad_() for p in ref_p]
    ref_only = OPTIMIZERS[name][1](reference, foreach=False, **OPTIMIZERS[name][2])
    _train(ref_only, reference, steps=20)  # the run that is never switched
    first, second = (ref, ours) if direction == 'torch->torchopt' else (ours, ref)
    first_p, second_p = (ref_p, ours_p) if direction == 'torch->torchopt' else (ours_p, ref_p)
    _train(first, first_p, steps=10)
    with torch.no_grad():
        for dst, src in zip(second_p, first_p):
            dst.copy_(src)
    second.load_state_dict(first.state_dict())
    _train(second, second_p, steps=10, start=10)
    assert _max_err(second_p, reference) <= TOL


def _snapshot(opt):
    return [t.clone() for t in optree.tree_leaves(opt.state_groups) if isinstance(t, torch.Tensor)]


def _bad_loads():
    good_p = [p.clone().requires_grad_() for p in init_params(5)]
    good = torchopt.Adam(good_p, lr=0.05)
    _train(good, good_p, steps=2)
    sd = good.state_dict()
    other_shapes = torchopt.Adam([torch.zeros(n, requires_grad=True) for n in (2, 3, 4)])
    _train(other_shapes, other_shapes.param_groups[0]['params'], steps=1)
    sgd_p = [p.clone().requires_grad_() for p in init_params(5)]
    sgd = torchopt.SGD(sgd_p, lr=0.1, momentum=0.9)
    _train(sgd, sgd_p, steps=1)
    torch_sgd = torch.optim.SGD([p.detach().clone().requires_grad_() for p in init_params(5)],
                                lr=0.1, momentum=0.9)  # fmt: skip
    for p in torch_sgd.param_groups[0]['params']:
        p.grad = torch.ones_like(p)
    torch_sgd.step()
    missing = {**sd, 'state': {i: {'exp_avg': e['exp_avg'], 'step': e['step']}
                               for i, e in sd['state'].items()}}  # fmt: skip
    extra_group = {**sd, 'param_groups': sd['param_groups'] * 2}
    fewer_params = {**sd, 'param_groups': [{**sd['param_groups'][0], 'params': [0, 1]}]}
    return {
        'other shapes': (other_shapes.state_dict(), 'shape'),
        'other kind (torchopt)': (sgd.state_dict(), 'belongs to a SGD'),
        'other kind (torch.optim)': (torch_sgd.state_dict(), 'unexpected state keys'),
        'missing key': (missing, "missing the state key 'exp_avg_sq'"),
        'extra group': (extra_group, '2 param groups'),
        'fewer params': (fewer_params, 'holds 2 parameters'),
        'tuple of another model': (tuple(other_shapes.state_groups), 'shape'),
        'not a state': ([1, 2], 'groups'),
    }


@pytest.mark.parametrize('case', sorted(_bad_loads()))
def test_bad_loads_raise_and_leave_the_optimizer_unchanged(case):
    state_dict, message = _bad_loads()[case]
    params = [p.clone().requires_grad_() for p in init_params(5)]
    opt = torchopt.Adam(params, lr=0.05)
    _train(opt, params, steps=2)
    before, lr = _snapshot(opt), opt.param_groups[0]['lr']
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state_dict)
    after = _snapshot(opt)
    assert len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))
    assert opt.param_groups[0]['lr'] == lr


def test_a_truncated_checkpoint_fails_in_torch_load_and_changes_nothing():
    params = [p.clone().requires_grad_() for p in init_params(5)]
    opt = torchopt.Adam(params, lr=0.05)
    _train(opt, params, steps=2)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    truncated = io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2])
    before = _snapshot(opt)
    with pytest.raises(Exception):  # noqa: B017, PT011 - torch.load's own error
        opt.load_state_dict(torch.load(truncated, weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(opt)))


def test_step_hooks_closure_and_zero_grad_as_torch_optim():
    params = [p.clone().requires_grad_() for p in init_params(5)]
    opt = torchopt.SGD(params, lr=0.1)
    calls = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(('pre', o is opt)))
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(('post', o is opt)))

    def closure():
        opt.zero_grad()
        loss = _loss(params)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [('pre', True), ('post', True)] and loss.requires_grad
    pre.remove()
    post.remove()
    opt.step(closure)
    assert len(calls) == 2
    opt.zero_grad()  # TorchOpt's default: zeros, not None
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_state_dict_hooks_run_as_in_torch_optim(name):
    """torch.optim's four state-dict hook kinds: order, arguments and replaced results."""
    ours, ours_p, ref, ref_p = _pair(name)
    _train(ours, ours_p, steps=3)
    _train(ref, ref_p, steps=3)
    results = {}
    for label, opt in (('ours', ours), ('torch', ref)):
        calls = []
        opt.register_state_dict_pre_hook(lambda o, calls=calls: calls.append('save-pre'))
        opt.register_state_dict_post_hook(
            lambda o, sd, calls=calls: calls.append('save-post') or {**sd, 'tag': 1}
        )
        opt.register_state_dict_pre_hook(
            lambda o, calls=calls: calls.append('save-pre-first'), prepend=True
        )

        def load_pre(o, sd, calls=calls):
            calls.append(('load-pre', 'tag' in sd))
            groups = [{**g, 'lr': 0.125} for g in sd['param_groups']]
            return {'state': sd['state'], 'param_groups': groups}

        opt.register_load_state_dict_pre_hook(load_pre)
        opt.register_load_state_dict_post_hook(
            lambda o, calls=calls: calls.append(('load-post', o.param_groups[0]['lr']))
        )
        saved = opt.state_dict()
        before = dict(saved)
        opt.load_state_dict(saved)
        assert saved == before and 'tag' in saved  # the caller's dictionary is not modified
        results[label] = calls
    assert (
        results['ours']
        == results['torch']
        == [
            'save-pre-first',
            'save-pre',
            'save-post',
            ('load-pre', True),
            ('load-post', 0.125),
        ]
    )
    _train(ours, ours_p, steps=3, start=3)
    _train(ref, ref_p, steps=3, start=3)
    assert _max_err(ours_p, ref_p) <= TOL


@pytest.mark.parametrize('cls', [torchopt.SGD, torchopt.Adam, torchopt.RMSProp])
def test_step_wrapper_runs_hooks_and_profiler_range_as_torch_optim(cls):
    """Global and own pre/post hooks in torch's order, a pre-hook's new arguments, its bad
    return value, and the profiler's ``Optimizer.step#<class>.step`` range: the same as for a
    torch.optim optimizer (torchopt's wrapper uses the C++ range, ``record_function`` is 7 µs)."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    def run(make):
        params = [p.clone().requires_grad_() for p in init_params(5)]
        opt = make(params)
        calls = []
        handles = [
            register_optimizer_step_pre_hook(lambda o, a, k: calls.append('global-pre')),
            opt.register_step_pre_hook(lambda o, a, k: calls.append('pre')),
            opt.register_step_post_hook(lambda o, a, k: calls.append(('post', a, k))),
            register_optimizer_step_post_hook(lambda o, a, k: calls.append('global-post')),
        ]
        closure_calls = []

        def closure():
            closure_calls.append(1)
            opt.zero_grad()
            loss = _loss(params)
            loss.backward()
            return loss

        # a pre-hook may replace the arguments: here it adds the closure
        swap = opt.register_step_pre_hook(lambda o, a, k: (a, {'closure': closure}))
        with torch.profiler.profile() as prof:
            loss = opt.step()
        swap.remove()
        bad = opt.register_step_pre_hook(lambda o, a, k: 'not a pair')
        with pytest.raises(RuntimeError, match='must return None or a tuple'):
            opt.step()
        bad.remove()
        for h in handles:
            h.remove()
        names = [e.name for e in prof.events() if e.name.startswith('Optimizer.step#')]
        return calls, len(closure_calls), loss is not None, names, [p.detach() for p in params]

    kw = dict(lr=0.1)
    torch_cls = {torchopt.SGD: torch.optim.SGD, torchopt.Adam: torch.optim.Adam,
                 torchopt.RMSProp: torch.optim.RMSprop}[cls]  # fmt: skip
    mine = run(lambda ps: cls(ps, **kw))
    ref = run(lambda ps: torch_cls(ps, **kw))
    assert mine[0][:4] == ['global-pre', 'pre', mine[0][2], 'global-post']
    assert [c if isinstance(c, str) else c[0] for c in mine[0]] == [
        c if isinstance(c, str) else c[0] for c in ref[0]
    ]
    assert mine[0][2][2] == {
        'closure': mine[0][2][2]['closure']
    }  # the post-hook saw the new kwargs
    assert mine[1:3] == ref[1:3] == (1, True)
    assert mine[3] == [f'Optimizer.step#{cls.__name__}.step']
    assert ref[3] == [f'Optimizer.step#{torch_cls.__name__}.step']
    for a, b in zip(mine[4], ref[4]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_torchopt_07_code_keeps_working():
    """TorchOpt 0.7: pytree params, ``state_groups``, the tuple state layout, extract/recover."""
    tree = {'w': torch.ones(3, requires_grad=True), 'b': (torch.ones(2, requires_grad=True),)}
    opt = torchopt.Optimizer(tree, torchopt.adam(1e-1))
    assert len(opt.param_groups[0]['params']) == 2 and len(opt.param_treespecs) == 1
    (tree['w'].sum() + 2 * tree['b'][0].sum()).backward()
    opt.step()
    assert isinstance(opt.state_groups[0][0], torchopt.transform.ScaleByAdamState)
    saved = torchopt.extract_state_dict(opt)  # by reference
    assert saved[0][0].mu[0] is opt.state_groups[0][0].mu[0]
    copy = torchopt.extract_state_dict(opt, by='deepcopy')
    opt.step()
    torchopt.recover_state_dict(opt, copy)
    assert torch.equal(opt.state_groups[0][0].mu[0], copy[0][0].mu[0])
    opt.load_state_dict(tuple(opt.state_groups))  # TorchOpt 0.7's layout still loads
    twin = torchopt.Optimizer({k: v for k, v in tree.items()}, torchopt.adam(1e-1))
    twin.load_state_dict(opt.state_dict())  # a generic chain round-trips in the new layout
    assert torch.equal(twin.state_groups[0][0].nu[1], opt.state_groups[0][0].nu[1])


def test_meta_optimizer_load_is_validated():
    net = torch.nn.Linear(3, 2)
    other = torch.nn.Linear(4, 2)
    opt, opt_other = torchopt.MetaAdam(net, lr=0.1), torchopt.MetaAdam(other, lr=0.1)
    opt_other.step(other(torch.randn(5, 4)).pow(2).sum())
    opt.step(net(torch.randn(5, 3)).pow(2).sum())
    before = [t.detach().clone() for t in optree.tree_leaves(opt.state_dict())
              if isinstance(t, torch.Tensor)]  # fmt: skip
    with pytest.raises(ValueError, match='shape'):
        opt.load_state_dict(opt_other.state_dict())
    with pytest.raises(ValueError, match='groups'):
        opt.load_state_dict(())
    after = [
        t.detach() for t in optree.tree_leaves(opt.state_dict()) if isinstance(t, torch.Tensor)
    ]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_a_deep_copy_is_independent():
    """copy.deepcopy (used by training frameworks) gives an optimizer of its own groups."""
    import copy

    params = [p.clone().requires_grad_() for p in init_params(5)]
    opt = torchopt.Adam(params, lr=0.05)
    _train(opt, params, steps=2)
    twin = copy.deepcopy(opt)
    twin.param_groups[0]['lr'] = 0.0  # must not change the original's steps
    twin_params = twin.param_groups[0]['params']
    before = [p.detach().clone() for p in params]
    _train(twin, twin_params, steps=1)
    assert all(torch.equal(a, b) for a, b in zip(twin_params, before))  # lr 0: no change
    _train(opt, params, steps=1)
    assert not all(torch.equal(a, b) for a, b in zip(params, before))
