"""Tests for ``torchopt.nn.stateless``: swap_state, reparametrize and the MISSING sentinel."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from torch.func import functional_call

import torchopt
from torchopt.nn import MetaGradientModule, reparameterize, reparametrize, swap_state
from torchopt.nn.stateless import MISSING

DTYPE = torch.float64


def make_net() -> nn.Module:
    """Linear, batch norm, linear, plus a non-persistent buffer (float64)."""
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).to(DTYPE)
    net.register_buffer('offset', torch.zeros(2, dtype=DTYPE), persistent=False)
    return net


def snapshot(net: nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """Every tensor by name, with the store that holds it."""
    out = {}
    for prefix, m in net.named_modules():
        for store in ('_parameters', '_buffers', '_meta_parameters'):
            for k, v in getattr(m, store, {}).items():
                out[f'{prefix}.{k}' if prefix else k] = (store, v)
    return out


def assert_same_state(net: nn.Module, before: dict[str, tuple[str, torch.Tensor]]) -> None:
    """Assert the same tensor objects in the same stores, in the same order."""
    after = snapshot(net)
    assert list(after) == list(before)
    for name, (store, tensor) in before.items():
        assert after[name][0] == store and after[name][1] is tensor, name
    assert all(isinstance(p, nn.Parameter) for p in net.parameters())


def test_all_and_aliases() -> None:
    """Public names, the alias and the MISSING sentinel."""
    assert torchopt.nn.stateless.__all__ == [
        'MISSING',
        'reparameterize',
        'reparametrize',
        'swap_state',
    ]
    assert reparameterize is reparametrize
    assert repr(MISSING) == 'MISSING'
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING


def test_swap_state_puts_any_tensor_and_returns_old() -> None:
    """swap_state writes into the stores unchecked and returns the old tensors."""
    net = make_net()
    old_w, old_mean = net[0].weight, net[1].running_mean
    w = torch.randn(4, 3, dtype=DTYPE, requires_grad=True)
    w_non_leaf = w * 2.0  # not a Parameter, not a leaf: accepted without checks
    mean = torch.ones(4, dtype=DTYPE)
    old = swap_state(net, [('0.weight', w_non_leaf), ('1.running_mean', mean)])
    assert old == {'0.weight': old_w, '1.running_mean': old_mean}
    assert net[0]._parameters['weight'] is w_non_leaf and net[1]._buffers['running_mean'] is mean
    back = swap_state(net, old)
    assert back['0.weight'] is w_non_leaf
    assert net[0].weight is old_w and net[1].running_mean is old_mean


def test_reparametrize_matches_functional_call_and_gradients() -> None:
    """Outputs match ``torch.func.functional_call``; gradients reach the new tensors."""
    net = make_net().eval()
    x = torch.randn(5, 3, dtype=DTYPE)
    names = dict(net.named_parameters())
    new = {k: torch.randn_like(v, requires_grad=True) for k, v in names.items()}
    before = snapshot(net)
    with reparametrize(net, new) as same:
        assert same is net
        out = net(x)
    assert_same_state(net, before)
    expected = functional_call(net, new, (x,))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # the output is differentiable in the swapped-in tensors: check against the closed form of
    # the last layer's weight gradient, d sum(out) / dW2 = 1^T h
    with reparametrize(net, new):
        h = net[1](net[0](x)).detach()  # the hidden features under the new tensors
    (g,) = torch.autograd.grad(out.sum(), new['2.weight'])
    torch.testing.assert_close(g, h.sum(0).expand(2, 4), rtol=1e-12, atol=1e-12)
    assert all(p.grad is None for p in net.parameters())


def test_reparametrize_restores_on_exception() -> None:
    """The original tensors come back when the body raises."""
    net = make_net()
    before = snapshot(net)
    with pytest.raises(RuntimeError, match='boom'):
        with reparameterize(net, {'0.weight': torch.zeros(4, 3), 'offset': torch.ones(2)}):
            assert net[0].weight.abs().sum() == 0
            raise RuntimeError('boom')
    assert_same_state(net, before)
    assert 'offset' in net._non_persistent_buffers_set


def test_failed_swap_rolls_back_what_was_swapped() -> None:
    """A bad entry restores the entries swapped before it."""
    net = make_net()
    before = snapshot(net)
    with pytest.raises(AttributeError, match=r"has no attribute 'nope' \(for '0.nope'\)"):
        swap_state(net, {'0.weight': torch.zeros(4, 3), '0.nope': torch.zeros(1)})
    assert_same_state(net, before)
    with pytest.raises(AttributeError, match="'5' is not a submodule"):
        with reparametrize(net, {'0.bias': torch.zeros(4), '5.weight': torch.zeros(1)}):
            pytest.fail('the body must not run')  # pragma: no cover
    assert_same_state(net, before)
    with pytest.raises(AttributeError, match="'0.weight' is a Parameter, not a submodule"):
        swap_state(net, {'0.weight.x': torch.zeros(1)})


def test_missing_deletes_and_restores_into_the_same_store() -> None:
    """MISSING deletes; the restore puts each tensor back where it was."""
    net = make_net()
    before = snapshot(net)

    def live_dicts() -> list[dict]:
        return [m._parameters for m in net] + [m._buffers for m in net] + [net._buffers]

    dicts = live_dicts()
    with reparametrize(
        net, {'0.weight': MISSING, '0.bias': MISSING, 'offset': MISSING, '1.running_var': MISSING}
    ):
        assert net[0]._parameters == {}
        assert 'bias' not in net[0]._parameters and not hasattr(net[0], 'bias')
        assert 'offset' not in net._buffers and 'offset' not in net._non_persistent_buffers_set
        assert not hasattr(net[1], 'running_var')
    assert_same_state(net, before)  # same tensors, same stores, same order
    # the very same dict objects (a MetaOptimizer holds references to them)
    assert all(a is b for a, b in zip(dicts, live_dicts()))
    assert 'offset' in net._non_persistent_buffers_set  # still non-persistent
    assert 'offset' not in net.state_dict()


def test_allow_missing_adds_and_removes() -> None:
    """allow_missing adds new attributes and removes them again."""
    net = make_net()
    extra = torch.ones(1)
    with pytest.raises(AttributeError, match='pass allow_missing=True'):
        swap_state(net, {'0.extra': extra})
    old = swap_state(net, {'0.extra': extra, '0.weight': torch.zeros(4, 3)}, allow_missing=True)
    assert old['0.extra'] is MISSING
    assert net[0].extra is extra
    swap_state(net, old, allow_missing=True)
    assert not hasattr(net[0], 'extra')
    assert isinstance(net[0].weight, nn.Parameter)
    before = snapshot(net)
    with reparametrize(net, {'new': extra}, allow_missing=True):
        assert net.new is extra
    assert not hasattr(net, 'new')
    assert_same_state(net, before)


def test_meta_parameters_are_swapped_in_place() -> None:
    """Meta-parameters of a MetaGradientModule are swapped in their own store."""

    class Scaled(MetaGradientModule):
        def __init__(self, scale: torch.Tensor) -> None:
            super().__init__()
            self.scale = scale
            self.lin = nn.Linear(2, 1).to(DTYPE)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * self.scale

    scale = torch.tensor(2.0, dtype=DTYPE, requires_grad=True)
    mod = Scaled(scale)
    x = torch.randn(3, 2, dtype=DTYPE)
    other = torch.tensor(-1.5, dtype=DTYPE, requires_grad=True)
    with reparametrize(mod, {'scale': other}):
        assert mod._meta_parameters['scale'] is other and 'scale' not in mod._parameters
        out = mod(x)
    assert mod._meta_parameters['scale'] is scale
    (g,) = torch.autograd.grad(out.sum(), other)
    torch.testing.assert_close(g, mod.lin(x).sum().detach(), rtol=1e-12, atol=0)
    with reparametrize(mod, {'scale': MISSING}):
        assert 'scale' not in mod._meta_parameters
    assert mod._meta_parameters['scale'] is scale


def test_bad_arguments() -> None:
    """Bad arguments raise TypeError naming the argument."""
    net = make_net()
    with pytest.raises(TypeError, match='`module` must be an nn.Module, got dict'):
        swap_state({}, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='`module` must be an nn.Module, got list'):
        with reparametrize([], {}):  # type: ignore[arg-type]
            pass  # pragma: no cover
    with pytest.raises(TypeError, match='`named_tensors` must be a dict or an iterable'):
        swap_state(net, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='`named_tensors` keys must be dotted names'):
        swap_state(net, {0: torch.zeros(1)})  # type: ignore[dict-item]
