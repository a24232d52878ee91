"""Upstream's private ``torchopt.alias.utils._set_use_chain_flat``: aliases as plain chains.

Upstream's own test-suites (``test_clip``, ``test_schedule``, ``test_combine``) import the switch
and run every optimizer both ways; with ``False`` the aliases must be plain
:class:`~torchopt.base.ChainedGradientTransformation` objects and still agree with the references.
"""

from __future__ import annotations

import pytest
import torch
from optimizer_table import (
    ALL,
    max_err,
    missing_schedule,
    row_params,
    rows,
    run_class,
    run_functional,
    run_reference,
)

import torchopt
from torchopt.alias.utils import _get_use_chain_flat, _set_use_chain_flat
from torchopt.base import ChainedGradientTransformation, identity
from torchopt.combine import FlatChain


@pytest.fixture
def plain_chains(float64_default):
    _set_use_chain_flat(False)
    try:
        yield
    finally:
        _set_use_chain_flat(True)


def test_default_is_flat() -> None:
    assert _get_use_chain_flat() is True
    assert isinstance(torchopt.adam(), FlatChain)


def test_plain_chain_structure(plain_chains) -> None:
    adam = torchopt.adam()
    assert isinstance(adam, ChainedGradientTransformation)
    assert not isinstance(adam, FlatChain)
    assert adam.chain(identity()) == adam
    assert identity().chain(adam) == adam
    assert torchopt.chain(identity(), adam, identity()) == adam
    cls = torchopt.Adam([torch.zeros(2, requires_grad=True)])
    assert isinstance(cls.group_impl(0), ChainedGradientTransformation)  # the classes too
    assert isinstance(torchopt.MetaAdam(torch.nn.Linear(2, 1)).impl, ChainedGradientTransformation)
    _set_use_chain_flat(True)
    assert isinstance(torchopt.adam(), FlatChain)  # aliases built afterwards only
    assert isinstance(adam, ChainedGradientTransformation)


@pytest.mark.parametrize('value', [0, 1, 'False', None])
def test_switch_rejects_non_bool(value) -> None:
    with pytest.raises(TypeError, match='use_chain_flat'):
        _set_use_chain_flat(value)
    assert _get_use_chain_flat() is True


# Every row's plain chain against its float64 reference, with random gradients missing.
@rows(ALL)
@pytest.mark.parametrize('api', ['class', 'inplace', 'out_of_place'])
def test_plain_chain_parity(plain_chains, row, api) -> None:
    params = row_params(row, 3, n=4)
    missing = missing_schedule(4, 12)
    _set_use_chain_flat(True)
    expected = run_reference(row, params, missing)
    _set_use_chain_flat(False)
    if api == 'class':
        got = run_class(row, params, missing)
    else:
        assert not isinstance(row.fn(**row.kwargs), FlatChain)
        got = run_functional(row, params, missing, inplace=api == 'inplace')
    assert max_err(got, expected) <= row.tol


def test_plain_chain_meta_optimizer(plain_chains) -> None:
    """A MetaAdam over plain chains unrolls with the same meta-gradient as over flat ones."""

    def meta_grad() -> torch.Tensor:
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1).double()
        w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        opt = torchopt.MetaAdam(net, lr=0.1)
        x = torch.randn(8, 3, dtype=torch.float64)
        for _ in range(3):
            opt.step(((net(x) * w) ** 2).mean())
        return torch.autograd.grad(net(x).sum(), w)[0]

    plain = meta_grad()
    _set_use_chain_flat(True)
    flat = meta_grad()
    torch.testing.assert_close(plain, flat, rtol=1e-12, atol=1e-12)
