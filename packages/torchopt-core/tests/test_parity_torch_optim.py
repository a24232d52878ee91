"""Float64 parity with torch.optim after 20 steps, functional and class API alike (<= 1e-12)."""

from __future__ import annotations

import pytest
import torch

import torchopt
from optimizer_table import CASES, init_params
from optimizer_table import loss as _loss

STEPS = 20
TOL = 1e-12


def _init_params() -> list[torch.Tensor]:
    return init_params(1)


def _run_torch(torch_cls, kwargs):
    params = [p.clone().requires_grad_() for p in _init_params()]
    opt = torch_cls(params, foreach=False, **kwargs)
    for _ in range(STEPS):
        opt.zero_grad()
        _loss(params).backward()
        opt.step()
    return [p.detach() for p in params]


@pytest.fixture(autouse=True)
def _float64_default():
    # torch.optim keeps NAdam's momentum product in the default scalar dtype.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _max_err(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize(('name', 'cls', 'fn', 'torch_cls', 'kwargs'), CASES, ids=[c[0] for c in CASES])
def test_class_api_matches_torch_optim(name, cls, fn, torch_cls, kwargs):
    expected = _run_torch(torch_cls, kwargs)
    params = [p.clone().requires_grad_() for p in _init_params()]
    opt = cls(params, **kwargs)
    for _ in range(STEPS):
        opt.zero_grad()
        _loss(params).backward()
        opt.step()
    assert _max_err(params, expected) <= TOL


@pytest.mark.parametrize(('name', 'cls', 'fn', 'torch_cls', 'kwargs'), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize('inplace', [True, False])
def test_functional_api_matches_torch_optim(name, cls, fn, torch_cls, kwargs, inplace):
    expected = _run_torch(torch_cls, kwargs)
    params = {f'p{i}': p.clone().requires_grad_() for i, p in enumerate(_init_params())}
    opt = fn(**kwargs)
    state = opt.init(params)
    for _ in range(STEPS):
        loss = _loss(list(params.values()))
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        updates, state = opt.update(grads, state, params=params, inplace=inplace)
        params = torchopt.apply_updates(params, updates, inplace=inplace)
        if not inplace:
            params = {k: v.detach().requires_grad_() for k, v in params.items()}
    assert _max_err(list(params.values()), expected) <= TOL


@pytest.mark.parametrize('lr', [1e-3, 3e-2])
def test_adam_bias_correction_is_double_precision(lr):
    """Upstream #235: float32 bias corrections drift by ~1e-5 relative; ours match to round-off."""
    expected = _run_torch(torch.optim.Adam, dict(lr=lr, betas=(0.9, 0.999)))
    params = [p.clone().requires_grad_() for p in _init_params()]
    opt = torchopt.Adam(params, lr=lr)
    for _ in range(STEPS):
        opt.zero_grad()
        _loss(params).backward()
        opt.step()
    assert _max_err(params, expected) <= 1e-14
