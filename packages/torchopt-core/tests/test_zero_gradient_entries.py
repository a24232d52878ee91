"""Meta-gradients stay finite where a gradient entry is exactly zero at every step.

A weight on an input feature that is always 0 (padding, a dead pixel) has gradient exactly 0, so
RMSprop's, Adagrad's and Adam's (``eps_root=0``) second moment is exactly 0 there (a bias in front
of BatchNorm is the same case, up to rounding). Autograd's derivative of
``sqrt`` at 0 is infinite, and ``inf * 0`` made every meta-gradient NaN (as in TorchOpt 0.7).
Reference: central finite differences of the unrolled loss in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchopt

DT = torch.float64

META = {
    'MetaRMSProp': lambda m: torchopt.MetaRMSProp(m, lr=0.01, eps=1e-2),
    'MetaRMSProp-centered': lambda m: torchopt.MetaRMSProp(m, lr=0.01, eps=1e-2, centered=True),
    'MetaAdagrad': lambda m: torchopt.MetaAdagrad(m, lr=0.05, eps=1e-2),
    'MetaAdam': lambda m: torchopt.MetaAdam(m, lr=0.02, eps=1e-2),
    'MetaAdam-accel': lambda m: torchopt.MetaAdam(m, lr=0.02, eps=1e-2, use_accelerated_op=True),
}


def _unrolled_loss(name: str, lam: torch.Tensor, steps: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).to(DT)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, generator=g, dtype=DT), torch.randn(8, 1, generator=g, dtype=DT)
    x[:, 0] = 0.0  # net[0].weight[:, 0] gets gradient exactly 0 at every step
    opt = META[name](net)
    for _ in range(steps):
        opt.step(F.mse_loss(net(x), y) + lam * net[3].weight.pow(2).sum())
    return F.mse_loss(net(x), y)


@pytest.mark.parametrize('name', sorted(META))
def test_meta_gradient_is_finite_and_matches_finite_differences(name):
    lam = torch.tensor(0.3, dtype=DT, requires_grad=True)
    (grad,) = torch.autograd.grad(_unrolled_loss(name, lam), lam)
    assert torch.isfinite(grad)
    h = 1e-6
    lam = lam.detach()
    fd = (_unrolled_loss(name, lam + h) - _unrolled_loss(name, lam - h)).detach() / (2 * h)
    assert float(grad) != 0.0
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize(
    'make', [torchopt.rmsprop, torchopt.adagrad, torchopt.adam], ids=['rmsprop', 'adagrad', 'adam']
)
def test_functional_update_under_torch_func_grad(make):
    # d u / d g at g = 0 (first step, zero state) is 1/eps scaled by -lr for these three.
    opt = make(lr=0.1, eps=1e-2)
    params = (torch.zeros(3, dtype=DT),)
    state = opt.init(params)

    def first_update(g):
        (u,), _ = opt.update((g,), state, params=params, inplace=False)
        return u.sum()

    d = torch.func.grad(first_update)(torch.tensor([0.0, 0.5, -2.0], dtype=DT))
    assert torch.isfinite(d).all()
    assert float(d[0]) == pytest.approx(-0.1 / 1e-2, rel=1e-12)
