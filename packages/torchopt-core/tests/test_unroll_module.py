"""``torchopt.unroll_module``: K ``MetaOptimizer.step`` calls on a module through ``unroll``.

Reference: the plain loop ``for t in range(K): opt.step(loss_fn(t))`` (float64, 1e-12 relative):
the final parameters, the optimizer state, BatchNorm's running statistics and the meta-gradients
with respect to the initial parameters and to a meta-parameter in the closure.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchopt

DT = torch.float64

META = {
    'MetaSGD': lambda m: torchopt.MetaSGD(m, lr=0.05, momentum=0.9),
    'MetaAdam': lambda m: torchopt.MetaAdam(m, lr=0.02, eps=1e-3, eps_root=1e-12),
    'MetaAdamW': lambda m: torchopt.MetaAdamW(m, lr=0.02, eps=1e-3, eps_root=1e-12),
    'MetaRMSProp': lambda m: torchopt.MetaRMSProp(m, lr=0.01, eps=1e-2),
}


def _net() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.2), nn.Linear(6, 2, bias=False)
    )
    return net.to(DT)


def _data():
    g = torch.Generator().manual_seed(2)
    return torch.randn(16, 4, generator=g, dtype=DT), torch.randn(16, 2, generator=g, dtype=DT)


def _run(name: str, k: int, **kw):
    net = _net()
    x, y = _data()
    lam = torch.tensor(0.05, dtype=DT, requires_grad=True)
    init = [p for p in net.parameters()]
    opt = META[name](net)

    def loss_fn(t):
        part = slice(t % 4, t % 4 + 12)
        return F.mse_loss(net(x[part]), y[part]) + lam * net[0].weight.pow(2).sum()

    torch.manual_seed(3)
    if kw.pop('loop', False):
        for t in range(k):
            opt.step(loss_fn(t))
    else:
        torchopt.unroll_module(net, opt, loss_fn, k, **kw)
    outer = F.mse_loss(net(x), y)
    grads = torch.autograd.grad(outer, [*init, lam], allow_unused=True)
    state = torchopt.pytree.tree_leaves(opt.state_dict())
    buffers = [b.clone() for b in net.buffers()]
    return grads, outer.detach(), state, buffers, net


def _close(got, ref, rtol=1e-12):
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert (a is None) == (b is None)
        if b is None:
            continue
        if isinstance(b, torch.Tensor) and b.is_floating_point():
            a, b = a.detach(), b.detach()
            scale = b.abs().max().clamp_min(1e-300)
            assert float((a - b.detach()).abs().max() / scale) <= rtol
        else:
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


@pytest.mark.parametrize('name', sorted(META))
@pytest.mark.parametrize(
    'kw', [{}, {'checkpoints': 4}, {'checkpoints': 'sqrt'}], ids=['full', 'c4', 'sqrt']
)
def test_unroll_module_equals_the_plain_loop(name, kw):
    ref = _run(name, 25, loop=True)
    got = _run(name, 25, **kw)
    _close(got[0], ref[0])
    assert got[1] == ref[1]
    _close(got[2], ref[2])  # optimizer state
    _close(got[3], ref[3])  # BatchNorm running statistics
    assert int(got[3][-1]) == 25 + 1  # num_batches_tracked: 25 inner steps and the outer loss


def test_module_holds_final_parameters_and_recover_state_dict():
    net = _net()
    x, y = _data()
    snapshot = torchopt.extract_state_dict(net)
    opt = torchopt.MetaAdam(net, lr=0.01)
    torchopt.unroll_module(net, opt, lambda t: F.mse_loss(net(x), y), 10, checkpoints=3)
    assert all(p.grad_fn is not None for p in net.parameters())
    F.mse_loss(net(x), y).backward()
    assert all(p.grad is not None for p in snapshot.params[0].values())
    torchopt.recover_state_dict(net, snapshot)
    assert all(p.grad_fn is None for p in net.parameters())


def test_truncated_module_unroll_only_reaches_the_window():
    got = _run('MetaAdam', 12, truncate=4, checkpoints=2)
    ref = _run('MetaAdam', 12, truncate=4)
    _close(got[0], ref[0])
    assert got[1] == ref[1]
    assert got[0][0] is None and got[0][-1] is not None  # initial parameters: cut off


def test_wrong_arguments():
    net = _net()
    with pytest.raises(TypeError, match='nn.Module'):
        torchopt.unroll_module(object(), torchopt.MetaSGD(net, lr=0.1), lambda t: None, 3)
    with pytest.raises(TypeError, match='MetaOptimizer'):
        torchopt.unroll_module(net, object(), lambda t: None, 3)
