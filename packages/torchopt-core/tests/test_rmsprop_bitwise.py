"""RMSprop gives ``torch.optim.RMSprop``'s numbers bit for bit (torchopt._rmsprop_step).

One bit matters for RMSprop: it divides by the root of a gradient's own running square, so a
gradient that is numerically noise gets a full-size step whose sign is that noise. Behind a
batch-norm layer fed constant inputs (upstream TorchOpt's own optimizer tests do this) one bit of
difference at the first step grew to 1.5 after five steps.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import torchopt

# Shapes below and above the size from which the step runs per tensor (1 << 16 elements).
SHAPES = [(7,), (33, 5), (), (70_000,)]
VARIANTS = [
    dict(centered=c, momentum=m, weight_decay=wd, maximize=mx)
    for c, m, (wd, mx) in itertools.product(
        (False, True), (0.0, 0.5), ((0.0, False), (1e-2, True), (1e-2, False))
    )
]


def _ids(v: dict) -> str:
    return '-'.join(f'{k}={v[k]}' for k in v)


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
@pytest.mark.parametrize('variant', VARIANTS, ids=_ids)
def test_class_step_equals_torch_optim_bitwise(dtype: torch.dtype, variant: dict) -> None:
    ours = [p.clone().requires_grad_() for p in _start(dtype)]
    ref = [p.clone().requires_grad_() for p in _start(dtype)]
    opt = torchopt.RMSProp(ours, lr=0.1, alpha=0.9, eps=1e-8, **variant)
    opt_ref = torch.optim.RMSprop(ref, lr=0.1, alpha=0.9, eps=1e-8, **variant)
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
        for name in ('square_avg', 'grad_avg', 'momentum_buffer'):
            if name in opt_ref.state[q] and (name != 'momentum_buffer' or variant['momentum']):
                ours_buf = opt.state[p][name]
                assert torch.equal(ours_buf, opt_ref.state[q][name]), (i, name)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize('variant', [v for v in VARIANTS if v['momentum'] == 0.0], ids=_ids)
def test_functional_inplace_update_equals_torch_optim_bitwise(
    dtype: torch.dtype, variant: dict
) -> None:
    ref = [p.clone().requires_grad_() for p in _start(dtype)]
    opt_ref = torch.optim.RMSprop(ref, lr=0.1, alpha=0.9, eps=1e-8, **variant)
    params = tuple(_start(dtype))
    kwargs = {k: v for k, v in variant.items() if k != 'momentum'}
    opt = torchopt.rmsprop(lr=0.1, alpha=0.9, eps=1e-8, **kwargs)
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
@pytest.mark.parametrize('variant', [VARIANTS[0], VARIANTS[3], VARIANTS[9]], ids=_ids)
def test_noise_gradients_behind_batch_norm_follow_torch_optim(
    dtype: torch.dtype, variant: dict
) -> None:
    """Constant inputs: the first layer's gradients are rounding noise; RMSprop amplifies it."""
    model, model_ref = _batch_norm_model(dtype), _batch_norm_model(dtype)
    opt = torchopt.RMSProp(model.parameters(), lr=0.1, alpha=0.9, **variant)
    opt_ref = torch.optim.RMSprop(model_ref.parameters(), lr=0.1, alpha=0.9, **variant)
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
    params = [torch.ones(3, requires_grad=True)]
    for kwargs in (dict(lr=lambda count: 0.1), dict(lr=0.1, momentum=0.5, nesterov=True)):
        p = params[0].detach().clone().requires_grad_()
        opt = torchopt.RMSProp([p], **kwargs)
        g = torch.tensor([1.0, -2.0, 0.5])
        p.grad = g.clone()
        opt.step()  # (the composed path writes its update into p.grad, as TorchOpt 0.7)
        v = 0.01 * g**2
        step = g / (v.sqrt() + 1e-8)
        if kwargs.get('nesterov'):
            step = step + 0.5 * step
        torch.testing.assert_close(p.detach(), torch.ones(3) - 0.1 * step)
