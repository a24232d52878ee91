"""``adam_apply_``: one fused pass of a full Adam / AdamW step, and core's use of it.

References: ``torch.optim.Adam`` / ``AdamW`` (``foreach=False``, float64) and, for
``eps_root > 0`` (which torch has not), an Adam step written out in float64 torch ops.
"""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torchopt
import torchopt_accel

OPS = torch.ops.torchopt_accel
F64 = torch.float64
SIZES = [0, 1, 1025, 2049]
# (lr, betas, eps, weight_decay, maximize)
SETTINGS = [
    (1e-3, (0.9, 0.999), 1e-8, 0.0, False),
    (1e-2, (0.5, 0.9), 1e-3, 0.1, True),
    (0.1, (0.0, 0.5), 1e-6, 0.5, False),
    (3e-2, (0.8, 0.95), 1e-7, 0.0, True),
]


class CountOps(TorchDispatchMode):
    """Counts the torchopt_accel ops dispatched inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.namespace == 'torchopt_accel':
            self.calls.append((func.__name__.split('.')[0], len(args[0])))
        return func(*args, **(kwargs or {}))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def _reference_apply(p, g, m, v, lr, b1, b2, eps, eps_root, count, wd, decoupled, maximize):
    """One Adam(W) step written out in float64 torch ops (returns new p, m, v)."""
    g = -g if maximize else g
    if decoupled:
        p = p * (1.0 - lr * wd)
    else:
        g = g + wd * p
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    denom = torch.sqrt(v / (1.0 - b2**count) + eps_root) + eps
    return p - lr * (m / (1.0 - b1**count)) / denom, m, v


def _apply_args(dtype=F64, shapes=((3, 5), (7,), ())):
    p = [torch.randn(s, dtype=dtype) for s in shapes]
    g = [torch.randn(s, dtype=dtype) for s in shapes]
    m = [torch.randn(s, dtype=dtype) for s in shapes]
    v = [torch.rand(s, dtype=dtype) for s in shapes]
    return p, g, m, v


# ---------------------------------------------------------------------------------------------
# The op itself.


@pytest.mark.parametrize('dtype', [F64, torch.float32])
@pytest.mark.parametrize(
    ('wd', 'decoupled', 'maximize'), [(0.0, False, False), (0.1, False, True), (0.1, True, False)]
)
def test_opcheck_adam_apply_(dtype, wd, decoupled, maximize):
    args = (*_apply_args(dtype), 1e-2, 0.9, 0.999, 1e-8, 1e-6, 3, wd, decoupled, maximize)
    torch.library.opcheck(OPS.adam_apply_.default, args)


def test_opcheck_adam_apply_non_contiguous():
    p = [torch.randn(6, 4, dtype=F64).t(), torch.randn(9, dtype=F64)[::2]]
    g = [torch.randn(4, 6, dtype=F64), torch.randn(1, 5, dtype=F64).expand(3, 5)[0]]
    m = [torch.randn(6, 4, dtype=F64).t(), torch.randn(5, dtype=F64)]
    v = [torch.rand(4, 12, dtype=F64)[:, ::2], torch.rand(10, dtype=F64)[1::2]]
    torch.library.opcheck(
        OPS.adam_apply_.default, (p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.0, 2, 0.1, True, False)
    )


def test_schema_marks_params_and_moments_as_mutated_not_grads():
    args = OPS.adam_apply_.default._schema.arguments
    written = [a.name for a in args if a.alias_info is not None and a.alias_info.is_write]
    assert written == ['params', 'mu', 'nu']
    assert [a.name for a in args] == [
        'params',
        'grads',
        'mu',
        'nu',
        'lr',
        'b1',
        'b2',
        'eps',
        'eps_root',
        'count',
        'weight_decay',
        'decoupled',
        'maximize',
    ]
    assert 'torchopt_accel::adam_apply_' in torchopt_accel.build_info()['ops']
    assert 'adam_apply_' in torchopt_accel.__all__


@pytest.mark.parametrize('setting', SETTINGS)
@pytest.mark.parametrize('decoupled', [False, True])
def test_fp64_parity_with_torch_optim_over_20_steps(setting, decoupled):
    lr, (b1, b2), eps, wd, maximize = setting
    params = [torch.randn(n, dtype=F64) for n in SIZES] + [torch.randn(33, 31, dtype=F64)]
    ref = [p.clone().requires_grad_() for p in params]
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls(
        ref, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, maximize=maximize, foreach=False
    )
    mu = [torch.zeros_like(p) for p in params]
    nu = [torch.zeros_like(p) for p in params]
    for count in range(1, 21):
        grads = [torch.randn_like(p) for p in params]
        grads_before = [g.clone() for g in grads]
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        opt.step()
        torchopt_accel.adam_apply_(
            params,
            grads,
            mu,
            nu,
            lr,
            b1,
            b2,
            eps,
            0.0,
            count,
            weight_decay=wd,
            decoupled=decoupled,
            maximize=maximize,
        )
        for g, g0 in zip(grads, grads_before):  # the gradient is only read
            torch.testing.assert_close(g, g0, rtol=0, atol=0)
    for p, r, m, v in zip(params, ref, mu, nu):
        torch.testing.assert_close(p, r.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m, opt.state[r]['exp_avg'], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v, opt.state[r]['exp_avg_sq'], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('decoupled', [False, True])
@pytest.mark.parametrize('maximize', [False, True])
def test_eps_root_against_hand_written_reference(decoupled, maximize):
    hyper = dict(lr=5e-2, b1=0.7, b2=0.9, eps=1e-6, eps_root=1e-3)
    params = [torch.randn(n, dtype=F64) for n in SIZES]
    mu = [torch.zeros_like(p) for p in params]
    nu = [torch.zeros_like(p) for p in params]
    ref = [[p.clone(), m.clone(), v.clone()] for p, m, v in zip(params, mu, nu)]
    for count in range(1, 21):
        grads = [torch.randn_like(p) for p in params]
        torchopt_accel.adam_apply_(
            params,
            grads,
            mu,
            nu,
            *hyper.values(),
            count,
            weight_decay=0.2,
            decoupled=decoupled,
            maximize=maximize,
        )
        ref = [
            _reference_apply(*r[:1], g, *r[1:], *hyper.values(), count, 0.2, decoupled, maximize)
            for r, g in zip(ref, grads)
        ]
    for got, want in zip(zip(params, mu, nu), ref):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs_match_reference_and_write_through():
    base_p = torch.randn(8, 6, dtype=F64)
    base_p2 = torch.randn(40, dtype=F64)
    base_p2_before = base_p2.clone()
    params = [base_p.t(), base_p2[::3]]
    grads = [torch.randn(8, 6, dtype=F64).t(), torch.randn(1, 14, dtype=F64).expand(3, 14)[1]]
    mu = [torch.randn(6, 8, dtype=F64), torch.randn(28, dtype=F64)[::2]]
    nu = [torch.rand(8, 6, dtype=F64).t(), torch.rand(14, dtype=F64)]
    assert not any(t.is_contiguous() for t in (params + grads[:1] + mu[1:] + nu[:1]))
    hyper = (1e-2, 0.9, 0.99, 1e-8, 1e-6, 4, 0.3, False, True)
    want = [
        _reference_apply(p.clone(), g.clone(), m.clone(), v.clone(), *hyper)
        for p, g, m, v in zip(params, grads, mu, nu)
    ]
    grads_before = [g.clone() for g in grads]
    OPS.adam_apply_(params, grads, mu, nu, *hyper)
    for got, w in zip(zip(params, mu, nu), want):
        for a, b in zip(got, w):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    # the strided view was written in place; its base's other elements are untouched
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[::3] = False
    torch.testing.assert_close(base_p2[untouched], base_p2_before[untouched], rtol=0, atol=0)
    assert not torch.equal(base_p2[::3], base_p2_before[::3])
    for g, g0 in zip(grads, grads_before):
        torch.testing.assert_close(g, g0, rtol=0, atol=0)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_reduced_precision_matches_float64_math_rounded(dtype):
    p, g, m, v = (
        t.to(dtype)
        for t in (
            torch.randn(3001),
            torch.randn(3001),
            0.1 * torch.randn(3001),
            0.01 * torch.rand(3001),
        )
    )
    want = _reference_apply(
        p.double(),
        g.double(),
        m.double(),
        v.double(),
        1e-2,
        0.9,
        0.999,
        1e-8,
        0.0,
        5,
        0.1,
        True,
        False,
    )
    got = [p.clone(), m.clone(), v.clone()]
    OPS.adam_apply_(
        [got[0]], [g], [got[1]], [got[2]], 1e-2, 0.9, 0.999, 1e-8, 0.0, 5, 0.1, True, False
    )
    tol = {torch.float32: 1e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    for a, b in zip(got, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b.to(dtype).double(), rtol=tol, atol=1e-6)


def test_one_op_call_per_device_dtype_group_in_leaf_order():
    dtypes = [F64, torch.float32, F64, torch.float32, F64]
    params = [torch.randn(5 + i, dtype=dt) for i, dt in enumerate(dtypes)]
    grads = [torch.randn_like(p) for p in params]
    mu, nu = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    want = [
        _reference_apply(
            p.double(),
            g.double(),
            m.double(),
            v.double(),
            0.1,
            0.9,
            0.999,
            1e-8,
            0.0,
            1,
            0.0,
            False,
            False,
        )
        for p, g, m, v in zip(params, grads, mu, nu)
    ]
    with CountOps() as counter:
        torchopt_accel.adam_apply_(params, grads, mu, nu, 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    assert counter.calls == [('adam_apply_', 3), ('adam_apply_', 2)]
    for p, w, dt in zip(params, want, dtypes):
        tol = 1e-12 if dt == F64 else 1e-6
        torch.testing.assert_close(p.double(), w[0], rtol=tol, atol=tol)


def test_every_element_is_updated_around_block_boundaries():
    sizes = [1023, 1024, 1025, 2049, 4097, 32767, 32768, 32769, 65537]
    params = [torch.zeros(n, dtype=F64) for n in sizes]
    grads = [torch.full((n,), -3.0, dtype=F64) for n in sizes]
    mu, nu = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    # first step, eps = 0: p = -lr * sign(g) = +0.5 exactly, for every element
    OPS.adam_apply_(params, grads, mu, nu, 0.5, 0.9, 0.999, 0.0, 0.0, 1, 0.0, False, False)
    for p in params:
        torch.testing.assert_close(p, torch.full_like(p, 0.5), rtol=1e-15, atol=0)


def test_meta_device_and_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    p, g, m, v = ([torch.empty(4, 3, device='meta')] for _ in range(4))
    OPS.adam_apply_(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 0.0, False, False)
    with FakeTensorMode():
        args = _apply_args(torch.float32)
        torchopt_accel.adam_apply_(*args, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    assert args[0][0].shape == (3, 5)


@pytest.mark.parametrize(
    ('mutate', 'match'),
    [
        (lambda a: a.update(m=a['m'][:-1]), '`mu` has 2 tensors but `params` has 3'),
        (lambda a: a.update(g=[a['g'][0].float(), *a['g'][1:]]), r'one dtype .*`grads\[0\]`'),
        (lambda a: a.update(v=[a['v'][0].reshape(-1), *a['v'][1:]]), r'`nu\[0\]` has shape'),
        (lambda a: a.update(lr=-1.0), '`lr` must be a finite number >= 0'),
        (lambda a: a.update(lr=float('nan')), '`lr` must be a finite number >= 0'),
        (lambda a: a.update(wd=-0.1), '`weight_decay` must be a finite number >= 0'),
        (lambda a: a.update(b1=1.0), r'`b1` must be in \[0, 1\)'),
        (lambda a: a.update(count=0), '`count` must be an integer >= 1'),
        (lambda a: a.update(g=list(a['p'])), r'`params\[0\]` and `grads\[0\]` share memory'),
        (lambda a: a.update(m=[a['v'][0], *a['m'][1:]]), r'`mu\[0\]` and `nu\[0\]` share memory'),
        (
            lambda a: a.update(p=[torch.randn(1, 5, dtype=F64).expand(3, 5), *a['p'][1:]]),
            r'`params\[0\]` is written in place but several of its elements share memory',
        ),
    ],
)
def test_op_rejects_bad_arguments_naming_them(mutate, match):
    p, g, m, v = _apply_args()
    a = dict(p=p, g=g, m=m, v=v, lr=1e-3, b1=0.9, count=1, wd=0.0)
    mutate(a)
    with pytest.raises(RuntimeError, match=match):
        OPS.adam_apply_(
            a['p'],
            a['g'],
            a['m'],
            a['v'],
            a['lr'],
            a['b1'],
            0.999,
            1e-8,
            0.0,
            a['count'],
            a['wd'],
            False,
            False,
        )


def test_python_entry_validates_arguments():
    p, g, m, v = _apply_args()
    hyper = (1e-3, 0.9, 0.999, 1e-8, 0.0)
    with pytest.raises(ValueError, match='one tensor per leaf'):
        torchopt_accel.adam_apply_(p, g[:1], m, v, *hyper, 1)
    with pytest.raises(ValueError, match='one tensor per leaf'):
        torchopt_accel.adam_apply_(p[:2], g, m, v, *hyper, 1)
    with pytest.raises(TypeError, match='`params` must be a list of tensors'):
        torchopt_accel.adam_apply_(p[0], g, m, v, *hyper, 1)
    with pytest.raises(TypeError, match='`grads` must be a list of tensors'):
        torchopt_accel.adam_apply_(p, g[0], m, v, *hyper, 1)
    with pytest.raises(ValueError, match='`count` must be a Python int >= 1'):
        torchopt_accel.adam_apply_(p, g, m, v, *hyper, 0)
    p[0].requires_grad_()
    with pytest.raises(RuntimeError, match=r'not differentiable: call it under torch.no_grad'):
        torchopt_accel.adam_apply_(p, g, m, v, *hyper, 1)
    with torch.no_grad():  # as torch.optim runs it
        torchopt_accel.adam_apply_(p, g, m, v, *hyper, 1)


def test_all_cpu_kernel_variants_agree():
    """Every compiled CPU variant gives the same float64 step (subprocesses, one per variant)."""
    code = (
        'import torch, torchopt_accel\n'
        'torch.manual_seed(0)\n'
        'mk = lambda f: [f(1027, dtype=torch.float64), f(70, dtype=torch.float64)]\n'
        'out = []\n'
        'for dec in (False, True):\n'
        '    p, g, m, v = mk(torch.randn), mk(torch.randn), mk(torch.randn), mk(torch.rand)\n'
        '    torch.ops.torchopt_accel.adam_apply_(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 1e-6, 3,'
        ' 0.2, dec, not dec)\n'
        '    out += [t.tolist() for t in p + m + v]\n'
        'print(torchopt_accel.build_info()["cpu_capability"]); print(repr(out))\n'
    )
    outputs = {}
    for cap in torchopt_accel.build_info()['cpu_capabilities_compiled']:
        env = {**os.environ, 'ATEN_CPU_CAPABILITY': cap.lower(), 'OMP_NUM_THREADS': '1'}
        res = subprocess.run(
            [sys.executable, '-c', code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        chosen, values = res.stdout.splitlines()
        outputs[chosen] = [torch.tensor(x, dtype=F64) for x in eval(values)]  # noqa: S307
    assert 'DEFAULT' in outputs
    ref = outputs['DEFAULT']
    for got in outputs.values():
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Core: torchopt.Adam / AdamW(use_accelerated_op=True).step() runs adam_apply_.


def _train_pair(ours_cls, theirs_cls, params, n_steps, none_grad_at=(), **kwargs):
    ours_params = [p.clone().requires_grad_() for p in params]
    ref_params = [p.clone().requires_grad_() for p in params]
    ours = ours_cls(ours_params, use_accelerated_op=True, **kwargs)
    theirs = theirs_cls(ref_params, foreach=False, **kwargs)
    counter = CountOps()
    for step in range(n_steps):
        for i, (a, b) in enumerate(zip(ours_params, ref_params)):
            g = None if (step, i) in none_grad_at else torch.randn_like(a)
            a.grad = None if g is None else g.clone()
            b.grad = None if g is None else g.clone()
        with counter:
            ours.step()
        theirs.step()
    return ours_params, ref_params, counter


@pytest.mark.parametrize('setting', SETTINGS)
@pytest.mark.parametrize('name', ['Adam', 'AdamW'])
def test_torchopt_step_goes_through_adam_apply_and_matches_torch_optim(setting, name):
    lr, betas, eps, wd, maximize = setting
    params = [torch.randn(n, dtype=F64) for n in SIZES] + [torch.randn(5, 7, dtype=F64)]
    ours, ref, counter = _train_pair(
        getattr(torchopt, name),
        getattr(torch.optim, name),
        params,
        20,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=wd,
        maximize=maximize,
    )
    assert counter.calls == [('adam_apply_', len(params))] * 20  # one fused call per step
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_step_with_a_missing_grad_fuses_the_rest_and_matches_torch_optim():
    """A missing gradient skips that parameter (its step count stays) and the rest still fuse."""
    params = [torch.randn(n, dtype=F64) for n in (3, 1025, 4)]
    ours, ref, counter = _train_pair(
        torchopt.Adam,
        torch.optim.Adam,
        params,
        6,
        none_grad_at={(2, 1), (3, 0)},
        lr=1e-2,
        weight_decay=0.1,
    )
    # one kernel call per group of equal step counts: 1, 1, 1 (step 2 skips leaf 1), then 2
    assert counter.names() == ['adam_apply_'] * 9
    assert counter.calls[2] == ('adam_apply_', 2)
    for a, b in zip(ours, ref):  # per-parameter counts: every leaf follows torch.optim
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_eps_root_step_uses_the_kernel_and_matches_the_composed_chain():
    params = [torch.randn(n, dtype=F64) for n in (1, 1025, 6)]
    kwargs = dict(lr=2e-2, betas=(0.8, 0.9), eps=1e-6, eps_root=1e-4, weight_decay=0.05)
    for cls, decoupled in ((torchopt.Adam, False), (torchopt.AdamW, True)):
        ours_params = [p.clone().requires_grad_() for p in params]
        opt = cls(ours_params, use_accelerated_op=True, **kwargs)
        mu = [torch.zeros_like(p) for p in params]
        nu = [torch.zeros_like(p) for p in params]
        want = [p.clone() for p in params]
        with CountOps() as counter:
            for count in range(1, 11):
                grads = [torch.randn_like(p) for p in params]
                for p, g in zip(ours_params, grads):
                    p.grad = g.clone()
                opt.step()
                out = [
                    _reference_apply(
                        w, g, m, v, 2e-2, 0.8, 0.9, 1e-6, 1e-4, count, 0.05, decoupled, False
                    )
                    for w, g, m, v in zip(want, grads, mu, nu)
                ]
                want, mu, nu = (list(x) for x in zip(*out))
        assert counter.names() == ['adam_apply_'] * 10
        for a, b in zip(ours_params, want):
            torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-12)


def test_fused_path_only_for_constant_lr_and_no_mask():
    assert torchopt.adam(1e-3, use_accelerated_op=True).fused is not None
    assert torchopt.adam(1e-3, eps_root=1e-8, use_accelerated_op=True).fused is not None
    assert torchopt.adam(lambda c: 1e-3, use_accelerated_op=True).fused is None
    assert torchopt.adamw(1e-3, use_accelerated_op=True).fused is not None
    assert torchopt.adamw(1e-3, mask=lambda p: p, use_accelerated_op=True).fused is None


def test_accel_adam_is_not_eligible_without_adam_apply_(monkeypatch):
    from torchopt import _kernels, accelerated_op

    params = (torch.randn(3, dtype=F64),)
    grads = (torch.randn(3, dtype=F64),)
    impl = torchopt.adam(1e-3, eps_root=1e-8, use_accelerated_op=True)
    state = impl.init(params)

    def apply(p, g, s):
        return _kernels.run_fused(impl.fused, p, g, s, None)

    assert apply(params, (None,), state) is state  # nothing to update: the state as it was
    old_build = SimpleNamespace(
        adam_step_=torchopt_accel.adam_step_, adam_forward=torchopt_accel.adam_forward
    )
    monkeypatch.setattr(accelerated_op, 'kernels', lambda devices=(): old_build)
    before = params[0].clone()
    assert apply(params, grads, state) is None  # an older torchopt_accel: composed chain runs
    monkeypatch.setattr(accelerated_op, 'kernels', lambda devices=(): None)
    assert apply(params, grads, state) is None  # no plugin (the facade warned)
    torch.testing.assert_close(params[0], before, rtol=0, atol=0)
    assert float(state[0].count[0]) == 0  # nothing advanced on the refused attempts
    monkeypatch.undo()
    new_state = apply(params, grads, state)
    assert new_state is not None and not torch.equal(params[0], before)


def test_complex_or_sparse_leaves_fall_back_to_the_composed_chain():
    from torchopt import _kernels

    fused = torchopt.adamw(1e-3, use_accelerated_op=True).fused

    def apply(p, g, s):
        return _kernels.run_fused(fused, p, g, s, None)

    params = (torch.randn(3, dtype=torch.complex128),)
    state = torchopt.adamw(1e-3, use_accelerated_op=True).init(params)
    assert apply(params, (torch.randn_like(params[0]),), state) is None
    params = (torch.randn(3, dtype=F64),)
    state = torchopt.adamw(1e-3, use_accelerated_op=True).init(params)
    assert apply(params, (torch.randn(3, dtype=F64).to_sparse(),), state) is None
    assert apply(params, (torch.randn(3, dtype=torch.float32),), state) is None


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU or a CUDA build).


@pytest.mark.cuda
@pytest.mark.parametrize('decoupled', [False, True])
def test_cuda_apply_matches_cpu_fp64_on_every_size(decoupled):
    sizes = [0, 1, 1023, 1024, 1025, 2049, 4097, (1 << 20) + 3]
    p, g, m, v = (
        [f(n, dtype=F64, device='cuda') for n in sizes]
        for f in (torch.randn, torch.randn, torch.randn, torch.rand)
    )
    cpu = [[t.cpu() for t in ts] for ts in (p, g, m, v)]
    hyper = (1e-2, 0.9, 0.999, 1e-8, 1e-6, 3, 0.1, decoupled, not decoupled)
    OPS.adam_apply_(p, g, m, v, *hyper)
    OPS.adam_apply_(*cpu, *hyper)
    for a, b in zip(p + m + v, cpu[0] + cpu[2] + cpu[3]):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-14)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_apply_reduced_precision_matches_cpu(dtype):
    p, g, m, v = (
        [f(n, dtype=dtype, device='cuda') for n in (1, 1025, 70001)]
        for f in (torch.randn, torch.randn, torch.randn, torch.rand)
    )
    cpu = [[t.cpu() for t in ts] for ts in (p, g, m, v)]
    hyper = (1e-2, 0.9, 0.999, 1e-8, 0.0, 3, 0.1, True, False)
    OPS.adam_apply_(p, g, m, v, *hyper)
    OPS.adam_apply_(*cpu, *hyper)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    for a, b in zip(p + m + v, cpu[0] + cpu[2] + cpu[3]):
        torch.testing.assert_close(a.cpu().float(), b.float(), rtol=tol, atol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize('name', ['Adam', 'AdamW'])
def test_cuda_torchopt_step_matches_torch_optim(name):
    params = [torch.randn(n, dtype=F64, device='cuda') for n in (1, 1025, 70001)]
    ours, ref, counter = _train_pair(
        getattr(torchopt, name),
        getattr(torch.optim, name),
        params,
        10,
        lr=1e-2,
        weight_decay=0.1,
        maximize=True,
    )
    assert counter.names() == ['adam_apply_'] * 10
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
def test_cuda_opcheck_adam_apply_():
    p, g, m, v = (
        [f(n, dtype=F64, device='cuda') for n in (5, 1025)]
        for f in (torch.randn, torch.randn, torch.randn, torch.rand)
    )
    torch.library.opcheck(
        OPS.adam_apply_.default, (p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.0, 2, 0.1, False, True)
    )
