"""Gradients whose memory layout differs from the parameter's, against ``torch.optim`` (float64).

A gradient assigned by hand can be a strided view or an ``expand``-ed tensor whose elements
share memory, and ``torch.autograd.grad`` of ``p.sum()`` returns an ``expand``-ed one.
``torch.optim`` takes both. The fused kernels refuse them (the dispatcher checks contiguity),
and the in-place steps write their updates into the gradients, which an ``expand``-ed one
cannot hold: the class step and the functional in-place update copy such a gradient first.
"""

from __future__ import annotations

import pytest
import torch
from optimizer_table import CASES, max_err, row_params, rows

import torchopt

pytestmark = pytest.mark.usefixtures('float64_default')

SHAPE = (4, 3)


def _grad(kind, k):
    if kind == 'expanded':  # every element the same memory location
        return torch.full((1, 1), 0.5 + 0.1 * k, dtype=torch.float64).expand(*SHAPE)
    if kind == 'strided':
        base = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(4, 6) * (1 + k)
        return base[:, ::2]
    return torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4).t() * (
        1 + k
    )  # 'transposed'


def _steps(make, kind):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*SHAPE, dtype=torch.float64)) for _ in range(2)]
    opt = make(params)
    grads = []
    for k in range(5):
        for p in params:
            p.grad = _grad(kind, k)
        grads.append([p.grad for p in params])
        opt.step()
    return [p.detach() for p in params], grads


@rows(CASES)
@pytest.mark.parametrize('kind', ['expanded', 'strided', 'transposed'])
def test_layouts_step_as_in_torch_optim(row, kind):
    ref, _ = _steps(row.make_torch, kind)
    ours, grads = _steps(lambda ps: row.cls(ps, **row.kwargs), kind)
    assert max_err(ours, ref) <= row.tol
    if kind == 'expanded':  # the copy took the update, the user's gradient is unchanged
        for k, step in enumerate(grads):
            assert all(torch.equal(g, _grad(kind, k)) for g in step)


def _tensors(tree):
    return [t for t in torchopt.pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


@rows()
def test_functional_inplace_update_takes_expanded_gradients(row):
    """As on a contiguous copy, bit for bit; the user's gradients and state are not written."""
    params = row_params(row, seed=3)
    opt = row.fn(**row.kwargs)
    ours, ref = opt.init(params), opt.init(params)
    for k in range(3):
        grads = [torch.full((1,) * p.dim(), 0.3 - 0.2 * k).expand(p.shape) for p in params]
        updates, ours = opt.update(grads, ours, params=params, inplace=True)
        copies = [g.clone() for g in grads]
        expected, ref = opt.update(copies, ref, params=params, inplace=True)
        assert all(torch.equal(u, e) for u, e in zip(updates, expected))
        assert all(torch.equal(a, b) for a, b in zip(_tensors(ours), _tensors(ref)))
        assert all(torch.equal(g, torch.full_like(g, 0.3 - 0.2 * k)) for g in grads)
