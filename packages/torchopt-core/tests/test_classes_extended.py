"""Torch-like and Meta classes of the optimizers beyond TorchOpt 0.7 (#20).

The classes are made from the alias's signature (:mod:`torchopt.optim._generated`): the class
step must follow torch.optim where it has the optimizer (float64, <= 1e-12 after 20 steps) and
the functional alias everywhere; the Meta class must give the functional out-of-place update.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import torchopt
from optimizer_table import FUNCTIONAL_CASES, MATRIX_SHAPES, init_params
from optimizer_table import loss as _loss

CLASS_OF = {
    'amsgrad': 'AMSGrad', 'adafactor': 'Adafactor', 'rprop': 'Rprop', 'asgd': 'ASGD',
    'muon': 'Muon', 'adabelief': 'AdaBelief', 'yogi': 'Yogi', 'novograd': 'NovoGrad',
    'adan': 'Adan', 'sign_sgd': 'SignSGD', 'lars': 'LARS',
}
ROWS = [(name, fn, ref, kw) for name, _, fn, ref, kw in FUNCTIONAL_CASES]


@pytest.fixture(autouse=True)
def _float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _params(fn):
    shapes = MATRIX_SHAPES if fn is torchopt.muon else None
    return [p.clone().requires_grad_() for p in init_params(4, n=3, shapes=shapes)]


def _run_class(opt, params, steps=20):
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        _loss(params).backward()
        opt.step()
    return [p.detach() for p in params]


def _run_functional(fn, kwargs, params, steps=20):
    impl = fn(**kwargs)
    params = [p.detach().clone() for p in params]
    state = impl.init(params)
    for _ in range(steps):
        ps = [p.requires_grad_() for p in params]
        grads = list(torch.autograd.grad(_loss(ps), ps))
        with torch.no_grad():
            updates, state = impl.update(grads, state, params=params, inplace=True)
            torchopt.apply_updates(params, updates, inplace=True)
        params = [p.detach() for p in params]
    return params


@pytest.mark.parametrize(('name', 'fn', 'ref', 'kwargs'), ROWS, ids=[r[0] for r in ROWS])
def test_class_step_matches_the_alias_and_torch_optim(name, fn, ref, kwargs):
    cls = getattr(torchopt, CLASS_OF[fn.__name__])
    assert issubclass(cls, torch.optim.Optimizer)
    params = _params(fn)
    got = _run_class(cls(params, **kwargs), params)
    want = _run_functional(fn, kwargs, _params(fn))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if ref is not None:
        ref_params = _params(fn)
        expected = _run_class(ref(ref_params, **kwargs), ref_params)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('alias', ['nadam', 'lion', 'lamb', *CLASS_OF])
def test_meta_class_gives_the_functional_differentiable_update(alias):
    fn = getattr(torchopt, alias)
    meta = getattr(torchopt, 'Meta' + CLASS_OF.get(alias, {'nadam': 'NAdam', 'lion': 'Lion',
                                                           'lamb': 'Lamb'}.get(alias, '')))  # fmt: skip
    assert 'moment_requires_grad' in inspect.signature(meta).parameters or alias in (
        'adafactor', 'rprop', 'asgd', 'sign_sgd', 'lars'
    )
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3, bias=alias != 'muon')  # Muon takes matrices only
    lr = 1e-2
    x = torch.randn(8, 4)
    ref = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    opt = meta(net, lr=lr)
    opt.step(net(x).pow(2).mean())
    impl = fn(lr=lr)
    state = impl.init(ref)
    loss = torch.func.functional_call(net, ref, (x,)).pow(2).mean()
    grads = dict(zip(ref, torch.autograd.grad(loss, list(ref.values()), create_graph=True)))
    updates, _ = impl.update(grads, state, params=ref, inplace=False)
    new = torchopt.apply_updates(ref, updates, inplace=False)
    torch.testing.assert_close(net.weight, new['weight'], rtol=1e-12, atol=1e-12)
    assert net.weight.grad_fn is not None  # differentiable: a non-leaf tensor
