"""Op-level checks: opcheck on every op, schemas, layouts, errors, meta device, build info."""

import pytest
import torch

import torchopt_accel

OPS = torch.ops.torchopt_accel
HYPER = (0.9, 0.999, 1e-8, 1e-6, 3)


def _leaves(dtype=torch.float64, device='cpu', shapes=((3, 5), (7,), ())):
    return [torch.randn(s, dtype=dtype, device=device) for s in shapes]


def _state(dtype=torch.float64, device='cpu'):
    g, m = _leaves(dtype, device), _leaves(dtype, device)
    v = [t.abs() for t in _leaves(dtype, device)]
    return g, m, v


def _reference_step(g, m, v, b1, b2, eps, eps_root, count):
    """Adam written out in float64 torch ops (independent of the kernels and of core)."""
    g, m, v = g.double(), m.double(), v.double()
    m2 = b1 * m + (1 - b1) * g
    v2 = b2 * v + (1 - b2) * g * g
    u = (m2 / (1 - b1**count)) / (torch.sqrt(v2 / (1 - b2**count) + eps_root) + eps)
    return u, m2, v2


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_opcheck_adam_step_(dtype):
    g, m, v = _state(dtype)
    torch.library.opcheck(OPS.adam_step_.default, (g, m, v, *HYPER))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_opcheck_adam_forward(dtype):
    g, m, v = _state(dtype)
    args = [[t.requires_grad_() for t in ts] for ts in (g, m, v)]
    torch.library.opcheck(OPS.adam_forward.default, (*args, *HYPER))


def test_opcheck_adam_backward():
    g, m, v = _state()
    cot = [_leaves(), _leaves(), _leaves()]
    torch.library.opcheck(OPS.adam_backward.default, (*cot, g, m, v, *HYPER))
    torch.library.opcheck(OPS.adam_backward.default, (cot[0], [], [], g, m, v, *HYPER))


def test_opcheck_non_contiguous():
    g = [torch.randn(6, 4, dtype=torch.float64).t(), torch.randn(9, dtype=torch.float64)[::2]]
    m = [torch.randn(4, 6, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    v = [torch.rand(6, 4, dtype=torch.float64).t(), torch.rand(10, dtype=torch.float64)[1::2]]
    torch.library.opcheck(OPS.adam_step_.default, (g, m, v, *HYPER))
    torch.library.opcheck(OPS.adam_forward.default, (g, m, v, *HYPER))


def test_schemas_mark_mutation():
    schema = OPS.adam_step_.default._schema
    assert [a.alias_info is not None and a.alias_info.is_write for a in schema.arguments[:3]] == [
        True,
        True,
        True,
    ]
    assert not any(a.alias_info for a in OPS.adam_forward.default._schema.arguments)


@pytest.mark.parametrize(
    'layout', ['contiguous', 'transposed', 'strided', 'mixed', 'expanded_grad']
)
def test_step_layouts_against_reference(layout):
    def make(kind, positive=False):
        base = torch.rand if positive else torch.randn
        if layout == 'contiguous' or (layout == 'mixed' and kind != 'm'):
            return base(4, 6, dtype=torch.float64)
        if layout == 'expanded_grad' and kind == 'g':
            return base(1, 6, dtype=torch.float64).expand(4, 6)
        if layout in ('transposed', 'mixed', 'expanded_grad'):
            return base(6, 4, dtype=torch.float64).t()
        return base(4, 12, dtype=torch.float64)[:, ::2]

    g, m, v = make('g'), make('m'), make('v', positive=True)
    ref = _reference_step(g, m, v, *HYPER)
    if layout == 'expanded_grad':  # an expanded tensor cannot be written in place
        outs = OPS.adam_forward([g], [m], [v], *HYPER)
        got = [o[0] for o in outs]
    else:
        OPS.adam_step_([g], [m], [v], *HYPER)
        got = [g, m, v]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_forward_outputs_keep_input_layout():
    g = torch.randn(6, 4, dtype=torch.float64).t()
    m, v = torch.randn(6, 4, dtype=torch.float64).t(), torch.rand(6, 4, dtype=torch.float64).t()
    u, m2, v2 = OPS.adam_forward([g], [m], [v], *HYPER)
    assert u[0].stride() == g.stride() and m2[0].stride() == m.stride()
    assert u[0].data_ptr() != g.data_ptr()


def test_meta_device():
    g, m, v = _state(device='meta')
    u, m2, v2 = OPS.adam_forward(g, m, v, *HYPER)
    assert [t.shape for t in u] == [t.shape for t in g] and u[0].device.type == 'meta'
    OPS.adam_step_(g, m, v, *HYPER)  # runs (fake kernel), nothing to check but no error
    assert torchopt_accel.is_available(torch.device('meta'))


@pytest.mark.parametrize(
    ('mutate', 'match'),
    [
        (lambda g, m, v: (g, m[:-1], v), r'`mu` has 2 tensors but `updates` has 3'),
        (lambda g, m, v: (g, [m[0].float(), *m[1:]], v), r'one dtype .*`mu\[0\]`'),
        (lambda g, m, v: (g, m, [v[0].reshape(-1), *v[1:]]), r'`nu\[0\]` has shape'),
        (
            lambda g, m, v: ([t.int() for t in g], [t.int() for t in m], [t.int() for t in v]),
            'expected float32, float64, bfloat16 or float16',
        ),
    ],
)
def test_bad_lists_raise_clear_errors(mutate, match):
    g, m, v = mutate(*_state())
    with pytest.raises(RuntimeError, match=match):
        OPS.adam_step_(g, m, v, *HYPER)


@pytest.mark.parametrize(
    ('hyper', 'match'),
    [
        ((0.9, 0.999, 1e-8, 0.0, 0), '`count` must be an integer >= 1'),
        ((1.0, 0.999, 1e-8, 0.0, 1), r'`b1` must be in \[0, 1\)'),
        ((0.9, -0.1, 1e-8, 0.0, 1), r'`b2` must be in \[0, 1\)'),
        ((0.9, 0.999, -1.0, 0.0, 1), '`eps` must be >= 0'),
        ((0.9, 0.999, 1e-8, -1.0, 1), '`eps_root` must be >= 0'),
    ],
)
def test_bad_hyper_parameters_raise(hyper, match):
    with pytest.raises(RuntimeError, match=match):
        OPS.adam_forward(*_state(), *hyper)


def test_python_wrapper_validates_arguments():
    g, m, v = _state()
    with pytest.raises(ValueError, match='one tensor per leaf'):
        torchopt_accel.adam_step_(g, m[:1], v, *HYPER)
    with pytest.raises(TypeError, match='`mu` must be a list of tensors'):
        torchopt_accel.adam_step_(g, m[0], v, *HYPER)
    with pytest.raises(ValueError, match='`count` must be a Python int >= 1'):
        torchopt_accel.adam_forward(g, m, v, *HYPER[:-1], 0)


def test_is_available_and_build_info():
    info = torchopt_accel.build_info()
    assert info['torch_match'] is True
    assert info['torch_version'].split('.')[:2] == torch.__version__.split('.')[:2]
    assert set(info['ops']) == {
        f'torchopt_accel::{n}'
        for n in ('adam_step_', 'adam_forward', 'adam_backward', 'adam_apply_', 'sgd_update_')
    }
    assert 'DEFAULT' in info['cpu_capabilities_compiled']
    assert info['cpu_capability'] in info['cpu_capabilities_compiled']
    assert torchopt_accel.is_available(torch.device('cpu'))
    assert torchopt_accel.is_available(torch.device('cuda')) == (
        info['cuda'] and torch.cuda.is_available()
    )
    assert not torchopt_accel.is_available(torch.device('xpu'))
    for name in info['ops']:
        ns, op = name.split('::')
        assert hasattr(getattr(torch.ops, ns), op)


def test_core_facade_reports_availability():
    import torchopt

    assert torchopt.accelerated_op_available('cpu')
    assert torchopt.accelerated_op_available(torch.device('cpu'))
    assert torchopt.accelerated_op_available('meta')
    assert torchopt.accelerated_op_available(['cpu', 'meta'])
    cuda_ok = torch.cuda.is_available() and torchopt_accel.build_info()['cuda']
    assert torchopt.accelerated_op_available(0) == cuda_ok
    assert torchopt.accelerated_op_available('cuda') == cuda_ok
    assert torchopt.accelerated_op_available(None) == cuda_ok


def test_all_cpu_kernel_variants_agree(monkeypatch):
    """Every compiled CPU variant gives the same float64 result (run in subprocesses)."""
    import subprocess
    import sys

    code = (
        'import torch, torchopt_accel\n'
        'torch.manual_seed(0)\n'
        'g=[torch.randn(1027, dtype=torch.float64)]; m=[torch.randn(1027, dtype=torch.float64)]\n'
        'v=[torch.rand(1027, dtype=torch.float64)]\n'
        'torch.ops.torchopt_accel.adam_step_(g, m, v, 0.9, 0.999, 1e-8, 1e-6, 3)\n'
        'print(torchopt_accel.build_info()["cpu_capability"]); print(repr(g[0].tolist()))\n'
    )
    outputs = {}
    for cap in torchopt_accel.build_info()['cpu_capabilities_compiled']:
        env = {
            **__import__('os').environ,
            'ATEN_CPU_CAPABILITY': cap.lower(),
            'OMP_NUM_THREADS': '1',
        }
        res = subprocess.run(
            [sys.executable, '-c', code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        chosen, values = res.stdout.splitlines()
        outputs[chosen] = torch.tensor(eval(values), dtype=torch.float64)  # noqa: S307
    assert 'DEFAULT' in outputs  # the portable variant ran; the others where the CPU has them
    ref = next(iter(outputs.values()))
    for got in outputs.values():
        torch.testing.assert_close(got, ref, rtol=1e-14, atol=0)
