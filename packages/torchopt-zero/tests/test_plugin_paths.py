"""The upstream paths served by this plugin resolve to its objects."""

import importlib

import torch

import torchopt
import torchopt_zero
import torchopt_zero.nn
import torchopt_zero.nn.module


def test_upstream_paths_resolve_to_plugin_objects():
    import torchopt.diff.zero_order as zo
    import torchopt.diff.zero_order.nn as zo_nn
    import torchopt.diff.zero_order.nn.module as zo_module

    assert zo is torchopt_zero
    assert zo_nn is torchopt_zero.nn
    assert zo_module is torchopt_zero.nn.module
    assert torchopt.diff.zero_order is torchopt_zero
    assert importlib.import_module('torchopt.diff.zero_order.nn') is torchopt_zero.nn
    cls = torchopt_zero.ZeroOrderGradientModule
    assert torchopt.nn.ZeroOrderGradientModule is cls
    assert torchopt.diff.ZeroOrderGradientModule is cls
    assert zo_nn.ZeroOrderGradientModule is cls
    assert zo_module.ZeroOrderGradientModule is cls
    assert zo_module.enable_zero_order_gradients is torchopt_zero.nn.enable_zero_order_gradients
    assert sorted(torchopt_zero.__all__) == ['ZeroOrderGradientModule', 'zero_order']


def test_module_object_is_callable():
    import torchopt.diff.zero_order

    assert callable(torchopt.diff.zero_order)
    normal = torch.distributions.Normal(0.0, 1.0)
    grads = []
    for decorate in (torchopt.diff.zero_order, torchopt.diff.zero_order.zero_order):
        x = torch.ones(3, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(0)
        decorate(normal, method='antithetic', num_samples=4, sigma=0.1)(lambda a: (a**2).sum())(
            x
        ).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
