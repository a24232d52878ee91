"""optax's schedules (issue #20): closed forms, Python and tensor counts, float64."""

from __future__ import annotations

import math

import pytest
import torch

import torchopt
from torchopt import schedule as S

COUNTS = [0, 1, 2, 3, 5, 7, 10, 11, 15, 20, 29, 30, 31, 45, 100]


def _check(fn, expected, counts=COUNTS, rel=1e-15):
    """``fn`` equals ``expected`` for Python counts, 0-dim and batched tensor counts."""
    for c in counts:
        want = expected(c)
        assert fn(c) == pytest.approx(want, rel=rel, abs=1e-300), c
        got = fn(torch.tensor(c, dtype=torch.float64))
        value = got.item() if isinstance(got, torch.Tensor) else got
        assert value == pytest.approx(want, rel=rel, abs=1e-300), c
    batch = fn(torch.tensor(counts, dtype=torch.float64))
    if isinstance(batch, torch.Tensor):
        assert batch.dtype == torch.float64
        torch.testing.assert_close(
            batch,
            torch.tensor([expected(c) for c in counts], dtype=torch.float64),
            rtol=rel,
            atol=0,
        )


def test_constant_schedule():
    _check(S.constant_schedule(0.3), lambda c: 0.3)


def test_warmup_constant_schedule():
    _check(S.warmup_constant_schedule(0.0, 1.0, 10), lambda c: min(c, 10) / 10)


def test_join_schedules():
    fn = S.join_schedules([S.constant_schedule(1.0), S.linear_schedule(1.0, 0.0, 10),
                           S.constant_schedule(0.5)], [5, 15])  # fmt: skip

    def expected(c):
        if c < 5:
            return 1.0
        if c < 15:
            return 1.0 - (c - 5) / 10
        return 0.5

    _check(fn, expected)
    with pytest.raises(ValueError):
        S.join_schedules([S.constant_schedule(1.0)], [3])


def test_warmup_exponential_decay_schedule():
    fn = S.warmup_exponential_decay_schedule(0.0, 1.0, warmup_steps=10, transition_steps=5,
                                             decay_rate=0.5, transition_begin=3,
                                             end_value=0.1)  # fmt: skip

    def expected(c):
        if c < 10:
            return c / 10
        k = c - 10 - 3
        return 1.0 if k <= 0 else max(0.5 ** (k / 5), 0.1)

    _check(fn, expected)
    stair = S.warmup_exponential_decay_schedule(0.5, 1.0, 4, 5, 0.5, staircase=True)
    _check(
        stair, lambda c: 0.5 + 0.5 * c / 4 if c < 4 else 0.5 ** math.floor((c - 4) / 5), rel=1e-14
    )


def _interp_linear(a, b, pct):
    return (b - a) * pct + a


def _interp_cos(a, b, pct):
    return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)


def test_linear_onecycle_schedule():
    fn = S.linear_onecycle_schedule(30, 1.0, pct_start=0.3, pct_final=0.85, div_factor=25.0,
                                    final_div_factor=1e4)  # fmt: skip
    init, final = 1.0 / 25.0, 1.0 / 25.0 / 1e4

    def expected(c):
        if c < 9:
            return _interp_linear(init, 1.0, c / 9)
        if c < 25:
            return _interp_linear(1.0, init, (c - 9) / 16)
        if c < 30:
            return _interp_linear(init, final, (c - 25) / 5)
        return final

    _check(fn, expected, rel=1e-13)
    assert fn(9) == pytest.approx(1.0)


def test_cosine_onecycle_schedule():
    fn = S.cosine_onecycle_schedule(30, 2.0, pct_start=0.2, div_factor=10.0, final_div_factor=100.0)
    init, final = 0.2, 0.2 / 100.0

    def expected(c):
        if c < 6:
            return _interp_cos(init, 2.0, c / 6)
        if c < 30:
            return _interp_cos(2.0, final, (c - 6) / 24)
        return final

    _check(fn, expected, rel=1e-13)


def test_piecewise_interpolate_schedule():
    fn = S.piecewise_interpolate_schedule('linear', 1.0, {4: 0.1, 8: 0.01})
    _check(
        fn,
        lambda c: [1.0, 0.775, 0.55, 0.325, 0.1, 0.07525, 0.0505, 0.02575][c] if c < 8 else 0.001,
        counts=list(range(12)),
        rel=1e-13,
    )
    assert fn(-1) == 0.0
    with pytest.raises(ValueError):
        S.piecewise_interpolate_schedule('quadratic', 1.0)


def test_sgdr_schedule():
    cycles = [
        dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10),
        dict(init_value=0.0, peak_value=0.5, warmup_steps=2, decay_steps=20, end_value=0.1),
    ]
    fn = S.sgdr_schedule(cycles)

    def cycle(c, peak, warm, steps, end=0.0):
        if c < warm:
            return peak * c / warm
        k = min(c - warm, steps - warm)
        alpha = end / peak
        return peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * k / (steps - warm))) + alpha)

    def expected(c):
        if c < 10:
            return cycle(c, 1.0, 2, 10)
        return cycle(c - 10, 0.5, 2, 20, 0.1)

    _check(fn, expected, counts=[0, 1, 2, 5, 9, 10, 11, 12, 20, 29, 30, 40], rel=1e-13)


def test_schedules_compute_in_double_precision():
    """A float32 count gives a float32 value of the double-precision result (issue #235)."""
    fn = S.join_schedules([S.exponential_decay(1.0, 0.999), S.constant_schedule(0.5)], [10**6])
    got = fn(torch.tensor(12345.0, dtype=torch.float32))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(0.999**12345, rel=1e-7)


def test_schedules_drive_an_optimizer():
    lr = S.warmup_exponential_decay_schedule(0.0, 0.1, 2, 3, 0.5)
    opt = torchopt.sgd(lr)
    params = [torch.zeros(1, dtype=torch.float64)]
    state = opt.init(params)
    seen = []
    for _ in range(6):
        u, state = opt.update([torch.ones(1, dtype=torch.float64)], state, inplace=False)
        seen.append(-u[0].item())
    assert seen == pytest.approx([lr(c) for c in range(6)], rel=1e-15)
