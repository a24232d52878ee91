"""TorchOpt 0.7 schedules give upstream's values (issue #18, item 3).

Each test's docstring states the upstream (TorchOpt 0.7.3) behaviour it checks.
"""

from __future__ import annotations

import math

import pytest
import torch

import torchopt
from torchopt import schedule

COUNT_KINDS = {
    'int': lambda c: c,
    'float': float,
    'int64': lambda c: torch.tensor(c, dtype=torch.int64),
    'float32': lambda c: torch.tensor(c, dtype=torch.float32),
    'float64': lambda c: torch.tensor(c, dtype=torch.float64),
}


def _value(v: object) -> float:
    return v.item() if isinstance(v, torch.Tensor) else float(v)  # type: ignore[arg-type]


def _upstream_exponential(
    init: float, rate: float, begin: int, steps: int, staircase: bool, end: float | None, c: int
) -> float:
    """The formula of upstream 0.7.3 and optax, in Python floats."""
    p = (c - begin) / steps
    if staircase:
        p = math.floor(p)
    value = init if c - begin <= 0 else init * rate**p
    if end is not None:
        value = max(value, end) if rate < 1.0 else min(value, end)
    return value


@pytest.mark.parametrize('kind', list(COUNT_KINDS))
def test_end_value_clips_before_transition_begin(kind: str) -> None:
    """Upstream: ``end_value`` clips the value at every count, before ``transition_begin`` too.

    ``exponential_decay(0.1, 0.001, transition_begin=5, transition_steps=100, staircase=True,
    end_value=0.8)`` is 0.8 at count 0 (upstream 0.7.3 and optax), not ``init_value``.
    """
    make = COUNT_KINDS[kind]
    s = schedule.exponential_decay(0.1, 0.001, 5, 100, staircase=True, end_value=0.8)
    for c in (0, 3, 5, 6, 200):
        assert _value(s(make(c))) == pytest.approx(0.8, rel=1e-6)
    # a growing schedule is capped by end_value, before transition_begin as well
    grow = schedule.exponential_decay(1.0, 2.0, transition_begin=3, end_value=0.5)
    assert _value(grow(make(0))) == pytest.approx(0.5) and _value(grow(make(9))) == 0.5


@pytest.mark.parametrize('kind', list(COUNT_KINDS))
@pytest.mark.parametrize(
    'args',
    [
        (0.1, 0.001, 5, 100, True, 0.8),
        (1.0, 0.5, 2, 3, False, 0.3),
        (1.0, 0.5, 2, 3, True, None),
        (0.5, 1.5, 0, 4, False, 2.0),
        (2.0, 0.9, 0, 1, False, None),
    ],
)
def test_exponential_decay_matches_upstream_formula(kind: str, args: tuple) -> None:
    """Upstream: ``init * rate**((count - begin) / steps)`` (floored), ``init`` up to ``begin``.

    Then clipped by ``end_value`` (a floor for ``rate < 1``, a ceiling otherwise); the count may
    be a Python number or a 0-dim tensor.
    """
    s = schedule.exponential_decay(*args[:4], staircase=args[4], end_value=args[5])
    tol = 1e-6 if kind in ('float32', 'int64') else 1e-14
    for c in range(0, 20):
        expected = _upstream_exponential(*args, c)
        assert _value(s(COUNT_KINDS[kind](c))) == pytest.approx(expected, rel=tol)


def test_tensor_counts_are_computed_in_double_precision() -> None:
    """Upstream accepts tensor counts; here they are computed in float64 (DESIGN §5).

    The value comes back in the count's floating dtype, or the default dtype for an integer
    count.
    """
    s = schedule.exponential_decay(1.0, 0.999999, transition_steps=1)
    c = 12345
    exact = 0.999999**c
    v64 = s(torch.tensor(c, dtype=torch.float64))
    assert v64.dtype == torch.float64 and v64.item() == pytest.approx(exact, rel=1e-14)
    assert s(torch.tensor(c)).dtype == torch.get_default_dtype()
    v32 = s(torch.tensor(c, dtype=torch.float32))
    assert v32.dtype == torch.float32 and v32.item() == pytest.approx(exact, rel=1e-7)


@pytest.mark.parametrize(
    'make',
    [
        lambda: schedule.exponential_decay(1.0, 0.5, 2, 3, end_value=0.2),
        lambda: schedule.polynomial_schedule(1.0, 0.1, 2, 10, 2),
        lambda: schedule.linear_schedule(1.0, 0.1, 10),
        lambda: schedule.cosine_decay_schedule(1.0, 10, 0.1),
        lambda: schedule.warmup_cosine_decay_schedule(0.0, 1.0, 3, 10, 0.1),
        lambda: schedule.piecewise_constant_schedule(1.0, {3: 0.5, 6: 0.1}),
    ],
)
def test_every_schedule_takes_numbers_and_tensor_counts(make) -> None:
    """Upstream: a schedule is a callable ``count -> value`` for a number or a tensor count."""
    s = make()
    for c in range(0, 14):
        expected = _value(s(c))
        for kind in ('float', 'int64', 'float32', 'float64'):
            assert _value(s(COUNT_KINDS[kind](c))) == pytest.approx(expected, rel=1e-6)


def test_schedule_as_learning_rate_starts_at_end_value() -> None:
    """Upstream: a schedule passed as ``lr`` is evaluated at count 0 on the first update."""
    lr = schedule.exponential_decay(0.1, 0.001, 5, 100, staircase=True, end_value=0.8)
    param = torch.zeros(2, dtype=torch.float64)
    optim = torchopt.sgd(lr)
    state = optim.init(param)
    updates, _ = optim.update(torch.ones(2, dtype=torch.float64), state, inplace=False)
    torch.testing.assert_close(updates, torch.full((2,), -0.8, dtype=torch.float64))


def test_exponential_decay_under_vmap() -> None:
    """A batch of tensor counts gives the values of each count (no Python branch on tensors)."""
    s = schedule.exponential_decay(0.1, 0.001, 5, 100, staircase=True, end_value=0.8)
    decay = schedule.exponential_decay(1.0, 0.5, 2, 3, end_value=0.2)
    counts = torch.arange(12)
    for fn in (s, decay):
        batched = torch.func.vmap(fn)(counts)
        torch.testing.assert_close(batched, torch.stack([fn(c) for c in counts]))
