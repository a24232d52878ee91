"""Complex parameters: every optimizer ``torch.optim`` runs on them, against ``torch.optim``.

``torch.optim`` treats a complex parameter as a real tensor of (real, imaginary) pairs
(``torch.view_as_real`` of the parameter, its gradient and its state). The torch-like classes,
the functional API (in place and out of place) and the Meta classes must give the same
parameters (float64, <= 1e-12 after 12 steps, gradients of some parameters missing), keep
complex state shaped like the parameters (so checkpoints move to ``torch.optim`` and back), and
stay differentiable (``gradcheck`` through an unrolled step).
"""

from __future__ import annotations

import pytest
import torch
from optimizer_table import CASES, max_err, rows

import torchopt

STEPS = 12
MISSING = [set() if k % 4 else {1} for k in range(STEPS)]


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(5, 3, dtype=torch.complex128, generator=g),
        torch.randn(4, dtype=torch.complex128, generator=g),
        torch.randn(3, dtype=torch.float64, generator=g),  # a real one in the same group
    ]


def _loss(params):
    return sum(
        ((p - 0.3).abs() ** 2 * (i + 1)).sum() + 0.1 * torch.view_as_real(p).sin().sum()
        if p.is_complex()
        else ((p - 0.3) ** 2).sum()
        for i, p in enumerate(params)
    )


def _steps(opt, ps, missing):
    for skip in missing:
        opt.zero_grad(set_to_none=True)
        _loss(ps).backward()
        for i in skip:
            ps[i].grad = None
        opt.step()


def _run_class(make, params):
    ps = [p.clone().requires_grad_() for p in params]
    opt = make(ps)
    _steps(opt, ps, MISSING)
    return opt, [p.detach() for p in ps]


def _torch_supports(row):
    try:
        _run_class(row.make_torch, _params(0))
    except (RuntimeError, ValueError, NotImplementedError) as error:
        return error
    return None


SUPPORTED = [row for row in CASES if _torch_supports(row) is None]
UNSUPPORTED = [row for row in CASES if row not in SUPPORTED]


def _run_functional(row, params, inplace):
    tree = [p.clone().requires_grad_() for p in params]
    opt = row.fn(**row.kwargs)
    state = opt.init(tree)
    for skip in MISSING:
        grads = list(torch.autograd.grad(_loss(tree), tree))
        for i in skip:
            grads[i] = None
        updates, state = opt.update(grads, state, params=tree, inplace=inplace)
        tree = torchopt.apply_updates(tree, updates, inplace=inplace)
        if not inplace:
            tree = [t.detach().requires_grad_() for t in tree]
    return state, [t.detach() for t in tree]


def test_the_table_has_complex_rows_on_both_sides():
    ids = {row.id.split('-')[0] for row in SUPPORTED}
    assert {'Adam', 'AdamW', 'SGD', 'RMSprop', 'Adagrad', 'NAdam', 'RAdam', 'Adamax'} <= ids


@rows(SUPPORTED)
def test_class_steps_match_torch_optim(row, float64_default):
    _, ref = _run_class(row.make_torch, _params(1))
    opt, ours = _run_class(lambda xs: row.cls(xs, **row.kwargs), _params(1))
    assert max_err(ours, ref) <= row.tol
    for p in opt.param_groups[0]['params'][:2]:  # complex state, shaped like the parameter
        for name, value in opt.state[p].items():
            if value.shape == p.shape:
                assert value.is_complex(), name


@rows(SUPPORTED)
@pytest.mark.parametrize('inplace', [True, False], ids=['inplace', 'out-of-place'])
def test_functional_updates_match_torch_optim(row, inplace, float64_default):
    _, ref = _run_class(row.make_torch, _params(2))
    _, ours = _run_functional(row, _params(2), inplace)
    assert max_err(ours, ref) <= row.tol


@rows(SUPPORTED)
def test_checkpoints_move_to_torch_optim_and_back(row, float64_default):
    """Half the steps in one library, a checkpoint, the other half in the other one."""
    ref_opt, ref = _run_class(row.make_torch, _params(3))
    for first, second in ((row.make_torch, row.cls), (row.cls, row.make_torch)):
        make_first = first if first is row.make_torch else (lambda xs: row.cls(xs, **row.kwargs))
        make_second = second if second is row.make_torch else (lambda xs: row.cls(xs, **row.kwargs))
        ps = [p.clone().requires_grad_() for p in _params(3)]
        opt = make_first(ps)
        _steps(opt, ps, MISSING[: STEPS // 2])
        saved = opt.state_dict()
        for k, p in enumerate(ps[:2]):  # complex buffers shaped like the parameter, both ways
            entry = saved['state'].get(k, {})  # (plain SGD keeps none)
            assert all(v.is_complex() for v in entry.values() if v.shape == p.shape)
        opt = make_second(ps)
        opt.load_state_dict(saved)
        _steps(opt, ps, MISSING[STEPS // 2 :])
        assert max_err([p.detach() for p in ps], ref) <= row.tol


def test_meta_adam_on_a_complex_module_matches_torch_optim(float64_default):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(_params(4)[0])

        def forward(self):
            return _loss([self.w])

    net = Net()
    ref = torch.nn.Parameter(net.w.detach().clone())
    meta = torchopt.MetaAdam(net, lr=0.1)
    adam = torch.optim.Adam([ref], lr=0.1, foreach=False)
    for _ in range(5):
        meta.step(net())
        adam.zero_grad()
        _loss([ref]).backward()
        adam.step()
    assert (net.w - ref).abs().max().item() <= 1e-12


@pytest.mark.parametrize('name', ['adam', 'sgd', 'rmsprop'])
def test_an_unrolled_complex_step_is_differentiable(name, float64_default):
    """``gradcheck`` (Wirtinger calculus for the complex input) through two out-of-place steps."""
    make = {
        'adam': lambda: torchopt.adam(0.1),
        'sgd': lambda: torchopt.sgd(0.1, momentum=0.9),
        'rmsprop': lambda: torchopt.rmsprop(0.1),
    }[name]

    def unrolled(w):
        opt = make()
        params = [w]
        state = opt.init(params)
        for _ in range(2):
            grads = list(torch.autograd.grad(_loss(params), params, create_graph=True))
            updates, state = opt.update(grads, state, params=params, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        return _loss(params)

    w = _params(5)[1].requires_grad_()
    assert torch.autograd.gradcheck(unrolled, (w,))


@rows(UNSUPPORTED)
def test_optimizers_without_a_complex_form_refuse_it_by_name(row, float64_default):
    """As ``torch.optim`` (Adafactor, Muon): a ``TypeError`` naming the leaf, nothing written."""
    g = torch.Generator().manual_seed(6)
    params = [torch.randn(4, 3, dtype=torch.complex128, generator=g).requires_grad_()]
    params.append(torch.randn(5, 2, dtype=torch.float64, generator=g).requires_grad_())
    before = [p.detach().clone() for p in params]
    opt = row.cls(params, **row.kwargs)
    _loss(params).backward()
    with pytest.raises(TypeError, match=r'does not support complex parameters, but leaf 0'):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    with pytest.raises(TypeError, match='does not support complex parameters'):
        row.fn(**row.kwargs).init(params)
