"""``inject_hyperparams``: hyper-parameters in the state, schedules, meta-gradients (issue #20)."""

from __future__ import annotations

import optree
import pytest
import torch
from optimizer_table import init_params
from optimizer_table import loss as _loss

import torchopt

pytestmark = pytest.mark.usefixtures('float64_default')  # torch.optim's scalars in float64


def _params() -> dict[str, torch.Tensor]:
    return {f'p{i}': p.clone().requires_grad_() for i, p in enumerate(init_params(1))}


def _unroll(opt, steps: int, create_graph: bool) -> torch.Tensor:
    """The loss after ``steps`` differentiable (out-of-place) updates."""
    params = _params()
    state = opt.init(params)
    for _ in range(steps):
        grads = torch.autograd.grad(_loss(list(params.values())), list(params.values()),
                                    create_graph=create_graph)  # fmt: skip
        updates, state = opt.update(dict(zip(params, grads)), state, params=params,
                                    inplace=False)  # fmt: skip
        params = torchopt.apply_updates(params, updates, inplace=False)
    return _loss(list(params.values()))


def _adam(lr, b1, b2):
    return torchopt.inject_hyperparams(torchopt.adam)(lr=lr, betas=(b1, b2))


def test_meta_gradient_of_the_learning_rate_equals_finite_differences():
    lr = torch.tensor(0.05, requires_grad=True)
    (grad,) = torch.autograd.grad(_unroll(_adam(lr, 0.9, 0.999), 5, True), [lr])
    h = 1e-6
    plus = _unroll(_adam(0.05 + h, 0.9, 0.999), 5, False)
    minus = _unroll(_adam(0.05 - h, 0.9, 0.999), 5, False)
    fd = (plus - minus) / (2 * h)
    assert abs(fd.item()) > 1.0
    assert abs(grad.item() - fd.item()) <= 1e-7 * abs(fd.item())


def test_meta_gradients_of_the_betas_equal_finite_differences():
    b1 = torch.tensor(0.8, requires_grad=True)
    b2 = torch.tensor(0.95, requires_grad=True)
    grads = torch.autograd.grad(_unroll(_adam(0.05, b1, b2), 5, True), [b1, b2])
    h = 1e-6
    for i, g in enumerate(grads):
        values = [0.8, 0.95]
        up, down = list(values), list(values)
        up[i] += h
        down[i] -= h
        fd = (_unroll(_adam(0.05, *up), 5, False) - _unroll(_adam(0.05, *down), 5, False)) / (2 * h)
        assert abs(fd.item()) > 1e-2
        assert abs(g.item() - fd.item()) <= 1e-6 * abs(fd.item())


def test_meta_gradient_through_a_scheduled_and_learned_sgd():
    """A learnable momentum-free SGD learning rate: d loss / d lr by autograd and by FD."""
    lr = torch.tensor(0.02, requires_grad=True)
    opt = torchopt.inject_hyperparams(torchopt.sgd)(lr=lr)
    (grad,) = torch.autograd.grad(_unroll(opt, 4, True), [lr])
    h = 1e-6
    fd = (
        _unroll(torchopt.inject_hyperparams(torchopt.sgd)(lr=0.02 + h), 4, False)
        - _unroll(torchopt.inject_hyperparams(torchopt.sgd)(lr=0.02 - h), 4, False)
    ) / (2 * h)
    assert abs(grad.item() - fd.item()) <= 1e-7 * abs(fd.item())


def test_hyperparameters_live_in_the_state_as_tensors():
    opt = torchopt.inject_hyperparams(torchopt.adamw)(lr=1e-2, weight_decay=0.1)
    state = opt.init(_params())
    assert isinstance(state, torchopt.InjectHyperparamsState)
    hp = state.hyperparams
    assert set(hp) >= {'lr', 'betas', 'eps', 'weight_decay', 'eps_root'}
    assert hp['lr'].dtype == torch.float64 and hp['lr'].dim() == 0 and hp['lr'].item() == 1e-2
    assert isinstance(hp['betas'], tuple) and hp['betas'][1].item() == 0.999
    assert 'maximize' not in hp and 'mask' not in hp  # bools and None are static
    assert all(isinstance(x, torch.Tensor) for x in optree.tree_leaves(state))


def test_changing_the_learning_rate_between_steps_takes_effect():
    def schedule(count):
        return 0.1 if count < 2 else 0.01

    ref = torchopt.adam(lr=schedule)
    opt = torchopt.inject_hyperparams(torchopt.adam)(lr=0.1)
    p_ref, p = _params(), _params()
    s_ref, s = ref.init(p_ref), opt.init(p)
    for step in range(4):
        if step == 2:
            s.hyperparams['lr'] = torch.tensor(0.01)
        for params, o, which in ((p_ref, ref, 0), (p, opt, 1)):
            grads = torch.autograd.grad(_loss(list(params.values())), list(params.values()))
            state = s_ref if which == 0 else s
            updates, state = o.update(dict(zip(params, grads)), state, params=params)
            torchopt.apply_updates(params, updates)
            if which == 0:
                s_ref = state
            else:
                s = state
    for a, b in zip(p.values(), p_ref.values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    assert s.hyperparams['lr'].item() == 0.01 and s.count.item() == 4


def test_a_callable_hyperparameter_follows_its_schedule():
    schedule = torchopt.schedule.linear_schedule(0.1, 0.01, 10)
    opt = torchopt.inject_hyperparams(torchopt.adam)(lr=schedule)
    ref = torchopt.adam(lr=schedule)
    p, p_ref = _params(), _params()
    s, s_ref = opt.init(p), ref.init(p_ref)
    assert s.hyperparams['lr'].item() == pytest.approx(0.1)
    for step in range(5):
        for params, o, which in ((p, opt, 0), (p_ref, ref, 1)):
            grads = torch.autograd.grad(_loss(list(params.values())), list(params.values()))
            state = s if which == 0 else s_ref
            updates, state = o.update(dict(zip(params, grads)), state, params=params)
            torchopt.apply_updates(params, updates)
            if which == 0:
                s = state
            else:
                s_ref = state
        assert s.hyperparams['lr'].item() == pytest.approx(schedule(step), abs=1e-15)
    for a, b in zip(p.values(), p_ref.values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_plain_numbers_keep_the_fused_path(monkeypatch):
    """Non-learnable hyper-parameters reach the factory as numbers: one fused kernel pass."""
    calls = []
    original = torch._fused_adamw_

    def spy(*args, **kwargs):
        calls.append(kwargs['lr'])
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, '_fused_adamw_', spy)
    opt = torchopt.inject_hyperparams(torchopt.adam)(lr=1e-2)
    params = [p.detach().clone() for p in init_params(1)]
    state = opt.init(params)
    for _ in range(3):
        updates, state = opt.update([torch.randn_like(p) for p in params], state, params=params)
        torchopt.apply_updates(params, updates)
    assert calls == [1e-2] * 3


def test_the_inner_transformation_is_reused_while_the_values_do_not_change():
    built = []

    def factory(lr=1e-2, momentum=0.5):
        built.append((lr, momentum))
        return torchopt.sgd(lr, momentum=momentum)

    opt = torchopt.inject_hyperparams(factory)(lr=0.1)
    params = [torch.zeros(3)]
    state = opt.init(params)
    for _ in range(3):
        _, state = opt.update([torch.ones(3)], state, params=params, inplace=False)
    assert built == [(0.1, 0.5)]
    state.hyperparams['momentum'] = torch.tensor(0.9)
    _, state = opt.update([torch.ones(3)], state, params=params, inplace=False)
    assert built == [(0.1, 0.5), (0.1, 0.9)]
    assert isinstance(built[-1][0], float)


def test_static_args_and_non_numeric_arguments_are_passed_through():
    def mask(params):
        return [True, False]

    opt = torchopt.inject_hyperparams(torchopt.adamw, static_args='eps')(lr=0.1, mask=mask)
    params = [torch.ones(2), torch.ones(3)]
    state = opt.init(params)
    assert 'eps' not in state.hyperparams and 'mask' not in state.hyperparams
    updates, _ = opt.update([torch.zeros(2), torch.zeros(3)], state, params=params,
                            inplace=False)  # fmt: skip
    torch.testing.assert_close(updates[0], torch.full((2,), -0.1 * 0.01))  # decayed
    torch.testing.assert_close(updates[1], torch.zeros(3))  # masked out


def test_injected_optimizer_composes_and_keeps_none_leaves():
    opt = torchopt.chain(torchopt.transform.clip_by_global_norm(1.0),
                         torchopt.inject_hyperparams(torchopt.adam)(lr=0.1))  # fmt: skip
    params = {'a': torch.ones(3), 'b': torch.ones(2)}
    state = opt.init(params)
    updates, state = opt.update({'a': torch.ones(3), 'b': None}, state, params=params)
    assert updates['b'] is None
    adam_state = state[1].inner_state[0]
    assert [c.item() for c in adam_state.count] == [1.0, 0.0]  # b's count did not advance


def test_tensor_betas_without_grad_match_number_betas():
    params = init_params(2)
    a, b = (
        torchopt.adam(1e-2, betas=(0.8, 0.99)),
        torchopt.adam(1e-2, betas=(torch.tensor(0.8), torch.tensor(0.99))),
    )
    pa, pb = [p.clone() for p in params], [p.clone() for p in params]
    sa, sb = a.init(pa), b.init(pb)
    for inplace in (True, False, True):
        g = [torch.randn_like(p) for p in params]
        ua, sa = a.update([x.clone() for x in g], sa, params=pa, inplace=inplace)
        ub, sb = b.update([x.clone() for x in g], sb, params=pb, inplace=inplace)
        pa = torchopt.apply_updates(pa, ua, inplace=inplace)
        pb = torchopt.apply_updates(pb, ub, inplace=inplace)
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-15)
