"""Exact semantics of ``zero_order``: each estimator against its formula on recorded noise."""

from __future__ import annotations

import pytest
import torch

from torchopt_zero import zero_order

DTYPE = torch.float64
METHODS = ('naive', 'forward', 'antithetic')


def objective(x: torch.Tensor, tree: dict, scale: float = 1.0) -> torch.Tensor:
    """A non-quadratic function of a tensor and a pytree (dict with a tuple inside)."""
    w, (b, c) = tree['w'], tree['bc']
    return scale * (torch.sin(x).sum() * (w @ x).tanh().sum() + (b**3).sum() - c.exp().mean())


def make_inputs() -> tuple[torch.Tensor, dict]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, generator=gen, dtype=DTYPE, requires_grad=True)
    w = torch.randn(2, 3, generator=gen, dtype=DTYPE, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=DTYPE, requires_grad=True)
    c = torch.randn(1, 5, generator=gen, dtype=DTYPE, requires_grad=True)
    return x, {'w': w, 'bc': (b, c)}


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('vectorize', [None, False])
@pytest.mark.parametrize('chunk_size', [None, 3])
def test_matches_formula_multiple_argnums_and_pytrees(
    method, vectorize, chunk_size, recorder, reference
):
    x, tree = make_inputs()
    sigma, num = 0.3, 8
    fn = zero_order(
        recorder,
        method=method,
        argnums=(0, 1),
        num_samples=num,
        sigma=sigma,
        chunk_size=chunk_size,
        vectorize=vectorize,
    )(objective)
    out = fn(x, tree, scale=1.5)  # keyword arguments are passed through
    torch.testing.assert_close(out, objective(x, tree, scale=1.5).detach(), rtol=0, atol=0)
    (2.5 * out).backward()  # the incoming gradient multiplies the estimate

    leaves = [x, *tree['bc'], tree['w']]  # pytree order: dict keys sorted
    noises = recorder.noises([leaf.shape for leaf in leaves])
    assert all(n.shape[0] == num for n in noises)

    def f(ts):
        return objective(ts[0], {'w': ts[3], 'bc': (ts[1], ts[2])}, scale=1.5)

    expected = reference(f, leaves, noises, method, sigma, grad_output=2.5)
    for leaf, exp in zip(leaves, expected):
        torch.testing.assert_close(leaf.grad, exp, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('method', METHODS)
def test_non_argnums_get_no_gradient_and_only_grad_leaves_are_perturbed(
    method, recorder, reference
):
    x = torch.randn(4, dtype=DTYPE, requires_grad=True)
    frozen = torch.randn(3, dtype=DTYPE)  # in argnums but does not require grad
    other = torch.randn(4, dtype=DTYPE, requires_grad=True)  # not in argnums

    def g(a, b, c):
        return (a * c).sum() ** 2 + b.sum() * a.sum()

    out = zero_order(recorder, method=method, argnums=(0, 1), num_samples=5, sigma=0.5)(g)(
        x, frozen, other
    )
    out.backward()
    assert other.grad is None
    assert all(d.shape[1:] == (4,) for d in recorder.draws)  # frozen not perturbed
    (expected,) = reference(
        lambda ts: g(ts[0], frozen, other), [x], [recorder.noise_for((4,))], method, 0.5
    )
    torch.testing.assert_close(x.grad, expected, rtol=1e-10, atol=1e-12)


def test_callable_distribution_and_int_argnums(reference):
    draws = []

    def sample_fn(shape):
        draw = torch.rand(shape, dtype=DTYPE) * 2 - 1  # uniform noise
        draws.append(draw)
        return draw

    y = torch.randn(6, dtype=DTYPE, requires_grad=True)
    out = zero_order(sample_fn, method='antithetic', argnums=1, num_samples=4, sigma=0.2)(
        lambda s, v: s * v.pow(2).sum()
    )(3.0, y)
    out.backward()
    (expected,) = reference(
        lambda ts: 3.0 * ts[0].pow(2).sum(), [y], [torch.cat(draws).view(-1, 6)], 'antithetic', 0.2
    )
    torch.testing.assert_close(y.grad, expected, rtol=1e-10, atol=1e-12)


def test_negative_argnums_and_module_object_is_callable():
    import torchopt_zero

    x = torch.randn(3, dtype=DTYPE, requires_grad=True)
    torch.manual_seed(1)
    torchopt_zero(torch.distributions.Normal(0.0, 1.0), argnums=-1, num_samples=3)(
        lambda a, b: (b**2).sum()
    )(torch.zeros(1), x).backward()
    grad_a = x.grad.clone()
    x.grad = None
    torch.manual_seed(1)
    zero_order(torch.distributions.Normal(0.0, 1.0), argnums=(1,), num_samples=3)(
        lambda a, b: (b**2).sum()
    )(torch.zeros(1), x).backward()
    torch.testing.assert_close(x.grad, grad_a, rtol=0, atol=0)


def test_reproducible_under_manual_seed_and_vmap_equals_loop():
    x, tree = make_inputs()
    grads = []
    for vectorize in (True, False, True):
        x.grad = None
        torch.manual_seed(123)
        fn = zero_order(
            torch.distributions.Normal(0.0, 1.0),
            method='antithetic',
            argnums=(0, 1),
            num_samples=16,
            sigma=0.1,
            vectorize=vectorize,
        )(objective)
        fn(x, tree).backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[0], grads[2], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_non_vmappable_function_falls_back_to_loop_once(recorder, reference):
    calls = []

    def step_return(theta):  # Python control flow on tensor values: cannot be vmapped
        calls.append(1)
        total = 0.0
        for v in theta:
            if v.item() > 0.1:
                total += float(v)
        return torch.tensor(total, dtype=DTYPE)

    theta = torch.randn(5, dtype=DTYPE, requires_grad=True)
    fn = zero_order(recorder, method='forward', num_samples=6, sigma=0.5)(step_return)
    fn(theta).backward()
    (expected,) = reference(
        lambda ts: step_return(ts[0]), [theta], [recorder.noise_for((5,))], 'forward', 0.5
    )
    torch.testing.assert_close(theta.grad, expected, rtol=1e-10, atol=1e-12)
    assert theta.grad.abs().sum() > 0

    calls.clear()
    fn(theta).backward()  # second call: 1 forward + 6 loop evaluations, no vmap attempt
    assert len(calls) == 7

    with pytest.raises(RuntimeError):
        zero_order(recorder, num_samples=6, vectorize=True)(step_return)(theta).backward()


def test_function_drawing_random_numbers_is_vmapped_with_different_randomness(recorder, reference):
    calls = []

    def noisy(a):
        calls.append(1)
        return (a**2).sum() + 0.0 * torch.randn((), dtype=a.dtype)

    x = torch.randn(3, dtype=DTYPE, requires_grad=True)
    fn = zero_order(recorder, method='antithetic', num_samples=5, sigma=0.1, vectorize=True)(noisy)
    fn(x).backward()
    assert len(calls) == 3  # forward, vmap(randomness='error') fails, vmap('different')
    calls.clear()
    fn(x).backward()
    assert len(calls) == 2  # the working mode is remembered
    (expected,) = reference(
        lambda ts: (ts[0] ** 2).sum(), [x], [recorder.noise_for((3,))], 'antithetic', 0.1
    )
    torch.testing.assert_close(x.grad, 2 * expected, rtol=1e-10, atol=1e-12)  # grads add up


def test_no_grad_and_no_requires_grad_just_evaluate():
    x = torch.randn(3, dtype=DTYPE)
    fn = zero_order(torch.distributions.Normal(0.0, 1.0))(lambda a: (a**2).sum())
    out = fn(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, (x**2).sum())
    with torch.no_grad():
        assert not fn(x.requires_grad_()).requires_grad


def test_second_order_is_not_supported():
    x = torch.randn(3, dtype=DTYPE, requires_grad=True)
    z = torch.tensor(2.0, dtype=DTYPE, requires_grad=True)
    fn = zero_order(torch.distributions.Normal(0.0, 1.0), num_samples=2)(lambda a: (a**2).sum())
    (g,) = torch.autograd.grad(fn(x), x, create_graph=True)
    assert not g.requires_grad  # the estimate is a constant of the graph
    (g,) = torch.autograd.grad(fn(x) * z, x, create_graph=True)
    with pytest.raises(RuntimeError, match='once_differentiable'):
        g.sum().backward()


def test_float32_params_with_float64_noise(reference, recorder):
    recorder.dist = torch.distributions.Normal(
        torch.tensor(0.0, dtype=DTYPE), torch.tensor(1.0, dtype=DTYPE)
    )
    x = torch.randn(4, requires_grad=True)
    zero_order(recorder, method='antithetic', num_samples=4, sigma=0.1)(lambda a: (a**2).sum())(
        x
    ).backward()
    assert x.grad.dtype == torch.float32
    noise = recorder.noise_for((4,)).float().double()  # what the estimator used after the cast
    (expected,) = reference(lambda ts: (ts[0] ** 2).sum(), [x], [noise], 'antithetic', 0.1)
    torch.testing.assert_close(x.grad, expected.float(), rtol=1e-5, atol=1e-6)


class TestErrors:
    normal = torch.distributions.Normal(0.0, 1.0)

    def test_distribution(self):
        with pytest.raises(TypeError, match='`distribution` must be a callable or an instance'):
            zero_order(1.0)

    @pytest.mark.parametrize(
        ('kwargs', 'error', 'match'),
        [
            ({'method': 'central'}, ValueError, '`method` must be one of'),
            ({'num_samples': 0}, ValueError, '`num_samples` must be a positive int'),
            ({'num_samples': 2.0}, TypeError, '`num_samples` must be a positive int'),
            ({'sigma': 0.0}, ValueError, '`sigma` must be a positive finite float'),
            ({'sigma': float('inf')}, ValueError, '`sigma` must be a positive finite float'),
            ({'sigma': 'big'}, TypeError, '`sigma` must be a positive float'),
            ({'argnums': 'x'}, TypeError, '`argnums` must be an int or a tuple of ints'),
            ({'argnums': ()}, ValueError, '`argnums` must name at least one'),
            ({'chunk_size': 0}, ValueError, '`chunk_size` must be None or a positive int'),
            ({'vectorize': 'yes'}, ValueError, '`vectorize` must be None, True or False'),
        ],
    )
    def test_arguments(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            zero_order(self.normal, **kwargs)

    def test_call_arguments(self):
        x = torch.ones(2, requires_grad=True)
        fn = zero_order(self.normal, argnums=(0, 2))(lambda a, b: a.sum())
        with pytest.raises(ValueError, match='`argnums` entry 2 is out of range'):
            fn(x, x)
        dup = zero_order(self.normal, argnums=(0, -2))(lambda a, b: a.sum())
        with pytest.raises(ValueError, match='must not repeat'):
            dup(x, x)
        ints = zero_order(self.normal)(lambda a: a.sum())
        with pytest.raises(TypeError, match=r'argument 0 \(in `argnums`\) must be a floating'):
            ints(torch.ones(2, dtype=torch.long))
        with pytest.raises(TypeError, match='found a leaf of type str'):
            ints({'a': x, 'b': 'text'})

    def test_output(self):
        x = torch.ones(2, requires_grad=True)
        with pytest.raises(TypeError, match='`output` must be a tensor.'):
            zero_order(self.normal)(lambda a: 1.0)(x)
        with pytest.raises(RuntimeError, match='`output` must be a scalar tensor.'):
            zero_order(self.normal)(lambda a: a * 2)(x)
        with pytest.raises(TypeError, match='`output` must be a floating-point tensor'):
            zero_order(self.normal)(lambda a: (a > 0).sum())(x)

    def test_sample_shape(self):
        x = torch.ones(3, requires_grad=True)
        batched = torch.distributions.Normal(torch.zeros(3), 1.0)  # batch_shape (3,)
        out = zero_order(batched, num_samples=2)(lambda a: a.sum())(x)
        with pytest.raises(ValueError, match='must return a tensor of shape sample_shape'):
            out.backward()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('method', METHODS)
def test_cuda_params_with_cpu_distribution(method, recorder, reference):
    x, tree = make_inputs()
    x = x.detach().cuda().requires_grad_()
    tree = {
        'w': tree['w'].detach().cuda().requires_grad_(),
        'bc': tuple(t.detach().cuda().requires_grad_() for t in tree['bc']),
    }
    fn = zero_order(recorder, method=method, argnums=(0, 1), num_samples=64, sigma=0.3)(objective)
    fn(x, tree).backward()
    leaves = [x, *tree['bc'], tree['w']]
    noises = recorder.noises([leaf.shape for leaf in leaves])
    cpu = [leaf.detach().cpu() for leaf in leaves]
    expected = reference(
        lambda ts: objective(ts[0], {'w': ts[3], 'bc': (ts[1], ts[2])}), cpu, noises, method, 0.3
    )
    for leaf, exp in zip(leaves, expected):
        assert leaf.grad.device.type == 'cuda'
        torch.testing.assert_close(leaf.grad.cpu(), exp, rtol=1e-9, atol=1e-11)
