"""Sparse gradients (``nn.Embedding(sparse=True)``), as ``torch.optim`` takes or refuses them.

``torch.optim``'s SGD (every momentum variant) and Adagrad take sparse gradients; the others
raise. Here the SGD and Adagrad rows run on a dense copy of the gradient and must equal
``torch.optim`` fed the same sparse gradients (where it takes them: it refuses weight decay
with sparse gradients) and fed their dense form (always), float64, <= 1e-12 after 6 steps; the
gradient itself is never written. Every other optimizer raises a ``TypeError`` that names the
leaf, before anything is written.
"""

from __future__ import annotations

import pytest
import torch
from optimizer_table import CASES, EXTRA, max_err, rows

import torchopt

pytestmark = pytest.mark.usefixtures('float64_default', 'checked_sparse')

ACCEPTING = [row for row in CASES if row.id.split('-')[0] in ('SGD', 'Adagrad')]
REFUSING = [row for row in CASES + EXTRA if row not in ACCEPTING and not row.matrices_only]
STEPS = 6
INDICES = [torch.tensor([1, 2, 2, 5]), torch.tensor([0, 7]), torch.tensor([5, 5, 9])]


@pytest.fixture
def checked_sparse():
    """Sparse invariants checked (torch warns when nobody chose; torch.optim.Adagrad builds some)."""
    with torch.sparse.check_sparse_tensor_invariants(enable=True):
        yield


def _embedding_steps(make, dense):
    emb = torch.nn.Embedding(10, 3, sparse=True, dtype=torch.float64)
    with torch.no_grad():
        emb.weight.copy_(torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(10, 3))
    opt = make(list(emb.parameters()))
    for k in range(STEPS):
        opt.zero_grad(set_to_none=True)
        (emb(INDICES[k % 3]) - 0.2).pow(2).sum().backward()
        if dense:
            emb.weight.grad = emb.weight.grad.to_dense()
        opt.step()
    return emb.weight.detach()


def _torch_takes_sparse(row):
    try:
        _embedding_steps(row.make_torch, dense=False)
    except RuntimeError:
        return False
    return True


def test_the_rows():
    assert {r.id for r in ACCEPTING} >= {'SGD', 'SGD-m', 'SGD-nesterov', 'Adagrad'}
    assert all(_torch_takes_sparse(r) for r in ACCEPTING if r.id in ('SGD-m', 'Adagrad'))


@rows(ACCEPTING)
def test_sgd_and_adagrad_take_sparse_gradients_as_torch_optim(row):
    ours = _embedding_steps(lambda ps: row.cls(ps, **row.kwargs), dense=False)
    assert max_err([ours], [_embedding_steps(row.make_torch, dense=True)]) <= row.tol
    if _torch_takes_sparse(row):
        assert max_err([ours], [_embedding_steps(row.make_torch, dense=False)]) <= row.tol


@rows(ACCEPTING)
@pytest.mark.parametrize('inplace', [True, False], ids=['inplace', 'out-of-place'])
def test_the_functional_update_is_dense_and_leaves_the_gradient_alone(row, inplace):
    param = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)
    grad = torch.sparse_coo_tensor(
        [[0, 2, 2]], torch.ones(3, 3, dtype=torch.float64), (4, 3), check_invariants=True
    )
    before = grad.to_dense().clone()
    opt = row.fn(**row.kwargs)
    sparse_u, _ = opt.update([grad], opt.init([param]), params=[param], inplace=inplace)
    dense_u, _ = opt.update([grad.to_dense()], opt.init([param]), params=[param], inplace=inplace)
    assert sparse_u[0].layout is torch.strided
    assert torch.equal(sparse_u[0], dense_u[0])
    assert grad.layout is torch.sparse_coo and torch.equal(grad.to_dense(), before)


@rows(REFUSING)
def test_the_others_refuse_sparse_gradients_by_name_and_change_nothing(row):
    emb = torch.nn.Embedding(10, 3, sparse=True, dtype=torch.float64)
    dense = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = row.cls([dense, emb.weight], **row.kwargs)
    for sparse_step in (False, True):  # a first dense step, so that there is state to keep
        opt.zero_grad(set_to_none=True)
        (emb(INDICES[0]).sum() + dense.pow(2).sum()).backward()
        if not sparse_step:
            emb.weight.grad = emb.weight.grad.to_dense()
            opt.step()
    weights = [dense.detach().clone(), emb.weight.detach().clone()]
    saved = {k: {n: v.clone() for n, v in e.items()} for k, e in opt.state_dict()['state'].items()}
    with pytest.raises(TypeError, match=r'does not support sparse gradients, but leaf 1'):
        opt.step()
    assert max_err([dense.detach(), emb.weight.detach()], weights) == 0.0
    after = opt.state_dict()['state']
    assert all(torch.equal(after[k][n], v) for k, e in saved.items() for n, v in e.items())
    fn = row.fn(**row.kwargs)
    with pytest.raises(TypeError, match='does not support sparse gradients'):
        fn.update([emb.weight.grad], fn.init([emb.weight]), params=[emb.weight])


def test_a_sparse_parameter_is_refused():
    param = torch.sparse_coo_tensor(
        [[0]], torch.ones(1, 3, dtype=torch.float64), (4, 3), check_invariants=True
    )
    opt = torchopt.sgd(0.1, weight_decay=0.1)
    with pytest.raises(TypeError, match='does not support sparse parameters'):
        opt.update([param.clone()], opt.init([param.to_dense()]), params=[param])
