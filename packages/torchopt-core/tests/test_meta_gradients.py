"""Differentiating through optimizer steps: MetaOptimizers and ``inplace=False`` updates.

Meta-gradients of K-step unrolls are compared with hand-written ``autograd.grad(create_graph=True)``
unrolls (float64, <= 1e-12 relative) and with central finite differences.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchopt


@pytest.fixture(autouse=True)
def _f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _data():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 3, generator=g)
    y = torch.randn(16, 1, generator=g)
    xv = torch.randn(8, 3, generator=g)
    yv = torch.randn(8, 1, generator=g)
    w0 = torch.randn(1, 3, generator=g) * 0.5
    b0 = torch.randn(1, generator=g) * 0.1
    return x, y, xv, yv, w0, b0


def _inner_loss(w, b, lam, x, y):
    return ((x @ w.T + b - y) ** 2).mean() + lam * (w**2).sum()


def _outer_loss(w, b, xv, yv):
    return ((xv @ w.T + b - yv) ** 2).mean()


# Hand-written unrolls: each returns the final (w, b) built with autograd.grad(create_graph=True).
def _unroll_sgd(w, b, lam, x, y, k, lr=0.1, momentum=0.9):
    bufs = None
    for _ in range(k):
        gw, gb = torch.autograd.grad(_inner_loss(w, b, lam, x, y), (w, b), create_graph=True)
        if momentum:
            bufs = (gw, gb) if bufs is None else (momentum * bufs[0] + gw, momentum * bufs[1] + gb)
            gw, gb = bufs
        w, b = w - lr * gw, b - lr * gb
    return w, b


def _unroll_adam(w, b, lam, x, y, k, lr=0.05, b1=0.9, b2=0.999, eps=1e-3, eps_root=1e-12):
    ps = [w, b]
    mu = [torch.zeros_like(p) for p in ps]
    nu = [torch.zeros_like(p) for p in ps]
    for t in range(1, k + 1):
        grads = torch.autograd.grad(_inner_loss(ps[0], ps[1], lam, x, y), ps, create_graph=True)
        new = []
        for i, (p, g) in enumerate(zip(ps, grads)):
            mu[i] = b1 * mu[i] + (1 - b1) * g
            nu[i] = b2 * nu[i] + (1 - b2) * g * g
            mhat = mu[i] / (1 - b1**t)
            vhat = nu[i] / (1 - b2**t)
            new.append(p - lr * mhat / (torch.sqrt(vhat + eps_root) + eps))
        ps = new
    return ps[0], ps[1]


def _unroll_rmsprop(w, b, lam, x, y, k, lr=0.01, alpha=0.99, eps=1e-2):
    ps = [w, b]
    nu = [torch.zeros_like(p) for p in ps]
    for _ in range(k):
        grads = torch.autograd.grad(_inner_loss(ps[0], ps[1], lam, x, y), ps, create_graph=True)
        new = []
        for i, (p, g) in enumerate(zip(ps, grads)):
            nu[i] = alpha * nu[i] + (1 - alpha) * g * g
            new.append(p - lr * g / (torch.sqrt(nu[i]) + eps))
        ps = new
    return ps[0], ps[1]


CASES = {
    'sgd': (lambda m: torchopt.MetaSGD(m, lr=0.1, momentum=0.9), _unroll_sgd),
    # eps=1e-3: with a tiny eps Adam's first step is sign(g) and the meta-gradient vanishes.
    'adam': (lambda m: torchopt.MetaAdam(m, lr=0.05, eps=1e-3, eps_root=1e-12), _unroll_adam),
    'rmsprop': (lambda m: torchopt.MetaRMSprop(m, lr=0.01, eps=1e-2), _unroll_rmsprop),
}


def _meta_grad_module(make_opt, lam0, k):
    x, y, xv, yv, w0, b0 = _data()
    lam = torch.tensor(lam0, requires_grad=True)
    net = nn.Linear(3, 1)
    with torch.no_grad():
        net.weight.copy_(w0)
        net.bias.copy_(b0)
    opt = make_opt(net)
    for _ in range(k):
        opt.step(_inner_loss(net.weight, net.bias, lam, x, y))
    loss = _outer_loss(net.weight, net.bias, xv, yv)
    return torch.autograd.grad(loss, lam)[0], loss.detach()


def _meta_grad_reference(unroll, lam0, k):
    x, y, xv, yv, w0, b0 = _data()
    lam = torch.tensor(lam0, requires_grad=True)
    w, b = unroll(w0.clone().requires_grad_(), b0.clone().requires_grad_(), lam, x, y, k)
    loss = _outer_loss(w, b, xv, yv)
    return torch.autograd.grad(loss, lam)[0], loss.detach()


@pytest.mark.parametrize('name', sorted(CASES))
@pytest.mark.parametrize('k', [1, 5])
def test_meta_gradient_equals_hand_written_unroll(name, k):
    make_opt, unroll = CASES[name]
    got, loss = _meta_grad_module(make_opt, 0.3, k)
    ref, ref_loss = _meta_grad_reference(unroll, 0.3, k)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    assert abs(got - ref) <= 1e-12 * abs(ref)


@pytest.mark.parametrize('name', sorted(CASES))
def test_meta_gradient_agrees_with_finite_differences(name):
    make_opt, _ = CASES[name]
    got, _ = _meta_grad_module(make_opt, 0.3, 5)
    h = 1e-6
    _, plus = _meta_grad_module(make_opt, 0.3 + h, 5)
    _, minus = _meta_grad_module(make_opt, 0.3 - h, 5)
    fd = (plus - minus) / (2 * h)
    assert abs(got - fd) <= 1e-6 * max(1.0, abs(fd))


def test_learnable_learning_rate_tensor():
    """d(outer)/d(lr) through inplace=False updates equals the closed form for one SGD step."""
    x, y, xv, yv, w0, b0 = _data()
    lr = torch.tensor(0.1, requires_grad=True)
    params = (w0.clone().requires_grad_(), b0.clone().requires_grad_())
    opt = torchopt.sgd(lr=lr)
    state = opt.init(params)
    grads = torch.autograd.grad(_inner_loss(*params, 0.0, x, y), params, create_graph=True)
    updates, state = opt.update(grads, state, inplace=False)
    new = torchopt.apply_updates(params, updates, inplace=False)
    dlr = torch.autograd.grad(_outer_loss(*new, xv, yv), lr)[0]
    # closed form: d/dlr L(p - lr g) = -<grad L(p - lr g), g>
    p1 = [p.detach() - 0.1 * g.detach() for p, g in zip(params, grads)]
    p1 = [p.requires_grad_() for p in p1]
    gv = torch.autograd.grad(_outer_loss(*p1, xv, yv), p1)
    expected = -sum((a * b.detach()).sum() for a, b in zip(gv, grads))
    torch.testing.assert_close(dlr, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    'factory',
    [
        lambda: torchopt.adam(0.1, eps_root=1e-10, moment_requires_grad=True),
        lambda: torchopt.sgd(0.1, momentum=0.9, nesterov=True, moment_requires_grad=True),
        lambda: torchopt.rmsprop(0.1, momentum=0.5, centered=True),
        lambda: torchopt.adamw(0.1, eps_root=1e-10, moment_requires_grad=True),
        lambda: torchopt.radam(0.1, moment_requires_grad=True),
        lambda: torchopt.adamax(0.1, moment_requires_grad=True),
        lambda: torchopt.adadelta(0.1, moment_requires_grad=True),
        lambda: torchopt.adagrad(0.1),
        lambda: torchopt.nadam(0.1, moment_requires_grad=True),
    ],
)
def test_second_order_gradcheck(factory):
    """Updates are twice differentiable w.r.t. params and gradients (gradgradcheck)."""
    opt = factory()

    def two_steps(p, g):
        state = opt.init((p,))
        u, state = opt.update((g,), state, params=(p,), inplace=False)
        p1 = torchopt.apply_updates((p,), u, inplace=False)[0]
        u, state = opt.update((g * p1,), state, params=(p1,), inplace=False)
        return torchopt.apply_updates((p1,), u, inplace=False)[0]

    p = torch.randn(4, requires_grad=True)
    g = torch.randn(4, requires_grad=True)
    assert torch.autograd.gradcheck(two_steps, (p, g))
    assert torch.autograd.gradgradcheck(two_steps, (p, g))


def test_adam_meta_gradient_finite_at_zero_second_moment():
    w = torch.zeros(3, requires_grad=True)
    scale = torch.tensor(1.0, requires_grad=True)
    opt = torchopt.adam(0.1, eps_root=1e-8, moment_requires_grad=True)
    state = opt.init((w,))
    g = torch.autograd.grad((scale * w * torch.tensor([1.0, 0.0, 2.0])).sum(), w, create_graph=True)
    u, state = opt.update(g, state, inplace=False)
    new = torchopt.apply_updates((w,), u, inplace=False)[0]
    d = torch.autograd.grad(new.sum(), scale)[0]
    assert torch.isfinite(d)


def test_meta_optimizer_leaves_frozen_parameters_alone():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    net[0].weight.requires_grad_(False)
    frozen = net[0].weight
    opt = torchopt.MetaAdam(net, lr=0.1)
    opt.step(net(torch.randn(5, 3)).pow(2).mean())
    assert net[0].weight is frozen
    assert net[1].weight.grad_fn is not None


def test_meta_optimizer_grad_mode():
    net = nn.Linear(3, 1)
    opt = torchopt.MetaSGD(net, lr=0.1)
    with torch.no_grad():
        loss = net(torch.randn(4, 3)).pow(2).mean()
    with torch.enable_grad():
        loss = net(torch.randn(4, 3)).pow(2).mean()
    with torch.no_grad():
        opt.step(loss)  # plain step: no graph recorded
    assert net.weight.grad_fn is None and net.weight.requires_grad
    loss = net(torch.randn(4, 3)).pow(2).mean()
    with torch.no_grad():
        opt.step(loss, create_graph=True)  # asked for: recorded anyway
    assert net.weight.grad_fn is not None


def test_detach_cuts_the_graph_and_keeps_values():
    net = nn.Linear(3, 1)
    opt = torchopt.MetaAdam(net, lr=0.1)
    for _ in range(3):
        opt.step(net(torch.randn(4, 3)).pow(2).mean())
    before = net.weight.detach().clone()
    assert net.weight.grad_fn is not None
    opt.detach_()
    assert net.weight.grad_fn is None and net.weight.requires_grad
    assert torch.equal(net.weight, before)
    mu = opt.state_dict()[0][0].mu
    assert all(t.grad_fn is None for t in mu)
    opt.step(net(torch.randn(4, 3)).pow(2).mean())  # still usable


def test_meta_optimizer_bad_input():
    with pytest.raises(ValueError, match='no parameters'):
        torchopt.MetaSGD(nn.ReLU(), lr=0.1)
    net = nn.Linear(2, 1)
    opt = torchopt.MetaSGD(net, lr=0.1)
    with pytest.raises(ValueError, match='scalar'):
        opt.step(net(torch.randn(3, 2)))
    with pytest.raises(ValueError, match='does not require grad'):
        opt.step(torch.tensor(1.0))
    other = torch.randn(2, requires_grad=True)
    with pytest.raises(ValueError, match='does not depend'):
        opt.step((other**2).sum())
    with pytest.raises(TypeError, match='tensor'):
        opt.step(1.0)


def test_meta_signatures_defaults():
    import inspect

    assert inspect.signature(torchopt.MetaAdamW).parameters['moment_requires_grad'].default is False
    assert inspect.signature(torchopt.MetaAdam).parameters['moment_requires_grad'].default is True


def test_vmap_over_tasks_equals_loop():
    """MAML-style: torch.func.grad inner steps with a torchopt optimizer, vmapped over tasks."""
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    params = {k: v.detach() for k, v in net.named_parameters()}
    xs, ys = torch.randn(4, 10, 3), torch.randn(4, 10, 1)

    def adapted_loss(p, x, y):
        opt = torchopt.adam(0.1, eps_root=1e-12, moment_requires_grad=False)
        state = opt.init(p)

        def loss_fn(q):
            return ((torch.func.functional_call(net, q, (x,)) - y) ** 2).mean()

        for _ in range(3):
            g = torch.func.grad(loss_fn)(p)
            u, state = opt.update(g, state, inplace=False)
            p = torchopt.apply_updates(p, u, inplace=False)
        return loss_fn(p)

    batched = torch.func.vmap(adapted_loss, in_dims=(None, 0, 0))(params, xs, ys)
    looped = torch.stack([adapted_loss(params, xs[i], ys[i]) for i in range(4)])
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-14)
    meta = torch.func.grad(
        lambda p: torch.func.vmap(adapted_loss, in_dims=(None, 0, 0))(p, xs, ys).sum()
    )(params)
    meta_loop = torch.func.grad(lambda p: sum(adapted_loss(p, xs[i], ys[i]) for i in range(4)))(
        params
    )
    for k in meta:
        torch.testing.assert_close(meta[k], meta_loop[k], rtol=1e-10, atol=1e-12)
