"""``sgd_update_``: the in-place momentum-SGD update in one pass (read g, b, [p]; write b, g).

References: ``torch.optim.SGD`` (``foreach=False``) and the plain-torch
``torchopt_accel._ops.sgd_update_reference``, both in float64 (float32 with float32 tolerances).
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torchopt_accel
from torchopt_accel._ops import sgd_update_reference

OPS = torch.ops.torchopt_accel
F64 = torch.float64
SIZES = [0, 1, 1025, 2049, (33, 31)]
# (lr, momentum, dampening, weight_decay, nesterov, maximize)
SETTINGS = [
    (0.1, 0.9, 0.0, 0.0, False, False),
    (0.05, 0.9, 0.0, 0.0, True, False),
    (0.02, 0.8, 0.3, 0.0, False, False),
    (0.1, 0.5, 0.0, 0.01, False, True),
    (0.03, 0.95, 0.1, 0.2, False, True),
    (0.2, 0.7, 0.0, 0.05, True, True),
]
IDS = ['plain', 'nesterov', 'dampening', 'wd-maximize', 'all-but-nesterov', 'nesterov-wd-max']
TOL = {F64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


class CountOps(TorchDispatchMode):
    """Counts the torchopt_accel ops dispatched inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.namespace == 'torchopt_accel':
            self.calls.append((func.__name__.split('.')[0], len(args[0])))
        return func(*args, **(kwargs or {}))


def _hyper(setting, first_step=False):
    lr, momentum, dampening, wd, nesterov, maximize = setting
    return dict(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=wd,
        nesterov=nesterov,
        maximize=maximize,
        first_step=first_step,
    )


def _op_args(hyper):
    keys = ('lr', 'momentum', 'dampening', 'weight_decay', 'nesterov', 'maximize', 'first_step')
    return tuple(hyper[k] for k in keys)


def _lists(dtype=F64, shapes=((3, 5), (7,), ())):
    return tuple([torch.randn(s, dtype=dtype) for s in shapes] for _ in range(3))


# ---------------------------------------------------------------------------------------------
# Schema, opcheck, registration.


def test_schema_marks_grads_and_bufs_as_mutated_not_params():
    args = OPS.sgd_update_.default._schema.arguments
    written = [a.name for a in args if a.alias_info is not None and a.alias_info.is_write]
    assert written == ['grads', 'bufs']
    assert [a.name for a in args] == [
        'grads',
        'bufs',
        'params',
        'lr',
        'momentum',
        'dampening',
        'weight_decay',
        'nesterov',
        'maximize',
        'first_step',
    ]
    assert 'torchopt_accel::sgd_update_' in torchopt_accel.build_info()['ops']
    assert 'sgd_update_' in torchopt_accel.__all__


@pytest.mark.parametrize('dtype', [F64, torch.float32])
@pytest.mark.parametrize('first_step', [True, False])
@pytest.mark.parametrize('setting', SETTINGS, ids=IDS)
def test_opcheck_sgd_update_(dtype, first_step, setting):
    g, b, p = _lists(dtype)
    hyper = _hyper(setting, first_step)
    if hyper['weight_decay'] == 0.0:
        p = []
    torch.library.opcheck(OPS.sgd_update_.default, (g, b, p, *_op_args(hyper)))


def test_opcheck_sgd_update_non_contiguous():
    g = [torch.randn(6, 4, dtype=F64).t(), torch.randn(9, dtype=F64)[::2]]
    b = [torch.randn(4, 6, dtype=F64), torch.randn(10, dtype=F64)[1::2]]
    p = [torch.randn(4, 12, dtype=F64)[:, ::2], torch.randn(1, 5, dtype=F64).expand(3, 5)[0]]
    torch.library.opcheck(
        OPS.sgd_update_.default, (g, b, p, 0.1, 0.9, 0.1, 0.01, False, True, False)
    )


def test_autograd_is_registered_and_refuses_to_record():
    from torch.testing._internal.optests.autograd_registration import (
        autograd_registration_check,
    )

    assert torch._C._dispatch_has_kernel_for_dispatch_key('torchopt_accel::sgd_update_', 'Autograd')
    g, b, p = _lists()
    w = torch.randn(3, 5, dtype=F64, requires_grad=True)
    autograd_registration_check(
        OPS.sgd_update_.default, ([w], [b[0]], [], 0.1, 0.9, 0.0, 0.0, False, False, False), {}
    )
    with pytest.raises(RuntimeError, match=r'`grads\[0\]` requires grad .* torch.no_grad'):
        OPS.sgd_update_([w * 2], [b[0]], [], 0.1, 0.9, 0.0, 0.0, False, False, False)
    with pytest.raises(RuntimeError, match=r'`bufs\[1\]` requires grad'):
        OPS.sgd_update_(
            g, [b[0], b[1].requires_grad_(), b[2]], [], 0.1, 0.9, 0.0, 0.0, False, False, False
        )
    b[1].requires_grad_(False)
    ps = [t.requires_grad_() for t in p]
    with pytest.raises(RuntimeError, match=r'`params\[0\]` requires grad'):
        OPS.sgd_update_(g, b, ps, 0.1, 0.9, 0.0, 0.01, False, False, False)
    before = [t.clone() for t in g]
    # params that require grad are not read without weight decay; torch.optim runs under no_grad
    OPS.sgd_update_(g, b, ps, 0.1, 0.9, 0.0, 0.0, False, False, False)
    assert not torch.equal(g[0], before[0])
    with torch.no_grad():
        OPS.sgd_update_(g, b, ps, 0.1, 0.9, 0.0, 0.01, False, False, False)
        torchopt_accel.sgd_update_([w], [b[0]], lr=0.1, momentum=0.9)


def test_written_lists_bump_their_version_counters():
    g, b, p = _lists()
    versions = [t._version for t in (*g, *b, *p)]
    OPS.sgd_update_(g, b, p, 0.1, 0.9, 0.0, 0.01, False, False, False)
    after = [t._version for t in (*g, *b, *p)]
    assert after[:6] == [v + 1 for v in versions[:6]] and after[6:] == versions[6:]
    # a graph that saved a buffer for backward refuses to use it once the update wrote it
    x = torch.randn(3, 5, dtype=F64, requires_grad=True)
    y = (x * b[0]).sum()
    with torch.no_grad():
        OPS.sgd_update_(g, b, [], 0.1, 0.9, 0.0, 0.0, False, False, False)
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        y.backward()


# ---------------------------------------------------------------------------------------------
# Numbers.


@pytest.mark.parametrize('dtype', [F64, torch.float32])
@pytest.mark.parametrize('setting', SETTINGS, ids=IDS)
def test_parity_with_reference_over_20_steps(dtype, setting):
    params = [torch.randn(s, dtype=dtype) for s in SIZES]
    bufs = [torch.zeros_like(p) for p in params]
    ref_bufs = [b.clone() for b in bufs]
    for step in range(20):
        grads = [torch.randn_like(p) for p in params]
        hyper = _hyper(setting, first_step=step == 0)
        want_u, ref_bufs = sgd_update_reference(grads, ref_bufs, params, **hyper)
        params_before = [p.clone() for p in params]
        torchopt_accel.sgd_update_(grads, bufs, params, **hyper)
        for u, w, b, rb in zip(grads, want_u, bufs, ref_bufs):
            torch.testing.assert_close(u, w, **TOL[dtype])
            torch.testing.assert_close(b, rb, **TOL[dtype])
        for p, p0 in zip(params, params_before):  # the parameters are only read
            torch.testing.assert_close(p, p0, rtol=0, atol=0)
        torch._foreach_add_(params, grads)


@pytest.mark.parametrize('dtype', [F64, torch.float32])
@pytest.mark.parametrize('setting', SETTINGS, ids=IDS)
def test_parity_with_torch_optim_sgd_over_20_steps(dtype, setting):
    lr, momentum, dampening, wd, nesterov, maximize = setting
    params = [torch.randn(s, dtype=dtype) for s in SIZES]
    ref = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.SGD(
        ref,
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=wd,
        nesterov=nesterov,
        maximize=maximize,
        foreach=False,
    )
    bufs = [torch.empty_like(p) for p in params]  # not read on the first step
    for step in range(20):
        grads = [torch.randn_like(p) for p in params]
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        opt.step()
        torchopt_accel.sgd_update_(
            grads,
            bufs,
            params if wd else [],
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=wd,
            nesterov=nesterov,
            maximize=maximize,
            first_step=step == 0,
        )
        torch._foreach_add_(params, grads)
    tol = {F64: dict(rtol=1e-11, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}[dtype]
    for p, r, b in zip(params, ref, bufs):
        torch.testing.assert_close(p, r.detach(), **tol)
        torch.testing.assert_close(b, opt.state[r]['momentum_buffer'], **tol)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_reduced_precision_is_float_math_rounded(dtype):
    g, b, p = (torch.randn(3001).to(dtype) for _ in range(3))
    for first_step in (True, False):
        hyper = dict(
            lr=0.1,
            momentum=0.9,
            dampening=0.1,
            weight_decay=0.01,
            nesterov=False,
            maximize=True,
            first_step=first_step,
        )
        want_u, want_b = sgd_update_reference([g.float()], [b.float()], [p.float()], **hyper)
        got_g, got_b = g.clone(), b.clone()
        torchopt_accel.sgd_update_([got_g], [got_b], [p], **hyper)
        assert got_g.dtype == dtype and got_b.dtype == dtype
        # float math (fused multiply-adds: within one rounding), one rounding at the store
        tol = dict(rtol=2**-7 if dtype == torch.bfloat16 else 2**-10, atol=1e-6)
        torch.testing.assert_close(got_g, want_u[0].to(dtype), **tol)
        torch.testing.assert_close(got_b, want_b[0].to(dtype), **tol)


def test_every_element_is_updated_around_chunk_boundaries():
    sizes = [1023, 1024, 1025, 32767, 32768, 32769, 65537, 131073]
    g = [torch.full((n,), 2.0, dtype=F64) for n in sizes]
    b = [torch.full((n,), 1.0, dtype=F64) for n in sizes]
    # b = 0.5 * 1 + 1 * 2 = 2.5, u = -0.5 * 2.5 = -1.25 exactly, for every element
    OPS.sgd_update_(g, b, [], 0.5, 0.5, 0.0, 0.0, False, False, False)
    for u, m in zip(g, b):
        torch.testing.assert_close(u, torch.full_like(u, -1.25), rtol=0, atol=0)
        torch.testing.assert_close(m, torch.full_like(m, 2.5), rtol=0, atol=0)


def test_many_threads_give_the_single_thread_result():
    g, b, p = ([torch.randn(300_001, dtype=F64), torch.randn(70_000, dtype=F64)] for _ in range(3))
    one = [[t.clone() for t in ts] for ts in (g, b)]
    OPS.sgd_update_(*one, p, 0.1, 0.9, 0.0, 0.01, True, False, False)
    torch.set_num_threads(2)  # the fixture restores the setting
    OPS.sgd_update_(g, b, p, 0.1, 0.9, 0.0, 0.01, True, False, False)
    for a, c in zip(g + b, one[0] + one[1]):
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_non_contiguous_leaves_match_reference_and_write_through():
    base_g = torch.randn(40, dtype=F64)
    base_before = base_g.clone()
    g = [torch.randn(8, 6, dtype=F64).t(), base_g[::3]]
    b = [torch.randn(6, 8, dtype=F64), torch.randn(28, dtype=F64)[::2]]
    p = [torch.randn(8, 6, dtype=F64).t(), torch.randn(1, 14, dtype=F64).expand(3, 14)[1]]
    hyper = dict(
        lr=0.1,
        momentum=0.9,
        dampening=0.2,
        weight_decay=0.3,
        nesterov=False,
        maximize=True,
        first_step=False,
    )
    want_u, want_b = sgd_update_reference(
        [t.clone() for t in g], [t.clone() for t in b], p, **hyper
    )
    torchopt_accel.sgd_update_(g, b, p, **hyper)
    for got, want in zip(g + b, want_u + want_b):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[::3] = False
    torch.testing.assert_close(base_g[untouched], base_before[untouched], rtol=0, atol=0)
    assert not torch.equal(base_g[::3], base_before[::3])


def test_one_op_call_per_device_dtype_group_in_leaf_order():
    dtypes = [F64, torch.float32, F64, torch.float32, F64]
    g = [torch.randn(5 + i, dtype=dt) for i, dt in enumerate(dtypes)]
    b = [torch.randn_like(t) for t in g]
    p = [torch.randn_like(t) for t in g]
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)
    want_u, want_b = sgd_update_reference(
        [t.double() for t in g], [t.double() for t in b], [t.double() for t in p], **hyper
    )
    with CountOps() as counter:
        torchopt_accel.sgd_update_(g, b, p, **hyper)
    assert counter.calls == [('sgd_update_', 3), ('sgd_update_', 2)]
    for got, want, dt in zip(g + b, want_u + want_b, dtypes + dtypes):
        assert got.dtype == dt
        torch.testing.assert_close(got.double(), want, **TOL[dt])


def test_a_bad_leaf_in_a_later_group_writes_nothing():
    g = [torch.randn(4, dtype=F64), torch.randn(3, dtype=torch.float32)]
    b = [torch.randn(4, dtype=F64), torch.randn(2, dtype=torch.float32)]  # b[1]: wrong shape
    before = [t.clone() for t in g + b]
    with pytest.raises(RuntimeError, match=r'`bufs\[1\]` is \(2,\)'):
        torchopt_accel.sgd_update_(g, b, lr=0.1, momentum=0.9)
    for t, t0 in zip(g + b, before):
        torch.testing.assert_close(t, t0, rtol=0, atol=0)


def test_meta_device_fake_tensors_and_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    g, b = ([torch.empty(4, 3, device='meta')] for _ in range(2))
    OPS.sgd_update_(g, b, [], 0.1, 0.9, 0.0, 0.0, False, False, True)
    with pytest.raises(RuntimeError, match='leaf-aligned'):
        OPS.sgd_update_(g, b + b, [], 0.1, 0.9, 0.0, 0.0, False, False, True)
    with FakeTensorMode():
        g, b, p = _lists(torch.float32)
        torchopt_accel.sgd_update_(g, b, p, lr=0.1, momentum=0.9, weight_decay=0.1)
    assert g[0].shape == (3, 5)


@pytest.mark.parametrize('first_step', [True, False])
def test_compiled_fullgraph_matches_eager(first_step):
    torch._dynamo.reset()

    def step(params, grads, bufs):
        torchopt_accel.sgd_update_(
            grads,
            bufs,
            params,
            lr=0.1,
            momentum=0.9,
            dampening=0.1,
            weight_decay=0.01,
            maximize=True,
            first_step=first_step,
        )
        torch._foreach_add_(params, grads)
        return params[0].sum()

    compiled = torch.compile(step, fullgraph=True, backend='aot_eager')  # a break would raise
    eager_args = _lists()
    comp_args = tuple([t.clone() for t in ts] for ts in eager_args)
    for _ in range(2):
        want = step(*eager_args)
        got = compiled(*comp_args)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for a, c in zip(sum(comp_args, []), sum(eager_args, [])):
        torch.testing.assert_close(a, c, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    ('mutate', 'match'),
    [
        (lambda a: a.update(b=a['b'][:-1]), '`bufs` has 2 tensors but `grads` has 3'),
        (lambda a: a.update(p=a['p'][:-1]), '`params` has 2 tensors but `grads` has 3'),
        (lambda a: a.update(p=[]), r'`params` has 0 tensors .* weight_decay != 0'),
        (lambda a: a.update(b=[a['b'][0].float(), *a['b'][1:]]), r'one dtype .*`bufs\[0\]`'),
        (lambda a: a.update(p=[*a['p'][:2], a['p'][2].float()]), r'one dtype .*`params\[2\]`'),
        (lambda a: a.update(b=[a['b'][0].reshape(-1), *a['b'][1:]]), r'`bufs\[0\]` has shape'),
        (lambda a: a.update(lr=-1.0), '`lr` must be a finite number >= 0'),
        (lambda a: a.update(lr=float('inf')), '`lr` must be a finite number >= 0'),
        (lambda a: a.update(mom=-0.1), '`momentum` must be a finite number >= 0'),
        (lambda a: a.update(damp=float('nan')), '`dampening` must be a finite number'),
        (lambda a: a.update(wd=-0.1), '`weight_decay` must be a finite number >= 0'),
        (lambda a: a.update(nesterov=True, damp=0.1), '`nesterov=True` requires'),
        (lambda a: a.update(b=list(a['g'])), r'`grads\[0\]` and `bufs\[0\]` share memory'),
        (lambda a: a.update(p=[a['g'][0], *a['p'][1:]]), r'`grads\[0\]` and `params\[0\]` share'),
        (
            lambda a: a.update(b=[a['b'][0], a['b'][1], a['b'][1][4]]),
            r'`bufs\[[12]\]` and `bufs\[[12]\]` share memory',
        ),
        (
            lambda a: a.update(p=[a['p'][0], a['p'][1], a['g'][1][3]]),
            r'`(grads\[1\]|params\[2\])` and `(grads\[1\]|params\[2\])` share memory',
        ),
        (
            lambda a: a.update(g=[a['g'][0], a['g'][1], a['b'][0][1, 2]]),
            r'`(grads\[2\]|bufs\[0\])` and `(grads\[2\]|bufs\[0\])` share memory',
        ),
        (
            lambda a: a.update(g=[torch.randn(1, 5, dtype=F64).expand(3, 5), *a['g'][1:]]),
            r'`grads\[0\]` is written in place but several of its elements share memory',
        ),
        (
            lambda a: a.update(
                g=[t.long() for t in a['g']],
                b=[t.long() for t in a['b']],
                p=[t.long() for t in a['p']],
            ),
            'expected float32, float64',
        ),
    ],
)
def test_op_rejects_bad_arguments_naming_them(mutate, match):
    g, b, p = _lists()
    a = dict(g=g, b=b, p=p, lr=0.1, mom=0.9, damp=0.0, wd=0.01, nesterov=False)
    mutate(a)
    before = [t.clone() for t in g + b]
    with pytest.raises(RuntimeError, match=match):
        OPS.sgd_update_(
            a['g'],
            a['b'],
            a['p'],
            a['lr'],
            a['mom'],
            a['damp'],
            a['wd'],
            a['nesterov'],
            False,
            False,
        )
    for t, t0 in zip(g + b, before):  # nothing was written
        torch.testing.assert_close(t, t0, rtol=0, atol=0, equal_nan=True)


def test_python_entry_validates_arguments():
    g, b, p = _lists()
    with pytest.raises(ValueError, match='one tensor per leaf'):
        torchopt_accel.sgd_update_(g, b[:1], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match='one tensor per leaf'):
        torchopt_accel.sgd_update_(g, b, p[:2], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match='`params` must have one tensor per leaf when weight'):
        torchopt_accel.sgd_update_(g, b, lr=0.1, momentum=0.9, weight_decay=0.1)
    with pytest.raises(TypeError, match='`grads` must be a list of tensors'):
        torchopt_accel.sgd_update_(g[0], b, lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match='`bufs` must be a list of tensors'):
        torchopt_accel.sgd_update_(g, b[0], lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match='positional arguments'):
        torchopt_accel.sgd_update_(g, b, p, 0.1, 0.9)  # hyper-parameters are keyword-only
    torchopt_accel.sgd_update_([], [], lr=0.1, momentum=0.9)  # nothing to do


_DANGEROUS = textwrap.dedent(
    r"""
    import torch, torchopt_accel
    op = torch.ops.torchopt_accel.sgd_update_
    F = torch.float64
    H = (0.1, 0.9, 0.0, 0.01, False, False, False)
    def run(name, g, b, p, hyper=H):
        try:
            op(g, b, p, *hyper)
        except (RuntimeError, NotImplementedError) as e:
            print(name, 'ERROR', type(e).__name__, str(e).splitlines()[0], flush=True)
        else:
            print(name, 'OK', [t.tolist() for t in g], [t.tolist() for t in b], flush=True)
    run('empty', [], [], [])
    run('empty-bufs', [torch.ones(3, dtype=F)], [], [], (0.1, 0.9, 0.0, 0.0, False, False, False))
    run('shape', [torch.ones(1 << 16, dtype=F)], [torch.ones(3, dtype=F)], [torch.ones(3, dtype=F)])
    run('shape-params', [torch.ones(3, dtype=F)], [torch.ones(3, dtype=F)],
        [torch.ones(1, dtype=F)])
    run('numel', [torch.ones(6, dtype=F)], [torch.ones(2, 3, dtype=F)], [torch.ones(6, dtype=F)])
    run('dtype', [torch.ones(3, dtype=F)], [torch.ones(3, dtype=torch.float32)],
        [torch.ones(3, dtype=F)])
    run('dtype-int', [torch.ones(3, dtype=torch.int32)], [torch.ones(3, dtype=torch.int32)],
        [torch.ones(3, dtype=torch.int32)])
    run('zero-elements', [torch.ones(0, 4, dtype=F), torch.full((1,), 2.0, dtype=F)],
        [torch.ones(0, 4, dtype=F), torch.ones(1, dtype=F)],
        [torch.ones(0, 4, dtype=F), torch.zeros(1, dtype=F)])
    run('non-contiguous', [torch.arange(6, dtype=F).reshape(2, 3).t()],
        [torch.ones(3, 2, dtype=F)], [torch.zeros(6, dtype=F)[::2].reshape(3, 1).expand(3, 2)])
    H0 = (0.1, 0.9, 0.0, 0.0, False, False, False)
    run('sparse', [torch.ones(3, dtype=F).to_sparse()], [torch.ones(3, dtype=F)], [], H0)
    run('device', [torch.ones(3, dtype=F)], [torch.ones(3, dtype=F, device='meta')], [], H0)
    run('alias', [torch.ones(3, dtype=F)] * 2, [torch.ones(6, dtype=F)[:3]] * 2, [], H0)
    """
)


def test_dangerous_inputs_fail_cleanly_in_a_subprocess():
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    res = subprocess.run(
        [sys.executable, '-c', _DANGEROUS], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr  # no crash
    out = {line.split(' ', 1)[0]: line.split(' ', 1)[1] for line in res.stdout.splitlines()}
    # the dispatcher has no device to pick from no tensors (the Python entry returns early)
    assert out['empty'].startswith('ERROR NotImplementedError There were no tensor arguments')
    assert '`bufs` has 0 tensors but `grads` has 1' in out['empty-bufs']
    assert '`bufs[0]` has shape [3] but `grads[0]` has shape [65536]' in out['shape']
    assert '`params[0]` has shape [1]' in out['shape-params']
    assert '`bufs[0]` has shape [2, 3]' in out['numel']
    assert 'one dtype' in out['dtype'] and '`bufs[0]` is Float' in out['dtype']
    assert 'expected float32, float64, bfloat16 or float16' in out['dtype-int']
    # 1-element leaf: g' = 2, b = 0.9 + 2 = 2.9, u = -0.29
    assert out['zero-elements'].startswith('OK [[], [-0.29')
    # g = [[0, 3], [1, 4], [2, 5]] (a transposed view), b = 1, p = 0 (an expanded view)
    status, lists = out['non-contiguous'].split(' ', 1)
    u, b = (torch.tensor(x, dtype=F64) for x in eval(f'({lists.replace("] [", "], [")})'))  # noqa: S307
    assert status == 'OK'
    want_b = 0.9 + torch.tensor([[[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]], dtype=F64)
    torch.testing.assert_close(b, want_b, rtol=1e-15, atol=0)
    torch.testing.assert_close(u, -0.1 * want_b, rtol=1e-15, atol=0)
    assert out['sparse'].startswith('ERROR NotImplementedError')
    assert out['device'].startswith('ERROR RuntimeError') and 'bufs[0]' in out['device']
    assert re.search(r'`(grads|bufs)\[0\]` and `\1\[1\]` share memory', out['alias'])


def test_all_cpu_kernel_variants_agree():
    """Every compiled CPU variant gives the same float64 update (subprocesses, one per variant)."""
    code = textwrap.dedent(
        """
        import torch, torchopt_accel
        torch.manual_seed(0)
        mk = lambda: [torch.randn(1027, dtype=torch.float64), torch.randn(70, dtype=torch.float64)]
        out = []
        for first, wd, nesterov in ((True, 0.0, False), (False, 0.1, True), (False, 0.0, False)):
            g, b, p = mk(), mk(), mk()
            torch.ops.torchopt_accel.sgd_update_(g, b, p, 0.1, 0.9, 0.0, wd, nesterov, True, first)
            out += [t.tolist() for t in g + b]
        print(torchopt_accel.build_info()["cpu_capability"]); print(repr(out))
        """
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
            timeout=300,
        )
        chosen, values = res.stdout.splitlines()
        outputs[chosen] = [torch.tensor(x, dtype=F64) for x in eval(values)]  # noqa: S307
    assert 'DEFAULT' in outputs
    for got in outputs.values():
        for a, c in zip(got, outputs['DEFAULT']):
            torch.testing.assert_close(a, c, rtol=1e-15, atol=1e-16)


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU or a CUDA build).


@pytest.mark.cuda
@pytest.mark.parametrize('setting', SETTINGS, ids=IDS)
@pytest.mark.parametrize('first_step', [True, False])
def test_cuda_matches_cpu_fp64_on_every_size(setting, first_step):
    sizes = [0, 1, 1023, 1024, 1025, 4095, 4096, 4097, (1 << 20) + 3]
    g, b, p = ([torch.randn(n, dtype=F64, device='cuda') for n in sizes] for _ in range(3))
    cpu = [[t.cpu() for t in ts] for ts in (g, b, p)]
    hyper = _hyper(setting, first_step)
    torchopt_accel.sgd_update_(g, b, p, **hyper)
    torchopt_accel.sgd_update_(*cpu, **hyper)
    for a, c in zip(g + b, cpu[0] + cpu[1]):
        torch.testing.assert_close(a.cpu(), c, rtol=1e-14, atol=1e-15)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_reduced_precision_matches_cpu(dtype):
    g, b, p = (
        [torch.randn(n, dtype=dtype, device='cuda') for n in (1, 1025, 70001)] for _ in range(3)
    )
    cpu = [[t.cpu() for t in ts] for ts in (g, b, p)]
    OPS.sgd_update_(g, b, p, 0.1, 0.9, 0.1, 0.01, False, True, False)
    OPS.sgd_update_(*cpu, 0.1, 0.9, 0.1, 0.01, False, True, False)
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    for a, c in zip(g + b, cpu[0] + cpu[1]):
        torch.testing.assert_close(a.cpu().float(), c.float(), rtol=tol, atol=tol)


@pytest.mark.cuda
def test_cuda_opcheck_sgd_update_():
    g, b, p = ([torch.randn(n, dtype=F64, device='cuda') for n in (5, 1025)] for _ in range(3))
    torch.library.opcheck(
        OPS.sgd_update_.default, (g, b, p, 0.1, 0.9, 0.0, 0.01, True, False, False)
    )
