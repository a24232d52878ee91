"""``ZeroOrderGradientModule`` and ``enable_zero_order_gradients``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchopt_zero.nn import ZeroOrderGradientModule, enable_zero_order_gradients
from torchopt_zero.nn.module import enable_zero_order_gradients as enable_from_module

DTYPE = torch.float64


class Net(ZeroOrderGradientModule, method='antithetic', num_samples=6, sigma=0.2, vectorize=True):
    def __init__(self, recorder):
        super().__init__()
        self.body = nn.Linear(3, 4, dtype=DTYPE)
        self.head = nn.Linear(4, 1, bias=False, dtype=DTYPE)
        self.register_buffer('shift', torch.full((3,), 0.5, dtype=DTYPE))
        self.recorder = recorder

    def forward(self, x, *, power=2):
        return self.head(torch.tanh(self.body(x + self.shift))).pow(power).mean()

    def sample(self, sample_shape=torch.Size()):
        return self.recorder.sample(sample_shape)


def functional_net(net, params, x, power=2):
    weight, bias, head = params
    hidden = torch.tanh((x + net.shift) @ weight.T + bias)
    return (hidden @ head.T).pow(power).mean()


def test_module_gradients_match_formula(recorder, reference):
    torch.manual_seed(0)
    net = Net(recorder)
    x = torch.randn(5, 3, dtype=DTYPE)
    params = [net.body.weight, net.body.bias, net.head.weight]
    out = net(x, power=3)  # keyword arguments reach forward
    torch.testing.assert_close(out, functional_net(net, params, x, 3).detach())
    out.backward()
    noises = recorder.noises([p.shape for p in params])
    expected = reference(
        lambda ts: functional_net(net, ts, x, 3), params, noises, 'antithetic', 0.2
    )
    for param, exp in zip(params, expected):
        torch.testing.assert_close(param.grad, exp, rtol=1e-10, atol=1e-12)
    # the parameters were put back
    assert isinstance(net.body.weight, nn.Parameter) and net.body.weight is params[0]
    assert [name for name, _ in net.named_parameters()] == [
        'body.weight',
        'body.bias',
        'head.weight',
    ]


def test_frozen_parameters_and_tied_weights(recorder, reference):
    class Tied(ZeroOrderGradientModule, method='forward', num_samples=4, sigma=0.3):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2, bias=False, dtype=DTYPE)
            self.b = nn.Linear(2, 2, dtype=DTYPE)
            self.b.weight = self.a.weight  # tied
            self.b.bias.requires_grad_(False)

        def forward(self, x):
            return (self.b(self.a(x)) ** 2).sum()

        def sample(self, sample_shape=torch.Size()):
            return recorder.sample(sample_shape)

    torch.manual_seed(1)
    net = Tied()
    x = torch.randn(3, 2, dtype=DTYPE)
    net(x).backward()
    assert net.b.bias.grad is None
    assert all(d.shape[1:] == (4,) for d in recorder.draws)  # one (2, 2) tensor, perturbed once

    def f(ts):
        (w,) = ts
        return (((x @ w.T) @ w.T + net.b.bias) ** 2).sum()

    (expected,) = reference(f, [net.a.weight], [recorder.noise_for((2, 2))], 'forward', 0.3)
    torch.testing.assert_close(net.a.weight.grad, expected, rtol=1e-10, atol=1e-12)


def test_subclass_of_concrete_module_rewraps_with_its_keywords(recorder, reference):
    class More(Net, method='naive', num_samples=3, sigma=0.5):
        pass

    torch.manual_seed(2)
    net = More(recorder)
    x = torch.randn(2, 3, dtype=DTYPE)
    net(x).backward()
    params = [net.body.weight, net.body.bias, net.head.weight]
    noises = recorder.noises([p.shape for p in params])
    assert noises[0].shape[0] == 3
    expected = reference(lambda ts: functional_net(net, ts, x), params, noises, 'naive', 0.5)
    for param, exp in zip(params, expected):
        torch.testing.assert_close(param.grad, exp, rtol=1e-10, atol=1e-12)


def test_errors():
    class Empty(ZeroOrderGradientModule):
        def forward(self):
            return torch.zeros(())

        def sample(self, sample_shape=torch.Size()):
            return torch.zeros(sample_shape)

    with pytest.raises(RuntimeError, match='The module has no parameters.'):
        Empty()()
    with pytest.raises(TypeError, match='already enabled for the `forward` method'):
        enable_zero_order_gradients(Empty)
    assert enable_from_module is enable_zero_order_gradients

    class NoSample(ZeroOrderGradientModule):
        def forward(self):
            return torch.zeros(())

    with pytest.raises(TypeError, match='abstract'):
        NoSample()
    with pytest.raises(ValueError, match='`method` must be one of'):

        class Bad(ZeroOrderGradientModule, method='central'):
            pass


def test_enable_on_plain_module_class():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=DTYPE))

        def forward(self, x):
            return (self.w * x).sum() ** 2

        def sample(self, sample_shape=torch.Size()):
            return torch.randn(sample_shape, dtype=DTYPE)

    enable_zero_order_gradients(Plain, method='antithetic', num_samples=2000, sigma=0.01)
    net = Plain()
    x = torch.tensor([0.5, 1.0], dtype=DTYPE)
    torch.manual_seed(0)
    net(x).backward()
    exact = 2 * float((net.w.detach() * x).sum()) * x  # closed form
    rel = (net.w.grad - exact).norm() / exact.norm()
    assert rel < 5 * (3 / 2000) ** 0.5  # antithetic error ~ sqrt((d + 1) / N)

    class NotSamplable(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self):
            return self.w.sum()

    enable_zero_order_gradients(NotSamplable)
    with pytest.raises(TypeError, match=r'must define `sample\(sample_shape\)`'):
        NotSamplable()()
