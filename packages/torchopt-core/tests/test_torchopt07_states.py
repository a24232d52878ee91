"""States saved by TorchOpt 0.7 load and resume: classes, Meta optimizers, FuncOptimizer.

A TorchOpt 0.7 checkpoint (``torch.save(opt.state_dict())``, a tuple of chain states) unpickles
into the same NamedTuple classes with upstream's contents: int64 step counts, one Python int
``t`` for Adamax and RAdam, and a ``TraceState`` for momentum with dampening. Each test writes
such a state from this library's own state at step 3 (the same numbers in upstream's layout),
loads it into a fresh optimizer and requires the rest of the run to be the uninterrupted run,
bit for bit. Checked by hand against real TorchOpt 0.7.3 checkpoints (stop 37 note).
"""

from __future__ import annotations

import copy

import optree
import pytest
import torch
from optimizer_table import CASES, loss, row_params, rows

import torchopt
from torchopt.transform import DampenedTraceState, TraceState

pytestmark = pytest.mark.usefixtures('float64_default')


def as_torchopt07(state: object) -> object:
    """``state`` in TorchOpt 0.7's layout (what its ``state_dict()`` held)."""
    if isinstance(state, DampenedTraceState):
        return TraceState(trace=state.trace)
    if isinstance(state, tuple) and hasattr(state, '_fields'):
        fields = {}
        for name, value in zip(state._fields, state):
            if name == 't' and isinstance(value, list):  # Adamax / RAdam: one int for all
                value = int(value[0])
            elif isinstance(value, list):
                value = [
                    v.long() if isinstance(v, torch.Tensor) and v.dim() == 0 and name in
                    ('count', 't') else v
                    for v in value
                ]  # fmt: skip
            elif isinstance(value, tuple):
                value = as_torchopt07(value)
            fields[name] = value
        return type(state)(**fields)
    if isinstance(state, tuple):
        return tuple(as_torchopt07(s) for s in state)
    return state


UPSTREAM_CLASSES = {  # the TorchOpt 0.7 classes, with options that change their state
    'Adam': lambda p: torchopt.Adam(p, lr=0.01, weight_decay=0.1),
    'AdamW': lambda p: torchopt.AdamW(p, lr=0.01),
    'SGD-momentum': lambda p: torchopt.SGD(p, lr=0.01, momentum=0.9),
    'SGD-dampening': lambda p: torchopt.SGD(p, lr=0.01, momentum=0.9, dampening=0.5),
    'SGD-nesterov': lambda p: torchopt.SGD(p, lr=0.01, momentum=0.9, nesterov=True),
    'RMSProp-centered': lambda p: torchopt.RMSProp(p, lr=0.01, centered=True, momentum=0.5),
    'AdaGrad': lambda p: torchopt.AdaGrad(p, lr=0.1, lr_decay=0.01),
    'AdaDelta': lambda p: torchopt.AdaDelta(p),
    'Adamax': lambda p: torchopt.Adamax(p),
    'RAdam': lambda p: torchopt.RAdam(p),
}


def _train(opt: torch.optim.Optimizer, params: list, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        loss(params).backward()
        opt.step()


@pytest.mark.parametrize('name', sorted(UPSTREAM_CLASSES))
def test_a_class_resumes_from_a_torchopt07_checkpoint(name):
    make = UPSTREAM_CLASSES[name]
    params = [p.detach().clone().requires_grad_() for p in row_params(CASES[0], 0)]
    opt = make(params)
    _train(opt, params, 3)
    saved = copy.deepcopy(as_torchopt07(tuple(opt.state_groups)))
    resumed = [p.detach().clone().requires_grad_() for p in params]
    other = make(resumed)
    other.load_state_dict(saved)
    _train(opt, params, 4)
    _train(other, resumed, 4)
    for a, b in zip(params, resumed):
        assert torch.equal(a, b), name


@rows([r for r in CASES if r.id in ('Adam', 'SGD-md', 'Adagrad', 'Adamax', 'RAdam')])
def test_a_meta_optimizer_resumes_from_a_torchopt07_state(row):
    torch.manual_seed(0)
    x = torch.randn(6, 3)

    def net() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1)
        )

    def run(model: torch.nn.Module, opt: torchopt.MetaOptimizer, steps: int) -> None:
        for _ in range(steps):
            opt.step(model(x).pow(2).mean())

    model = net()
    opt = row.meta(model, **row.meta_kwargs)
    run(model, opt, 3)
    torchopt.stop_gradient(model)
    torchopt.stop_gradient(opt)
    saved = copy.deepcopy(as_torchopt07(opt.state_dict()))
    other_model = net()
    other_model.load_state_dict(model.state_dict())
    other = row.meta(other_model, **row.meta_kwargs)
    other.load_state_dict(saved)
    run(model, opt, 3)
    run(other_model, other, 3)
    for a, b in zip(model.parameters(), other_model.parameters()):
        assert torch.equal(a, b), row.id


def test_meta_optimizer_states_follow_torchopt07s_parameter_order():
    """Within a module the names sorted (optree's dict order): ``bias`` before ``weight``,
    so that a state saved by TorchOpt 0.7 lands on the right parameters."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = torchopt.MetaAdam(model, lr=0.1)
    opt.step(model(torch.randn(2, 3)).sum())
    shapes = [tuple(m.shape) for m in opt.state_dict()[0][0].mu]
    assert shapes == [(4,), (4, 3), (4,), (4,)]  # Linear bias, weight; LayerNorm bias, weight


def test_func_optimizer_resumes_from_a_torchopt07_state():
    torch.manual_seed(0)
    params = (torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True))

    def f(p: tuple) -> torch.Tensor:
        return (p[0] ** 2).sum() + (p[1] ** 3).sum()

    fo = torchopt.FuncOptimizer(torchopt.radam(0.1))
    for _ in range(2):
        params = fo.step(f(params), params)
    other = torchopt.FuncOptimizer(torchopt.radam(0.1))
    other.load_state_dict(as_torchopt07(fo.state_dict()))
    a = b = params
    for _ in range(3):
        a, b = fo.step(f(a), a), other.step(f(b), b)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _int_counts(row: object) -> object:
    """The row's functional state in TorchOpt 0.7's layout, if it has integer step counts."""
    state = as_torchopt07(row.fn(**row.kwargs).init(row_params(row, 0)))  # type: ignore[attr-defined]
    leaves = optree.tree_leaves(state)
    return (
        state
        if any(isinstance(x, torch.Tensor) and not x.is_floating_point() for x in leaves)
        else None
    )


@pytest.mark.parametrize('inplace', [True, False])
@rows([r for r in CASES if _int_counts(r) is not None])
def test_functional_int64_counts_raise_before_anything_is_written(row, inplace):
    """The functional update does not convert (it cannot in place): it names the field."""
    params = row_params(row, 0)
    opt = row.fn(**row.kwargs)
    state = as_torchopt07(opt.init([p.detach() for p in params]))
    before = [x.clone() for x in optree.tree_leaves(state)]
    grads = [torch.ones_like(p) for p in params]
    grads_before = [g.clone() for g in grads]
    with pytest.raises(TypeError, match='step counts'):
        opt.update(grads, state, params=[p.detach() for p in params], inplace=inplace)
    assert all(torch.equal(a, b) for a, b in zip(before, optree.tree_leaves(state)))
    assert all(torch.equal(a, b) for a, b in zip(grads_before, grads))


@pytest.mark.parametrize('name', ['Adam', 'AdamW', 'AdaGrad'])
def test_class_fused_steps_refuse_int64_counts_before_writing(name):
    """The fused class steps check the counts with the rest of the state (not after a kernel)."""
    params = [p.detach().clone().requires_grad_() for p in row_params(CASES[0], 0)]
    opt = UPSTREAM_CLASSES[name](params)
    _train(opt, params, 1)
    opt.state_groups[0] = as_torchopt07(opt.state_groups[0])
    before = [p.detach().clone() for p in params]
    buffers = [t.clone() for t in optree.tree_leaves(opt.state_groups[0])]
    loss(params).backward()
    with pytest.raises(TypeError, match='step counts'):
        opt.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, params))
    assert all(torch.equal(a, b) for a, b in zip(buffers, optree.tree_leaves(opt.state_groups[0])))
