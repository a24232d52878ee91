"""Parity of the fused kernels with core's reference Adam (``torchopt.transform.scale_by_adam``)."""

import pytest
import torch

import torchopt
import torchopt_accel
from torchopt.transform import scale_by_accelerated_adam, scale_by_adam

SIZES = [0, 1, 1025, 2049, (1 << 20) + 3]
SETTINGS = [
    dict(b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0),
    dict(b1=0.5, b2=0.9, eps=1e-3, eps_root=1e-4),
    dict(b1=0.0, b2=0.0, eps=0.0, eps_root=1e-8),
]


def _run(tx, params, grads_per_step, inplace):
    state = tx.init(params)
    outs = []
    for grads in grads_per_step:
        grads = [g.clone() for g in grads]
        updates, state = tx.update(grads, state, inplace=inplace)
        outs.append([u.clone() for u in updates])
    return outs, state


@pytest.mark.parametrize('hyper', SETTINGS)
@pytest.mark.parametrize('inplace', [True, False])
def test_fp64_parity_with_core_adam_on_odd_sizes(hyper, inplace):
    params = [torch.zeros(n, dtype=torch.float64) for n in SIZES]
    steps = [[torch.randn(n, dtype=torch.float64) for n in SIZES] for _ in range(3)]
    ref, ref_state = _run(scale_by_adam(**hyper), params, steps, inplace)
    got, got_state = _run(scale_by_accelerated_adam(**hyper), params, steps, inplace)
    for r_step, g_step in zip(ref, got):
        for r, g in zip(r_step, g_step):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    for r, g in zip(ref_state.mu + ref_state.nu, got_state.mu + got_state.nu):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    assert [float(c) for c in got_state.count] == [float(c) for c in ref_state.count]
    assert all(float(c) == 3 for c in got_state.count)


def test_every_element_is_updated_for_sizes_around_block_boundaries():
    sizes = [1023, 1024, 1025, 1026, 1027, 2049, 2050, 2051, 4097]
    g = [torch.full((n,), 2.0, dtype=torch.float64) for n in sizes]
    m = [torch.zeros(n, dtype=torch.float64) for n in sizes]
    v = [torch.zeros(n, dtype=torch.float64) for n in sizes]
    torchopt_accel.adam_step_(g, m, v, 0.9, 0.999, 0.0, 0.0, 1)
    for t in g:  # first step with eps = 0 gives exactly sign(g) everywhere, tail included
        torch.testing.assert_close(t, torch.ones_like(t), rtol=1e-15, atol=0)


def test_non_contiguous_leaves_match_contiguous():
    base = [torch.randn(8, 6, dtype=torch.float64), torch.randn(40, dtype=torch.float64)]
    views = [base[0].t(), base[1][::3]]
    m = [torch.randn(8, 6, dtype=torch.float64).t(), torch.randn(14, dtype=torch.float64)]
    v = [torch.rand(6, 8, dtype=torch.float64), torch.rand(14, dtype=torch.float64)]
    g_ref, m_ref, v_ref = (
        [t.contiguous() for t in views],
        [t.clone() for t in m],
        [t.clone() for t in v],
    )
    torchopt_accel.adam_step_(views, m, v, 0.9, 0.99, 1e-8, 1e-6, 4)
    torchopt_accel.adam_step_(g_ref, m_ref, v_ref, 0.9, 0.99, 1e-8, 1e-6, 4)
    for a, b in zip(views + m + v, g_ref + m_ref + v_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the strided view wrote through to its base tensor
    torch.testing.assert_close(base[1][::3], g_ref[1], rtol=0, atol=0)


def test_mixed_dtype_groups_match_per_dtype_reference():
    dtypes = [torch.float64, torch.float32, torch.float64, torch.bfloat16, torch.float32]
    params = [torch.zeros(37 * (i + 1), dtype=dt) for i, dt in enumerate(dtypes)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(2)]
    got, _ = _run(scale_by_accelerated_adam(), params, grads, inplace=True)
    ref, _ = _run(scale_by_adam(), params, grads, inplace=True)
    for g, r, dt in zip(got[-1], ref[-1], dtypes):
        assert g.dtype == dt
        tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dt]
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)


def test_mixed_dtype_forward_keeps_leaf_order():
    g = [
        torch.randn(5, dtype=torch.float64),
        torch.randn(3, dtype=torch.float32),
        torch.randn(4, dtype=torch.float64),
    ]
    m, v = [torch.zeros_like(t) for t in g], [torch.zeros_like(t) for t in g]
    u, m2, v2 = torchopt_accel.adam_forward(g, m, v, 0.9, 0.999, 1e-8, 0.0, 1)
    for a, b, c, t in zip(u, m2, v2, g):
        assert a.shape == t.shape and a.dtype == t.dtype
        torch.testing.assert_close(b, 0.1 * t)
        torch.testing.assert_close(c, 0.001 * t * t)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_reduced_precision_on_cpu_matches_float32_math(dtype):
    n = 3000
    g = torch.randn(n).to(dtype)
    m = (0.1 * torch.randn(n)).to(dtype)
    v = torch.rand(n).mul(0.01).to(dtype)
    # reference: the same inputs upcast, one step in float64, rounded to dtype at the end
    ref = [
        t.to(dtype)
        for t in (*_fp64_step(g.double(), m.double(), v.double(), 0.9, 0.999, 1e-8, 0.0, 5),)
    ]
    got = [g.clone(), m.clone(), v.clone()]
    torchopt_accel.adam_step_([got[0]], [got[1]], [got[2]], 0.9, 0.999, 1e-8, 0.0, 5)
    for a, b in zip(got, ref):
        assert a.dtype == dtype
        # one rounding of the result to `dtype` on each side: at most one ulp apart
        torch.testing.assert_close(
            a.float(), b.float(), rtol=2**-7 if dtype == torch.bfloat16 else 2**-10, atol=1e-6
        )


def _fp64_step(g, m, v, b1, b2, eps, eps_root, count):
    m2 = b1 * m + (1 - b1) * g
    v2 = b2 * v + (1 - b2) * g * g
    u = (m2 / (1 - b1**count)) / (torch.sqrt(v2 / (1 - b2**count) + eps_root) + eps)
    return u, m2, v2


@pytest.mark.parametrize('optimizer', ['Adam', 'AdamW'])
def test_torch_like_optimizers_with_accelerated_op_match_torch_optim(optimizer):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    model = model.double()
    ref_model = __import__('copy').deepcopy(model)
    kwargs = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1)
    ours = getattr(torchopt, optimizer)(model.parameters(), use_accelerated_op=True, **kwargs)
    theirs = getattr(torch.optim, optimizer)(ref_model.parameters(), **kwargs)
    x = torch.randn(16, 7, dtype=torch.float64)
    for _ in range(5):
        for opt, net in ((ours, model), (theirs, ref_model)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)


def test_functional_adam_with_accelerated_op_is_the_kernel_path(monkeypatch):
    calls = []
    real = torch.ops.torchopt_accel.adam_step_

    class Spy:
        def __call__(self, *args):
            calls.append(len(args[0]))
            return real(*args)

    monkeypatch.setattr(
        torchopt_accel._ops, '_ops', type('O', (), {'adam_step_': Spy(), 'adam_forward': None})()
    )
    params = {
        'a': torch.zeros(3, dtype=torch.float64),
        'b': torch.zeros(4, dtype=torch.float32),
        'c': torch.zeros(2, dtype=torch.float64),
    }
    opt = torchopt.adam(1e-2, use_accelerated_op=True)
    state = opt.init(params)
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    opt.update(grads, state, inplace=True)
    assert sorted(calls) == [1, 2]  # one multi-tensor call per (device, dtype) group
