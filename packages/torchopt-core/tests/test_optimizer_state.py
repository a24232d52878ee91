"""Torch-like optimizers: state dicts that survive torch.save/torch.load, param trees, zero_grad."""

from __future__ import annotations

import io

import pytest
import torch

import torchopt


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _step(model, opt, x, y):
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    return loss.item()


@pytest.mark.parametrize(
    'make',
    [
        lambda p: torchopt.Adam(p, lr=1e-2),
        lambda p: torchopt.SGD(p, lr=1e-2, momentum=0.9),
        lambda p: torchopt.RMSprop(p, lr=1e-2, centered=True, momentum=0.5),
        lambda p: torchopt.Adagrad(p, lr=1e-2, lr_decay=0.1),
        lambda p: torchopt.NAdam(p),
        lambda p: torchopt.Lion(p, weight_decay=0.1),
    ],
)
def test_save_load_resumes_bit_identically(make, tmp_path):
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    model = _model()
    opt = make(model.parameters())
    for _ in range(3):
        _step(model, opt, x, y)
    path = tmp_path / 'ckpt.pt'
    torch.save({'model': model.state_dict(), 'opt': opt.state_dict()}, path)
    for _ in range(3):
        _step(model, opt, x, y)
    expected = [p.detach().clone() for p in model.parameters()]

    resumed = _model()
    ckpt = torch.load(path)  # weights_only=True, torch's default
    resumed.load_state_dict(ckpt['model'])
    opt2 = make(resumed.parameters())
    opt2.load_state_dict(ckpt['opt'])
    for _ in range(3):
        _step(resumed, opt2, x, y)
    for a, b in zip(resumed.parameters(), expected):
        assert torch.equal(a.detach(), b)


def test_state_dict_before_first_step_is_uninitialized():
    opt = torchopt.Adam([torch.zeros(1, requires_grad=True)])
    assert opt.state_dict()['state'] == {}  # as torch.optim: no state before the first step
    assert opt.state_groups == [torchopt.base.UninitializedState()]  # TorchOpt's attribute
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    assert torch.load(buf)['state'] == {}


def test_load_state_dict_checks_group_count():
    opt = torchopt.Adam([torch.zeros(1, requires_grad=True)])
    with pytest.raises(ValueError, match='groups'):
        opt.load_state_dict(())


def test_param_groups_and_pytrees():
    a = torch.ones(2, requires_grad=True)
    b = {'w': torch.ones(3, requires_grad=True), 'bias': (torch.ones(1, requires_grad=True),)}
    opt = torchopt.SGD([a], lr=0.5)
    opt.add_param_group(b)
    assert len(opt.param_groups) == 2 and len(opt.param_groups[1]['params']) == 2
    (a.sum() + b['w'].sum() * 2 + b['bias'][0].sum()).backward()
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.5))
    torch.testing.assert_close(b['w'].detach(), torch.zeros(3))
    torch.testing.assert_close(b['bias'][0].detach(), torch.full((1,), 0.5))


def test_params_without_grad_are_skipped():
    a = torch.ones(2, requires_grad=True)
    frozen = torch.ones(2, requires_grad=True)
    opt = torchopt.Adam([a, frozen], lr=0.1)
    a.sum().backward()
    opt.step()
    assert torch.equal(frozen.detach(), torch.ones(2))
    assert not torch.equal(a.detach(), torch.ones(2))


def test_zero_grad_modes():
    a = torch.ones(2, requires_grad=True)
    opt = torchopt.SGD([a], lr=0.1)
    (a * 3).sum().backward()
    opt.zero_grad()
    assert torch.equal(a.grad, torch.zeros(2))
    opt.zero_grad(set_to_none=True)
    assert a.grad is None


def test_closure_is_evaluated_with_grad_and_returned():
    a = torch.ones(2, requires_grad=True)
    opt = torchopt.SGD([a], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (a**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert loss.item() == 2.0
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.8))


def test_func_optimizer_accepts_dict_params():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    params = dict(model.named_parameters())
    x = torch.randn(8, 3)
    opt = torchopt.FuncOptimizer(torchopt.adam(1e-2))
    for _ in range(2):
        loss = torch.func.functional_call(model, params, (x,)).pow(2).mean()
        params = opt.step(loss, params)
    assert set(params) == {'weight', 'bias'}
    assert params['weight'].grad_fn is not None  # differentiable by default
    ref = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    state = torchopt.adam(1e-2).init(ref)
    impl = torchopt.adam(1e-2)
    for _ in range(2):
        loss = torch.func.functional_call(model, ref, (x,)).pow(2).mean()
        grads = dict(zip(ref, torch.autograd.grad(loss, list(ref.values()))))
        updates, state = impl.update(grads, state, inplace=False)
        ref = torchopt.apply_updates(ref, updates, inplace=False)
    for k in params:
        torch.testing.assert_close(params[k], ref[k])
