"""Schedules (closed forms), clipping (torch.nn.utils reference), masks, Lion and LAMB."""

from __future__ import annotations

import math

import pytest
import torch

import torchopt
from torchopt import schedule


def test_polynomial_and_linear():
    s = schedule.polynomial_schedule(1.0, 0.1, power=2, transition_steps=10, transition_begin=5)
    for c in [0, 5, 7, 15, 100]:
        frac = 1 - min(max(c - 5, 0), 10) / 10
        assert s(c) == pytest.approx(0.9 * frac**2 + 0.1, rel=1e-15)
    assert float(s(torch.tensor(7))) == pytest.approx(s(7))
    lin = schedule.linear_schedule(1.0, 0.0, 4)
    assert [lin(c) for c in range(6)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    assert schedule.polynomial_schedule(0.3, 0.0, 1, 0)(10) == 0.3


def test_exponential_decay():
    s = schedule.exponential_decay(2.0, 0.5, transition_begin=2, transition_steps=3)
    assert s(0) == 2.0 and s(2) == 2.0
    assert s(5) == pytest.approx(1.0) and s(8) == pytest.approx(0.5)
    st = schedule.exponential_decay(2.0, 0.5, transition_steps=3, staircase=True)
    assert st(2) == 2.0 and st(4) == pytest.approx(1.0)
    floor = schedule.exponential_decay(1.0, 0.1, end_value=0.05)
    assert floor(100) == 0.05
    ceil = schedule.exponential_decay(1.0, 2.0, end_value=3.0)
    assert ceil(100) == 3.0
    assert float(s(torch.tensor(8))) == pytest.approx(0.5)


def test_cosine_and_warmup():
    s = schedule.cosine_decay_schedule(1.0, 10, alpha=0.1)
    assert (
        s(0) == pytest.approx(1.0) and s(10) == pytest.approx(0.1) and s(20) == pytest.approx(0.1)
    )
    assert s(5) == pytest.approx(0.9 * 0.5 + 0.1)
    w = schedule.warmup_cosine_decay_schedule(
        0.0, 1.0, warmup_steps=4, decay_steps=14, end_value=0.0
    )
    assert [w(c) for c in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert w(9) == pytest.approx(0.5) and w(14) == pytest.approx(0.0, abs=1e-15)


def test_piecewise_constant():
    s = schedule.piecewise_constant_schedule(1.0, {3: 0.5, 6: 0.1})
    assert [s(c) for c in (0, 2, 3, 5, 6, 9)] == pytest.approx([1, 1, 0.5, 0.5, 0.05, 0.05])
    with pytest.raises(ValueError, match='scales'):
        schedule.piecewise_constant_schedule(1.0, {3: -1.0})


def test_schedule_as_learning_rate_matches_manual_lr():
    lr = schedule.linear_schedule(0.1, 0.01, 5)
    p = (torch.ones(3, dtype=torch.float64),)
    opt = torchopt.sgd(lr=lr)
    state = opt.init(p)
    expected = torch.ones(3, dtype=torch.float64)
    for c in range(7):
        updates, state = opt.update((torch.ones(3, dtype=torch.float64),), state)
        p = torchopt.apply_updates(p, updates)
        expected -= lr(c)
    torch.testing.assert_close(p[0], expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize('norm_type', [2.0, 1.0, float('inf')])
def test_clip_grad_norm_matches_torch(norm_type):
    g = [torch.randn(5, dtype=torch.float64) * 3, torch.randn(2, 2, dtype=torch.float64)]
    ref = [x.clone().requires_grad_() for x in g]
    for r, x in zip(ref, g):
        r.grad = x.clone()
    torch.nn.utils.clip_grad_norm_(ref, 0.5, norm_type)
    t = torchopt.clip_grad_norm(0.5, norm_type)
    out, _ = t.update(g, t.init(g), inplace=False)
    for a, r in zip(out, ref):
        torch.testing.assert_close(a, r.grad, rtol=1e-12, atol=1e-15)


def test_clip_grad_norm_nonfinite():
    t = torchopt.clip_grad_norm(1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match='non-finite'):
        t.update((torch.tensor([float('inf')]),), t.init((torch.zeros(1),)))


def test_masked_applies_inner_only_where_true_and_keeps_others():
    inner = torchopt.transform.scale(10.0)
    params = {'w': torch.ones(2), 'b': torch.ones(1)}
    for mask in ({'w': True, 'b': False}, lambda p: {'w': True, 'b': False}):
        t = torchopt.transform.masked(inner, mask)
        g = {'w': torch.ones(2), 'b': torch.ones(1)}
        b_obj = g['b']
        out, _ = t.update(g, t.init(params), inplace=False)
        torch.testing.assert_close(out['w'], torch.full((2,), 10.0))
        assert out['b'] is b_obj


def test_adamw_mask_excludes_leaves_from_decay():
    params = {'w': torch.ones(2), 'b': torch.ones(1)}
    opt = torchopt.adamw(lr=0.0 + 1.0, weight_decay=0.5, mask={'w': True, 'b': False})
    state = opt.init(params)
    zeros = {'w': torch.zeros(2), 'b': torch.zeros(1)}
    updates, _ = opt.update(zeros, state, params=params, inplace=False)
    torch.testing.assert_close(updates['w'], torch.full((2,), -0.5))
    torch.testing.assert_close(updates['b'], torch.zeros(1))


def _lion_reference(p, grads, lr, b1, b2, wd):
    m = torch.zeros_like(p)
    for g in grads:
        c = b1 * m + (1 - b1) * g
        p = p - lr * (torch.sign(c) + wd * p)
        m = b2 * m + (1 - b2) * g
    return p


def _lamb_reference(p, grads, lr, b1, b2, eps, wd):
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) + wd * p
        pn, rn = p.norm(), r.norm()
        ratio = pn / rn if pn > 0 and rn > 0 else 1.0
        p = p - lr * ratio * r
    return p


@pytest.mark.parametrize('inplace', [True, False])
def test_lion_and_lamb_match_hand_written(inplace):
    g = torch.Generator().manual_seed(2)
    p0 = torch.randn(6, generator=g, dtype=torch.float64)
    grads = [torch.randn(6, generator=g, dtype=torch.float64) for _ in range(5)]
    for opt, ref in [
        (
            torchopt.lion(1e-2, betas=(0.9, 0.99), weight_decay=0.1),
            _lion_reference(p0, grads, 1e-2, 0.9, 0.99, 0.1),
        ),
        (
            torchopt.lamb(1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1),
            _lamb_reference(p0, grads, 1e-2, 0.9, 0.999, 1e-6, 0.1),
        ),
    ]:
        params = (p0.clone(),)
        state = opt.init(params)
        for gr in grads:
            updates, state = opt.update((gr.clone(),), state, params=params, inplace=inplace)
            params = torchopt.apply_updates(params, updates, inplace=inplace)
        torch.testing.assert_close(params[0], ref, rtol=1e-12, atol=1e-14)


def test_update_moment_and_inc_count():
    from torchopt.transform.utils import inc_count, update_moment

    g = {'a': torch.tensor([2.0])}
    m = {'a': torch.tensor([1.0])}
    out = update_moment(g, m, 0.5, order=2, inplace=False)
    assert out['a'].item() == pytest.approx(0.5 * 1 + 0.5 * 4)
    assert update_moment(g, m, 1, order=1, inplace=False)['a'].item() == 3.0
    assert inc_count(g, 3) == 4 and inc_count({'a': None}, 3) == 3
    assert math.isclose(torchopt.alias._optimizers._adagrad_lr_schedule(0.5)(2), 0.5)
