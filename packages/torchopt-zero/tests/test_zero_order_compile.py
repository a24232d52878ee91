"""``zero_order`` under ``torch.compile`` (issue #21).

A function decorated with ``zero_order`` runs inside a compiled region and gives the eager value
and the eager gradient estimate (same seed, same draws): with graph breaks around an outer
``torch.autograd.grad``, and as one graph with ``fullgraph=True`` (the estimator's backward is
traced into the autograd.Function's graph), compiled once for many calls. Every sampler-free
path is covered: one leaf, several leaves (a dict), the chunked path (more samples than one
chunk), a loop for small ``num_samples``, and an objective that draws random numbers itself.
"""

from __future__ import annotations

import pytest
import torch

from torchopt_zero import zero_order

DTYPE = torch.float64
METHODS = ('naive', 'forward', 'antithetic')
CALLS = 10
# Warnings of torch 2.13's own tracing, not of torchopt: dynamo traces through the decorator's
# lru_cache'd argument check (a pure function), instantiates the autograd.Function it traces,
# and reads ``.grad`` of the non-leaf tensors at its graph breaks.
pytestmark = [
    pytest.mark.filterwarnings('ignore:The .grad attribute of a Tensor that is not a leaf Tensor'),
    pytest.mark.filterwarnings('ignore:Dynamo detected a call to a `functools.lru_cache`'),
    pytest.mark.filterwarnings('ignore:.*should not be instantiated:DeprecationWarning'),
]


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it receives and runs them as they are."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return gm.forward


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _decorated(method: str):
    dist = torch.distributions.Normal(
        torch.tensor(0.0, dtype=DTYPE), torch.tensor(1.0, dtype=DTYPE)
    )

    @zero_order(distribution=dist, method=method, num_samples=16, sigma=0.1)
    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (torch.sin(x) * (w @ x).tanh()).sum() + (x**2).sum()

    return f


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, generator=gen, dtype=DTYPE, requires_grad=True)
    w = torch.randn(4, 4, generator=gen, dtype=DTYPE)
    return x, w


def _assert_eager_numbers(compiled, eager, args, after_each=None) -> None:
    """``compiled(*args)`` equals ``eager(*args)`` (1e-12) for the same seed, ``CALLS`` times."""
    for k in range(CALLS):
        torch.manual_seed(k)
        got = compiled(*args)
        torch.manual_seed(k)
        want = eager(*args)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        if after_each is not None:
            after_each()


@pytest.mark.parametrize('method', METHODS)
def test_zero_order_inside_a_compiled_region_gives_the_eager_estimate(method):
    """Value and ES gradient inside ``torch.compile``: eager numbers, no recompilation per call."""
    f = _decorated(method)
    x, w = _inputs()

    def value_and_grads(x, w):
        loss = f(x, w) * 2.0  # argnums=0: the estimate is for ``x``; ``w`` is data
        (gx,) = torch.autograd.grad(loss, (x,))
        return loss.detach(), gx

    backend = CountingBackend()
    compiled = torch.compile(value_and_grads, backend=backend)
    graphs: list[int] = []
    _assert_eager_numbers(compiled, value_and_grads, (x, w), lambda: graphs.append(backend.graphs))
    assert graphs[0] >= 1
    assert graphs[-1] == graphs[1]  # everything compiled by the second call: no recompilation


def _objectives():
    """(name, decorated function, differentiable argument) for every estimator path."""
    x, w = _inputs()
    normal = lambda shape: torch.randn(shape, dtype=DTYPE)  # noqa: E731 - a callable sampler

    @zero_order(distribution=normal, method='antithetic', num_samples=16, sigma=0.1)
    def noisy(x, w):  # draws random numbers itself: vmap's randomness='different'
        return 0.5 * x @ w @ x + 1e-3 * torch.randn((), dtype=DTYPE)

    @zero_order(distribution=normal, method='forward', num_samples=12, sigma=0.1)
    def leaves(d, w):  # two leaves: the grouped path
        return 0.5 * d['a'] @ w @ d['a'] + (d['b'] ** 2).sum()

    @zero_order(distribution=normal, method='naive', num_samples=5000, sigma=0.1)
    def chunked(x, w):  # more samples than one chunk
        return 0.5 * x @ w @ x

    @zero_order(distribution=normal, method='antithetic', num_samples=3, sigma=0.1)
    def looped(x, w):  # few samples: evaluated in a loop
        return 0.5 * x @ w @ x

    d = {'a': x, 'b': torch.randn(3, 2, dtype=DTYPE, requires_grad=True)}
    cases = [(m, _decorated(m), x) for m in METHODS]
    cases += [('noisy', noisy, x), ('leaves', leaves, d), ('chunked', chunked, x)]
    return [*cases, ('looped', looped, x)], w


@pytest.mark.parametrize('case', range(7), ids=[*METHODS, 'noisy', 'leaves', 'chunked', 'looped'])
def test_zero_order_compiles_as_one_graph(case):
    """``fullgraph=True``: one graph for 10 calls, value and ES gradient equal to eager."""
    cases, w = _objectives()
    _, f, arg = cases[case]
    leaves = [arg] if isinstance(arg, torch.Tensor) else list(arg.values())

    def run(fn, k):
        for leaf in leaves:
            leaf.grad = None
        torch.manual_seed(k)
        value = fn(arg, w)
        value.backward()
        return [value.detach(), *(leaf.grad.clone() for leaf in leaves)]

    # The eager call first: it fills the estimator's caches (layout plans, vmap mode), which
    # dynamo guards on; a compiled call never writes them. Mixed calls the other way round
    # compile once more after the first eager call, then no more.
    want = run(f, CALLS)
    backend = CountingBackend()
    compiled = torch.compile(lambda a, w: f(a, w), backend=backend, fullgraph=True)
    for a, b in zip(run(compiled, CALLS), want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for k in range(CALLS):
        got, want = run(compiled, k), run(f, k)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert backend.graphs == 1


@torch._dynamo.config.patch(trace_autograd_ops=True)
def test_zero_order_and_outer_autograd_grad_compile_as_one_graph():
    """The value and its ES gradient in one compiled function (``torch.autograd.grad`` inside
    the region needs ``trace_autograd_ops``): one graph, eager numbers."""
    f = _decorated('antithetic')
    x, w = _inputs()

    def value_and_grads(x, w):
        loss = f(x, w) * 2.0
        (gx,) = torch.autograd.grad(loss, (x,))
        return loss.detach(), gx

    value_and_grads(x, w)  # eager first: fills the caches dynamo guards on (see above)
    backend = CountingBackend()
    compiled = torch.compile(value_and_grads, backend=backend, fullgraph=True)
    _assert_eager_numbers(compiled, value_and_grads, (x, w))
    assert backend.graphs == 1


@pytest.mark.filterwarnings('ignore:.*torch.jit.script_method. is deprecated:DeprecationWarning')
def test_zero_order_under_inductor_with_eager_random_numbers():
    """Inductor draws its own random numbers unless ``fallback_random`` is set; with it, the
    compiled estimate is the eager one."""
    f = _decorated('forward')
    x, w = _inputs()
    with torch._inductor.config.patch(fallback_random=True):
        compiled = torch.compile(lambda x, w: f(x, w), fullgraph=True)
        for k in range(3):
            x.grad = None
            torch.manual_seed(k)
            compiled(x, w).backward()
            got = x.grad.clone()
            x.grad = None
            torch.manual_seed(k)
            f(x, w).backward()
            torch.testing.assert_close(got, x.grad, rtol=1e-12, atol=1e-12)


def test_zero_order_module_inside_a_compiled_region_gives_the_eager_estimate():
    """``ZeroOrderGradientModule`` compiles with graph breaks, not as one graph: its estimator
    swaps the module's parameters for the perturbed ones inside the autograd.Function's
    backward, a side effect dynamo refuses there. The numbers are the eager ones."""
    from torchopt_zero.nn import ZeroOrderGradientModule

    class Net(ZeroOrderGradientModule, method='forward', num_samples=10, sigma=0.1):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 1, dtype=DTYPE)

        def forward(self, x):
            return self.lin(x).pow(2).mean()

        def sample(self, sample_shape=torch.Size()):  # noqa: B008 - torch's own default
            return torch.randn(sample_shape, dtype=DTYPE)

    torch.manual_seed(0)
    net = Net()
    xs = torch.randn(8, 4, dtype=DTYPE)
    compiled = torch.compile(lambda: net(xs), backend=CountingBackend())
    for k in range(3):
        net.zero_grad()
        torch.manual_seed(k)
        compiled().backward()
        got = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        torch.manual_seed(k)
        net(xs).backward()
        for a, b in zip(got, (p.grad for p in net.parameters())):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
