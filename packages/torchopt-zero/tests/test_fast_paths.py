"""The low-overhead paths: the scalar-normal sampler, the direct vmap entry, the one-leaf path.

Each is checked against what it replaces (``Normal.sample``, ``torch.func.vmap``, the grouped
path and the plain-loop formulas), and the accuracy of the antithetic estimator is measured for
every sampler form against its closed form, :math:`\\sqrt{(d + 1) / N}` relative RMS error.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchopt_zero import ZeroOrderGradientModule, zero_order
from torchopt_zero._batching import vmap_call
from torchopt_zero._estimator import make_sampler
from torchopt_zero.decorator import check_distribution

DTYPE = torch.float64
D = 100


class RandnSamplable:  # pylint: disable=too-few-public-methods
    """A user-defined Samplable (not a torch distribution)."""

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return torch.randn(sample_shape, dtype=DTYPE)


SAMPLERS = {
    'callable': lambda shape: torch.randn(shape),  # float32 noise, cast to the float64 leaf
    'normal': torch.distributions.Normal(0.0, 1.0),
    'samplable': RandnSamplable(),
}


def quadratic():
    gen = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=DTYPE))
    a = (q * torch.linspace(0.5, 2.0, D, dtype=DTYPE)) @ q.T
    b = torch.randn(D, generator=gen, dtype=DTYPE)
    theta = 0.3 * torch.randn(D, generator=gen, dtype=DTYPE)
    return (lambda x: 0.5 * x @ a @ x + b @ x), theta, a @ theta + b


def leaves_quadratic():
    """:func:`quadratic` over three leaves of 50, 30 and 4x5 elements (a dict, noise per leaf).

    ``A`` couples the leaves: the error depends on the noise of different leaves being
    independent standard normal (one ``(N, d)`` draw over all d elements, leaves in order).
    """
    f, theta, g = quadratic()
    shapes = {'u': (50,), 'v': (30,), 'w': (4, 5)}
    sizes = [math.prod(s) for s in shapes.values()]

    def split(t):
        return {k: part.reshape(s) for (k, s), part in zip(shapes.items(), t.split(sizes))}

    def f_leaves(p):
        return f(torch.cat([p[k].reshape(-1) for k in shapes]))

    return f_leaves, split(theta), split(g)


@pytest.mark.parametrize('sampler', [*SAMPLERS, 'per-leaf'])
@pytest.mark.parametrize('num_samples', [10, 100, 1000])
def test_antithetic_relative_rms_error_is_sqrt_d_plus_1_over_n(sampler, num_samples):
    r"""On a quadratic the antithetic error is exactly (d + 1) |g|^2 / N in mean square.

    (The antithetic difference of a quadratic is exactly :math:`2 \sigma g^\top u`, for every
    ``sigma``.) Issue #24's target: the measured relative RMS error within 10% of
    :math:`\sqrt{(d + 1) / N}`. Fixed seeds make it deterministic; the tolerance is justified by
    the standard error of the measurement over the 200 trials (from their spread, delta method),
    asserted below 2.5% of the rule: 10% is then over 4 standard errors, so a correct estimator
    passes for almost every seed and a 10% deviation (e.g. noise correlated across leaves, or
    off by a constant factor) fails.
    """
    if sampler == 'per-leaf':
        f, theta, g = leaves_quadratic()
        fn = zero_order(SAMPLERS['callable'], method='antithetic', num_samples=num_samples)(f)
    else:
        f, theta, g = quadratic()
        fn = zero_order(SAMPLERS[sampler], method='antithetic', num_samples=num_samples, sigma=0.1)(
            f
        )
    g_flat = torch.cat([v.reshape(-1) for v in g.values()]) if isinstance(g, dict) else g
    torch.manual_seed(num_samples)
    errors = []
    for _ in range(200):
        if isinstance(theta, dict):
            x = {k: v.clone().requires_grad_() for k, v in theta.items()}
            fn(x).backward()
            grad = torch.cat([v.grad.reshape(-1) for v in x.values()])
        else:
            x = theta.clone().requires_grad_()
            fn(x).backward()
            grad = x.grad
        errors.append(float((grad - g_flat).pow(2).sum()))
    sq = torch.tensor(errors, dtype=DTYPE)
    mse = float(sq.mean())
    se_rel_rms = float(sq.std()) / math.sqrt(len(errors)) / (2 * math.sqrt(mse))
    rule = math.sqrt((D + 1) / num_samples)
    rel_rms = math.sqrt(mse) / float(g_flat.norm())
    assert se_rel_rms / float(g_flat.norm()) < 0.025 * rule
    assert rel_rms == pytest.approx(rule, rel=0.10)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize(('loc', 'scale'), [(0.0, 1.0), (0.5, 2.0), (-1.0, 0.25)])
@pytest.mark.parametrize('shape', [(1, 3), (7, 5), (64, 100)])
def test_scalar_normal_sampler_draws_exactly_what_normal_sample_draws(
    dtype, loc, scale, shape, monkeypatch
):
    normal = torch.distributions.Normal(
        torch.tensor(loc, dtype=dtype), torch.tensor(scale, dtype=dtype)
    )
    sample = make_sampler(normal)
    torch.manual_seed(11)
    expected = normal.sample(torch.Size(shape))
    torch.manual_seed(11)
    with monkeypatch.context() as patch:  # the fast path: Normal.sample calls torch.normal
        patch.setattr(torch, 'normal', None)
        got = sample(torch.Size(shape))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)
    # and the generator advanced the same way
    torch.manual_seed(11)
    normal.sample(torch.Size(shape))
    after_reference = torch.randn(4)
    torch.manual_seed(11)
    sample(torch.Size(shape))
    assert torch.equal(torch.randn(4), after_reference)


def test_other_samplers_are_called_as_given():
    class MyNormal(torch.distributions.Normal):
        def sample(self, sample_shape=torch.Size()):
            return torch.zeros(sample_shape)

    shape = torch.Size((2, 3))
    assert torch.equal(make_sampler(MyNormal(0.0, 1.0))(shape), torch.zeros(shape))
    patched = torch.distributions.Normal(0.0, 1.0)
    sample = make_sampler(patched)
    patched.sample = lambda sample_shape: torch.ones(sample_shape)  # patched after decoration
    assert torch.equal(sample(shape), torch.ones(shape))
    batched = torch.distributions.Normal(torch.zeros(3), 1.0)
    assert make_sampler(batched)(torch.Size((2,))).shape == (2, 3)  # Normal.sample's shape
    uniform = torch.distributions.Uniform(0.0, 1.0)
    torch.manual_seed(0)
    expected = uniform.sample(shape)
    torch.manual_seed(0)
    assert torch.equal(make_sampler(uniform)(shape), expected)
    wrapped = check_distribution(lambda sample_shape: torch.full(sample_shape, 2.0))
    assert torch.equal(make_sampler(wrapped)(shape), torch.full(shape, 2.0))


@pytest.mark.parametrize('method', ['naive', 'forward', 'antithetic'])
def test_normal_gradients_equal_those_of_normal_sample(method, recorder):
    """The fast sampler leaves the random stream and the estimate unchanged."""
    zero, one = torch.tensor(0.0, dtype=DTYPE), torch.tensor(1.0, dtype=DTYPE)
    normal = torch.distributions.Normal(zero, one)
    recorder.dist = normal  # a Recorder is not a Normal: it calls normal.sample
    f, theta, _ = quadratic()
    grads = []
    for dist in (normal, recorder):
        x = theta.clone().requires_grad_()
        torch.manual_seed(3)
        zero_order(dist, method=method, num_samples=50, sigma=0.1)(f)(x).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_direct_vmap_matches_torch_func_vmap():
    a = torch.randn(4, 4, dtype=DTYPE)

    def f(x):
        return torch.tanh(x @ a).sum() * x[0]

    xs = torch.randn(6, 4, dtype=DTYPE)
    public = vmap_call(f, [xs], 'error', True)
    direct = vmap_call(f, [xs], 'error', False)
    torch.testing.assert_close(direct, public, rtol=0, atol=0)
    torch.testing.assert_close(direct, torch.stack([f(x) for x in xs]), rtol=1e-12, atol=1e-12)

    def noisy(x):
        return x.sum() + torch.randn((), dtype=x.dtype)

    values = []
    for first in (True, False):
        torch.manual_seed(0)
        values.append(vmap_call(noisy, [xs], 'different', first))
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=0)
    assert values[0].unique().numel() == 6  # a draw per row

    constant = vmap_call(lambda x: torch.tensor(2.0, dtype=DTYPE), [xs], 'error', False)
    torch.testing.assert_close(constant, torch.full((6,), 2.0, dtype=DTYPE))


@pytest.mark.parametrize('first', [True, False])
def test_direct_vmap_checks_outputs_and_leaves_no_vmap_level_behind(first):
    xs = torch.randn(3, 2)
    with pytest.raises(RuntimeError, match='`output` must be a scalar tensor.'):
        vmap_call(lambda x: x * 2, [xs], 'error', first)
    with pytest.raises(TypeError, match='`output` must be a tensor.'):
        vmap_call(lambda x: 1.0, [xs], 'error', first)

    def fails(x):
        raise ValueError('inside')

    with pytest.raises(ValueError, match='inside'):
        vmap_call(fails, [xs], 'error', first)
    # the vmap level was left: plain tensors are plain, and vmap nests from scratch
    assert not torch._C._functorch.is_batchedtensor(torch.ones(2) + 1)
    torch.testing.assert_close(torch.func.vmap(torch.sum)(xs), xs.sum(1))


@pytest.mark.parametrize('method', ['naive', 'forward', 'antithetic'])
@pytest.mark.parametrize('shape', [(), (3, 4), (5,)])
@pytest.mark.parametrize('chunk_size', [None, 3])  # one chunk (straight-line code), or three
def test_single_leaf_path_matches_formula(method, shape, chunk_size, recorder, reference):
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(shape, generator=gen, dtype=DTYPE, requires_grad=True)

    def f(t):
        return torch.sin(t).sum() * t.pow(2).sum() + 0.3

    out = zero_order(recorder, method=method, num_samples=7, sigma=0.3, chunk_size=chunk_size)(f)(
        theta
    )
    (2.5 * out).backward()  # the incoming gradient is folded into the products
    assert theta.grad.shape == theta.shape
    (expected,) = reference(
        lambda ts: f(ts[0]), [theta], [recorder.noise_for(shape)], method, 0.3, grad_output=2.5
    )
    torch.testing.assert_close(theta.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('method', ['naive', 'forward', 'antithetic'])
def test_single_pytree_argument_path_equals_general_path(method):
    """``fn(params)`` (one pytree, its own short path) gives what the general layout gives."""
    gen = torch.Generator().manual_seed(2)
    params = {
        'b': torch.randn(3, generator=gen, dtype=DTYPE, requires_grad=True),
        'a': [torch.randn(2, 2, generator=gen, dtype=DTYPE, requires_grad=True)],
    }

    def f(p, scale=1.0):
        return scale * (torch.sin(p['b']).sum() + (p['a'][0] ** 2).sum() * p['b'].sum())

    grads, outs = [], []
    for extra in ((), (1.0,)):  # (): the short path; (1.0,): a second, unperturbed argument
        for leaf in (params['b'], params['a'][0]):
            leaf.grad = None
        torch.manual_seed(0)
        out = zero_order(SAMPLERS['normal'], method=method, num_samples=6, sigma=0.2)(f)(
            params, *extra
        )
        out.backward()
        outs.append(out.detach())
        grads.append((params['b'].grad.clone(), params['a'][0].grad.clone()))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


@pytest.mark.parametrize('method', ['naive', 'forward', 'antithetic'])
@pytest.mark.parametrize('vectorize', [None, False])
def test_mixed_dtypes_frozen_leaf_and_scalar_leaf_match_formula(method, vectorize, reference):
    """Two (device, dtype) groups, a leaf in between that is not perturbed, a 0-dim leaf."""
    draws = []

    def sample(shape):
        draw = torch.randn(shape, dtype=DTYPE)
        draws.append(draw)
        return draw

    gen = torch.Generator().manual_seed(2)
    a = torch.randn(2, 3, generator=gen, dtype=DTYPE, requires_grad=True)
    frozen = torch.randn(3, generator=gen, dtype=DTYPE)
    s = torch.tensor(0.7, requires_grad=True)  # float32
    c = torch.randn(4, generator=gen, dtype=DTYPE, requires_grad=True)

    def f(tree):
        a, frozen, s, c = tree
        return (a @ frozen).tanh().sum() * s.double() + (c**2).sum() * s.double().cos()

    fn = zero_order(sample, method=method, num_samples=6, sigma=0.2, vectorize=vectorize)(f)
    fn((a, frozen, s, c)).backward()
    assert frozen.grad is None
    # groups in order of first leaf: float64 (a, c), then float32 (s); one chunk
    assert [d.shape for d in draws] == [(6, 10), (6, 1)]
    noise_a, noise_c = draws[0].split([6, 4], dim=1)
    noise_s = draws[1].float().double()  # what the float32 leaf received
    leaves = [a, s.double(), c]

    def f_ref(ts):
        return f((ts[0], frozen, ts[1], ts[2]))

    expected = reference(
        f_ref, leaves, [noise_a.reshape(6, 2, 3), noise_s.reshape(6), noise_c], method, 0.2
    )
    torch.testing.assert_close(a.grad, expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.grad, expected[1].float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c.grad, expected[2], rtol=1e-5, atol=1e-6)


def test_module_instances_draw_from_their_own_sample(reference):
    class Quad(ZeroOrderGradientModule, method='antithetic', num_samples=5, sigma=0.1):
        def __init__(self, scale):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE))
            self.scale = scale
            self.draws = []

        def forward(self):
            return (self.w**2).sum()

        def sample(self, sample_shape=torch.Size()):
            draw = self.scale * torch.randn(sample_shape, dtype=DTYPE)
            self.draws.append(draw)
            return draw

    one, two = Quad(1.0), Quad(3.0)
    for net in (one, two, one):
        net().backward()
    assert len(one.draws) == 2 and len(two.draws) == 1
    (expected,) = reference(
        lambda ts: (ts[0] ** 2).sum(), [two.w], [two.draws[0]], 'antithetic', 0.1
    )
    torch.testing.assert_close(two.w.grad, expected, rtol=1e-10, atol=1e-12)


def test_distribution_sample_is_called_by_keyword(reference):
    """Upstream calls ``distribution.sample(sample_shape=...)``; a keyword-only ``sample`` works."""

    class KeywordOnly:
        def __init__(self):
            self.draws = []

        def sample(self, *, sample_shape):
            draw = torch.randn(sample_shape, dtype=DTYPE)
            self.draws.append(draw)
            return draw

    f, theta, _ = quadratic()
    noise = KeywordOnly()
    x = theta.clone().requires_grad_()
    zero_order(noise, method='antithetic', num_samples=6, sigma=0.1)(f)(x).backward()
    (draw,) = noise.draws
    (expected,) = reference(lambda ts: f(ts[0]), [x], [draw], 'antithetic', 0.1)
    torch.testing.assert_close(x.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('method', ['naive', 'forward', 'antithetic'])
def test_direct_node_apply_matches_function_apply(method, monkeypatch):
    """The direct C ``apply`` (outside transforms) gives what ``Function.apply`` gives."""
    from torchopt_zero import decorator  # noqa: PLC0415

    f, theta, _ = quadratic()
    fn = zero_order(SAMPLERS['callable'], method=method, num_samples=7, sigma=0.1)(f)
    grads = []
    for compiling in (False, True):  # True: run_flat takes the public Function.apply
        monkeypatch.setattr(decorator, '_is_compiling', lambda c=compiling: c)
        x = theta.clone().requires_grad_()
        torch.manual_seed(0)
        out = fn(x)
        assert out.grad_fn is not None
        assert type(out.grad_fn).__name__ == 'ZeroOrderBackward'  # upstream's node name
        out.backward()
        grads.append((out.detach(), x.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_functorch_transforms_still_get_function_apply_errors():
    """Under ``torch.func.grad`` the public ``Function.apply`` runs, with its usual error."""
    f, theta, _ = quadratic()
    fn = zero_order(SAMPLERS['callable'], method='antithetic', num_samples=4)(f)
    with pytest.raises(RuntimeError, match='setup_context'):
        torch.func.grad(fn)(theta)
