"""Exact gradients of ``adam_forward``: gradcheck, second order, torch.func, MAML meta-gradients."""

import copy

import pytest
import torch

import torchopt
import torchopt_accel

HYPER = (0.9, 0.99, 1e-3, 1e-4, 3)


def _inputs(requires_grad=True, shapes=((3, 2), (4,))):
    g = [torch.randn(s, dtype=torch.float64) for s in shapes]
    m = [torch.randn(s, dtype=torch.float64) for s in shapes]
    v = [torch.rand(s, dtype=torch.float64) + 0.1 for s in shapes]
    return [t.requires_grad_(requires_grad) for t in (*g, *m, *v)]


def _fused(*flat, hyper=HYPER):
    n = len(flat) // 3
    u, m, v = torchopt_accel.adam_forward(
        list(flat[:n]), list(flat[n : 2 * n]), list(flat[2 * n :]), *hyper
    )
    return (*u, *m, *v)


def _unrolled(*flat, hyper=HYPER):
    """Adam written with plain torch ops: autograd of this is the reference gradient."""
    b1, b2, eps, eps_root, t = hyper
    n = len(flat) // 3
    us, ms, vs = [], [], []
    for g, m, v in zip(flat[:n], flat[n : 2 * n], flat[2 * n :]):
        m2 = b1 * m + (1 - b1) * g
        v2 = b2 * v + (1 - b2) * g * g
        us.append((m2 / (1 - b1**t)) / (torch.sqrt(v2 / (1 - b2**t) + eps_root) + eps))
        ms.append(m2)
        vs.append(v2)
    return (*us, *ms, *vs)


def test_gradcheck():
    assert torch.autograd.gradcheck(_fused, tuple(_inputs()), eps=1e-6, atol=1e-8)


def test_gradgradcheck():
    assert torch.autograd.gradgradcheck(_fused, tuple(_inputs()), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize('hyper', [HYPER, (0.9, 0.999, 1e-8, 0.0, 1), (0.5, 0.5, 0.1, 0.0, 7)])
def test_backward_equals_unrolled_autograd_including_eps(hyper):
    x = _inputs()
    cot = [torch.randn_like(t) for t in x]
    got = torch.autograd.grad(_fused(*x, hyper=hyper), x, cot)
    ref = torch.autograd.grad(_unrolled(*x, hyper=hyper), x, cot)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_backward_with_only_some_outputs_used():
    x = _inputs()
    n = len(x) // 3
    got = torch.autograd.grad(sum(o.sum() for o in _fused(*x)[:n]), x)
    ref = torch.autograd.grad(sum(o.sum() for o in _unrolled(*x)[:n]), x)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_second_order_equals_unrolled():
    x = _inputs()
    outs_f, outs_r = _fused(*x), _unrolled(*x)
    gf = torch.autograd.grad(sum((o * o).sum() for o in outs_f), x, create_graph=True)
    gr = torch.autograd.grad(sum((o * o).sum() for o in outs_r), x, create_graph=True)
    hf = torch.autograd.grad(sum(g.sum() for g in gf), x)
    hr = torch.autograd.grad(sum(g.sum() for g in gr), x)
    for a, b in zip(hf, hr):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_torch_func_grad_and_jacrev():
    x = [t.detach() for t in _inputs()]

    def loss(fn):
        return lambda *a: sum((o.sin()).sum() for o in fn(*a))

    argnums = tuple(range(len(x)))
    got = torch.func.grad(loss(_fused), argnums=argnums)(*x)
    ref = torch.func.grad(loss(_unrolled), argnums=argnums)(*x)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    jf = torch.func.jacrev(lambda g: _fused(g, *x[1:])[0])(x[0])
    jr = torch.func.jacrev(lambda g: _unrolled(g, *x[1:])[0])(x[0])
    torch.testing.assert_close(jf, jr, rtol=1e-12, atol=1e-14)


def _zero_entry_inputs():
    """First step (m = v = 0) of a gradient whose first entries are exactly 0, eps_root = 0."""
    g = torch.tensor([0.0, 0.0, 0.7, -1.3], dtype=torch.float64)
    return [
        g.requires_grad_(),
        torch.zeros(4, dtype=torch.float64, requires_grad=True),
        torch.zeros(4, dtype=torch.float64, requires_grad=True),
    ]


def test_zero_second_moment_gives_finite_gradients_of_the_right_value():
    # u = c1 g / (bc1 (sqrt(c2 g^2 / bc2) + eps)) has slope c1 / (bc1 eps) at g = 0; autograd
    # through sqrt would give 0/0 there. The other entries must match the unrolled reference.
    hyper = (0.9, 0.999, 1e-3, 0.0, 1)
    b1, _, eps, _, t = hyper
    x = _zero_entry_inputs()
    (dg,) = torch.autograd.grad(_fused(*x, hyper=hyper)[0].sum(), x[0])
    assert torch.isfinite(dg).all()
    torch.testing.assert_close(
        dg[:2],
        torch.full((2,), (1 - b1) / ((1 - b1**t) * eps), dtype=torch.float64),
        rtol=1e-12,
        atol=0,
    )
    (ref,) = torch.autograd.grad(_unrolled(*x, hyper=hyper)[0].sum(), x[0])
    torch.testing.assert_close(dg[2:], ref[2:], rtol=1e-12, atol=1e-14)
    # The differentiable backward (create_graph, torch.func) follows the same rule.
    (dg2,) = torch.autograd.grad(_fused(*x, hyper=hyper)[0].sum(), x[0], create_graph=True)
    torch.testing.assert_close(dg2.detach(), dg, rtol=1e-12, atol=0)
    (h,) = torch.autograd.grad(dg2.sum(), x[0])
    assert torch.isfinite(h).all()
    fg = torch.func.grad(lambda g: _fused(g, *x[1:], hyper=hyper)[0].sum())(x[0].detach())
    torch.testing.assert_close(fg, dg, rtol=1e-12, atol=0)


def test_in_place_step_on_graph_tensors_is_recorded():
    g0, m0, v0 = (torch.randn(5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    g, m, v = g0 * 1.0, m0 * 1.0, v0.abs() + 0.1  # non-leaf graph tensors
    torchopt_accel.adam_step_([g], [m], [v], *HYPER)
    got = torch.autograd.grad((g + m + v).sum(), (g0, m0, v0))
    u, m2, v2 = _unrolled(g0, m0, v0.abs() + 0.1)
    ref = torch.autograd.grad((u + m2 + v2).sum(), (g0, m0, v0))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _maml_meta_grads(net, meta_param, use_accelerated_op, optimizer):
    net = copy.deepcopy(net)
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    kwargs = dict(lr=0.1, eps_root=1e-8, use_accelerated_op=use_accelerated_op)
    if optimizer == 'MetaAdam':
        opt = torchopt.MetaAdam(net, moment_requires_grad=True, **kwargs)
    else:
        opt = torchopt.MetaAdamW(net, weight_decay=0.05, **kwargs)
    for _ in range(3):
        inner = ((net(x) - y) ** 2).mean() + meta_param * sum(
            p.pow(2).sum() for p in net.parameters()
        )
        opt.step(inner)
    outer = ((net(x * 0.5) - y) ** 2).mean()
    return torch.autograd.grad(outer, meta_param)[0]


@pytest.mark.parametrize('optimizer', ['MetaAdam', 'MetaAdamW'])
def test_maml_meta_gradients_match_pure_path(optimizer):
    torch.manual_seed(3)
    net = _Net().double()
    meta_param = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(4)
    ref = _maml_meta_grads(net, meta_param, False, optimizer)
    torch.manual_seed(4)
    got = _maml_meta_grads(net, meta_param, True, optimizer)
    assert ref.abs() > 0
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


def test_vmap_over_a_batch_of_states():
    g, m, v = (torch.randn(4, 6, dtype=torch.float64) for _ in range(3))
    v = v.abs()
    m_shared = torch.randn(6, dtype=torch.float64)

    def step(g, m, v):
        u, m2, v2 = torchopt_accel.adam_forward([g], [m], [v], *HYPER)
        return u[0], m2[0], v2[0]

    got = torch.func.vmap(step, in_dims=(0, None, 0))(g, m_shared, v)
    for i in range(4):
        ref = _unrolled(g[i], m_shared, v[i])
        for a, b in zip(got, ref):
            torch.testing.assert_close(a[i], b, rtol=1e-13, atol=1e-15)
