"""Torch-like and Meta classes of every row of the optimizer table.

The class step must give the functional alias's in-place result (float64, <= 1e-12 after 20
steps; the references themselves are matched in ``test_parity_torch_optim.py``), and the Meta
class the functional out-of-place update, differentiable, with every option of the row.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from optimizer_table import loss as _loss
from optimizer_table import row_params, rows

import torchopt

pytestmark = pytest.mark.usefixtures('float64_default')  # torch.optim's scalars in float64


def _params(row):
    return [p.clone().requires_grad_() for p in row_params(row, 4)]


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


@rows()
def test_class_step_matches_the_alias(row):
    assert issubclass(row.cls, torchopt.Optimizer)
    assert issubclass(row.cls, torch.optim.Optimizer)
    params = _params(row)
    got = _run_class(row.cls(params, **row.kwargs), params)
    want = _run_functional(row.fn, row.kwargs, _params(row))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@rows()
def test_meta_class_gives_the_functional_differentiable_update(row):
    assert issubclass(row.meta, torchopt.MetaOptimizer)
    mrg = inspect.signature(row.meta).parameters.get('moment_requires_grad')
    assert (mrg is not None) == ('moment_requires_grad' in inspect.signature(row.fn).parameters)
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3, bias=not row.matrices_only)  # Muon takes matrices only
    x = torch.randn(8, 4)
    ref = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    opt = row.meta(net, **row.meta_kwargs)
    impl = row.fn(**row.meta_kwargs)
    state = impl.init(ref)
    for _ in range(3):  # past the first step: the state is part of the graph
        opt.step(net(x).pow(2).mean())
        loss = torch.func.functional_call(net, ref, (x,)).pow(2).mean()
        grads = dict(zip(ref, torch.autograd.grad(loss, list(ref.values()), create_graph=True)))
        updates, state = impl.update(grads, state, params=ref, inplace=False)
        ref = torchopt.apply_updates(ref, updates, inplace=False)
    torch.testing.assert_close(net.weight, ref['weight'], rtol=1e-12, atol=1e-12)
    assert net.weight.grad_fn is not None  # differentiable: a non-leaf tensor
