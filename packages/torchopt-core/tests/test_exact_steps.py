"""RMSprop and Adagrad give ``torch.optim``'s numbers bit for bit (torchopt._exact_steps).

One bit matters for both: they divide by the root of a gradient's own running square, so a
gradient that is numerically noise gets a full-size step whose sign is that noise. Behind a
batch-norm layer fed constant inputs (upstream TorchOpt's own optimizer tests do this) one bit of
difference at the first step grew to 1.5 after five RMSprop steps.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import torchopt

# Shapes below and above the size from which the step runs per tensor (1 << 16 elements).
SHAPES = [(7,), (33, 5), (), (70_000,)]
SIGN_DECAY = ((0.0, False), (1e-2, True), (1e-2, False))  # (weight_decay, maximize)
RMSPROP = [
    dict(lr=0.1, alpha=0.9, eps=1e-8, centered=c, momentum=m, weight_decay=wd, maximize=mx)
    for c, m, (wd, mx) in itertools.product((False, True), (0.0, 0.5), SIGN_DECAY)
]
ADAGRAD = [
    dict(lr=0.1, lr_decay=d, initial_accumulator_value=a, weight_decay=wd, maximize=mx)
    for d, a, (wd, mx) in itertools.product((0.0, 0.05), (0.0, 0.1), SIGN_DECAY)
]
# (torchopt class, torch.optim class, functional alias, kwargs)
CASES = [('RMSprop', kw) for kw in RMSPROP] + [('Adagrad', kw) for kw in ADAGRAD]
CLASSES = {
    'RMSprop': (torchopt.RMSProp, torch.optim.RMSprop, torchopt.rmsprop),
    'Adagrad': (torchopt.AdaGrad, torch.optim.Adagrad, torchopt.adagrad),
}


def _id(case: tuple) -> str:
    name, kw = case
    return name + '-' + '-'.join(f'{k}={v}' for k, v in kw.items() if k not in ('lr', 'eps'))


def _grads(dtype: torch.dtype, steps: int) -> list[list[torch.Tensor | None]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for t in range(steps):
        row: list[torch.Tensor | None] = [
            torch.randn(s, dtype=dtype, generator=gen) * 10.0 ** (-6 * (i % 2))
            for i, s in enumerate(SHAPES)
        ]
        if t in (2, 3):  # a parameter without a gradient is skipped, as in torch.optim
            row[1] = None
        out.append(row)
    return out


def _start(dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, dtype=dtype, generator=gen) for s in SHAPES]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize('case', CASES, ids=_id)
def test_class_step_equals_torch_optim_bitwise(dtype: torch.dtype, case: tuple) -> None:
    name, kw = case
    ours_cls, torch_cls, _ = CLASSES[name]
    ours = [p.clone().requires_grad_() for p in _start(dtype)]
    ref = [p.clone().requires_grad_() for p in _start(dtype)]
    opt, opt_ref = ours_cls(ours, **kw), torch_cls(ref, **kw)
    for row in _grads(dtype, 8):
        for p, q, g in zip(ours, ref, row):
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()
        grads = [None if p.grad is None else p.grad.clone() for p in ours]
        opt.step()
        opt_ref.step()
        for p, g in zip(ours, grads):  # the gradients are read, never written
            assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    for i, (p, q) in enumerate(zip(ours, ref)):
        assert torch.equal(p, q), f'parameter {i} differs by {(p - q).abs().max().item()}'
        mine = opt.state[p]
        for key, value in opt_ref.state[q].items():
            if key == 'momentum_buffer' and not kw.get('momentum'):
                continue
            if key == 'step' and name == 'RMSprop':  # RMSprop keeps no count (a placeholder)
                continue
            assert torch.equal(mine[key], value), (i, key)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize('case', [c for c in CASES if not c[1].get('momentum')], ids=_id)
def test_functional_inplace_update_equals_torch_optim_bitwise(
    dtype: torch.dtype, case: tuple
) -> None:
    name, kw = case
    _, torch_cls, alias = CLASSES[name]
    ref = [p.clone().requires_grad_() for p in _start(dtype)]
    opt_ref = torch_cls(ref, **kw)
    params = tuple(_start(dtype))
    opt = alias(**kw)
    state = opt.init(params)
    for row in _grads(dtype, 6):
        for q, g in zip(ref, row):
            q.grad = None if g is None else g.clone()
        opt_ref.step()
        grads = tuple(None if g is None else g.clone() for g in row)
        updates, state = opt.update(grads, state, params=params, inplace=True)
        torchopt.apply_updates(params, updates, inplace=True)
    for i, (p, q) in enumerate(zip(params, ref)):
        assert torch.equal(p, q), f'parameter {i} differs by {(p - q).abs().max().item()}'


def _batch_norm_model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4)).to(
        dtype
    )


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize('case', [CASES[0], CASES[3], CASES[9], CASES[12], CASES[17]], ids=_id)
def test_noise_gradients_behind_batch_norm_follow_torch_optim(
    dtype: torch.dtype, case: tuple
) -> None:
    """Constant inputs: the first layer's gradients are rounding noise, which these amplify."""
    name, kw = case
    ours_cls, torch_cls, _ = CLASSES[name]
    model, model_ref = _batch_norm_model(dtype), _batch_norm_model(dtype)
    opt, opt_ref = ours_cls(model.parameters(), **kw), torch_cls(model_ref.parameters(), **kw)
    xs = torch.zeros(64, 16, dtype=dtype)
    ys = torch.arange(64) % 4
    for _ in range(5):
        for m, o in ((model, opt), (model_ref, opt_ref)):
            o.zero_grad()
            nn.functional.cross_entropy(m(xs), ys).backward()
            o.step()
    for (name, p), q in zip(model.named_parameters(), model_ref.parameters()):
        assert torch.equal(p, q), f'{name} differs by {(p - q).abs().max().item()}'


def test_schedule_and_nesterov_keep_the_composed_path() -> None:
    """A schedule or Nesterov momentum (not in torch.optim) runs the transformations: same math."""
    for cls, kwargs in (
        (torchopt.RMSProp, dict(lr=lambda count: 0.1)),
        (torchopt.RMSProp, dict(lr=0.1, momentum=0.5, nesterov=True)),
        (torchopt.AdaGrad, dict(lr=lambda count: 0.1)),
    ):
        p = torch.ones(3, requires_grad=True)
        opt = cls([p], **kwargs)
        g = torch.tensor([1.0, -2.0, 0.5])
        p.grad = g.clone()
        opt.step()  # (the composed path writes its update into p.grad, as TorchOpt 0.7)
        v = (0.01 if cls is torchopt.RMSProp else 1.0) * g**2
        eps = 1e-8 if cls is torchopt.RMSProp else 1e-10
        step = g / (v.sqrt() + eps)
        if kwargs.get('nesterov'):
            step = step + 0.5 * step
        torch.testing.assert_close(p.detach(), torch.ones(3) - 0.1 * step)


def test_shape_mismatch_raises_before_anything_is_written() -> None:
    for name in CLASSES:
        cls, _, alias = CLASSES[name]
        small = alias(lr=0.1)
        state = small.init((torch.ones(2),))
        grads = (torch.ones(5),)
        with pytest.raises(ValueError, match=r'shape \(5,\).*shape \(2,\)'):
            small.update(grads, state, inplace=True)
        assert torch.equal(grads[0], torch.ones(5))
        p, q = torch.ones(2, requires_grad=True), torch.ones(5, requires_grad=True)
        opt, other = cls([p], lr=0.1), cls([q], lr=0.1)
        p.grad, q.grad = torch.ones(2), torch.ones(5)
        opt.step()
        other.state_groups[0] = opt.state_groups[0]  # the state of another parameter shape
        with pytest.raises(ValueError, match=r'shape \(5,\).*shape \(2,\)'):
            other.step()
        assert torch.equal(q.detach(), torch.ones(5))
