"""Learning-rate schedules: callables ``count -> value`` (upstream ``torchopt.schedule``).

``count`` may be a Python number or a tensor (integer or floating). Values are computed in
double precision: Python floats for numbers; for a tensor count, float64 tensors cast at the
end to the count's floating dtype (the default dtype for an integer count).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch

from torchopt.typing import Numeric, Schedule

__all__ = [
    'exponential_decay',
    'linear_schedule',
    'polynomial_schedule',
    'cosine_decay_schedule',
    'warmup_cosine_decay_schedule',
    'piecewise_constant_schedule',
]

logger = logging.getLogger(__name__)


def _result_dtype(count: torch.Tensor) -> torch.dtype:
    """The dtype of a schedule's value for a tensor ``count``."""
    return count.dtype if count.is_floating_point() else torch.get_default_dtype()


def _clip(x: Numeric, lo: float, hi: float) -> Numeric:
    if isinstance(x, torch.Tensor):
        return torch.clamp(x, lo, hi)
    return min(max(x, lo), hi)


def polynomial_schedule(
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""Polynomial decay from ``init_value`` to ``end_value`` over ``transition_steps`` steps.

    :math:`v(c) = (v_0 - v_1)\,(1 - \mathrm{clip}(c - c_0, 0, T)/T)^p + v_1`. A non-positive
    ``transition_steps`` gives the constant ``init_value``.
    """
    if transition_steps <= 0:
        logger.info(
            'A polynomial schedule was set with a non-positive `transition_steps` value; this '
            'results in a constant schedule with value `init_value`.'
        )
        return lambda count: init_value
    if transition_begin < 0:
        logger.info(
            'An exponential schedule was set with a negative `transition_begin` value; this will '
            'result in `transition_begin` falling back to `0`.'
        )
        transition_begin = 0

    def schedule(count: Numeric) -> Numeric:
        c = count.to(torch.float64) if isinstance(count, torch.Tensor) else count
        frac = 1 - _clip(c - transition_begin, 0, transition_steps) / transition_steps
        value = (init_value - end_value) * (frac**power) + end_value
        return value.to(_result_dtype(count)) if isinstance(count, torch.Tensor) else value

    return schedule


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """Linear interpolation from ``init_value`` to ``end_value`` (polynomial with power 1)."""
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


def exponential_decay(
    init_value: float,
    decay_rate: float,
    transition_begin: int = 0,
    transition_steps: int = 1,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    r"""Exponential decay :math:`v(c) = v_0 \, r^{(c - c_0)/T}`, exponent floored if ``staircase``.

    The decayed value is ``init_value`` while ``count <= transition_begin``. With ``end_value``
    every value, those before ``transition_begin`` included, is clipped by it: a floor when
    ``decay_rate < 1``, a ceiling otherwise (as TorchOpt 0.7 and optax do). A non-positive
    ``transition_steps`` or a zero ``decay_rate`` gives the constant ``init_value``.

    ``count`` may be a Python number (the value is a Python float) or a tensor (the value is
    computed in float64 and returned in the count's floating dtype, or the default dtype for an
    integer count).
    """
    if transition_steps <= 0 or decay_rate == 0.0:
        logger.info(
            'exponential_decay: constant schedule (transition_steps <= 0 or decay_rate == 0)'
        )
        return lambda count: init_value
    if transition_begin < 0:
        logger.info(
            'An exponential schedule was set with a negative `transition_begin` value; this will '
            'result in `transition_begin` falling back to `0`.'
        )
        transition_begin = 0
    lower = end_value is not None and decay_rate < 1.0

    def schedule(count: Numeric) -> Numeric:
        if isinstance(count, torch.Tensor):
            steps = count.to(torch.float64) - transition_begin
            exponent = steps / transition_steps
            if staircase:
                exponent = torch.floor(exponent)
            value = torch.where(steps <= 0, init_value, init_value * decay_rate**exponent)
            if end_value is not None:
                value = value.clamp(min=end_value) if lower else value.clamp(max=end_value)
            return value.to(_result_dtype(count))
        steps = count - transition_begin
        if steps <= 0:
            value = init_value
        else:
            exponent = steps / transition_steps
            if staircase:
                exponent = math.floor(exponent)
            value = init_value * decay_rate**exponent
        if end_value is not None:
            value = max(value, end_value) if lower else min(value, end_value)
        return value

    return schedule


def cosine_decay_schedule(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    r"""Cosine decay: :math:`v(c) = v_0((1-\alpha)\,(\tfrac12(1+\cos(\pi \min(c,T)/T)))^e + \alpha)`.

    Reference: Loshchilov & Hutter, *SGDR*, ICLR 2017.
    """
    if decay_steps <= 0:
        raise ValueError(f'`decay_steps` must be positive, got {decay_steps!r}')

    def schedule(count: Numeric) -> Numeric:
        if isinstance(count, torch.Tensor):
            c = _clip(count.to(torch.float64), 0, decay_steps)
            cosine = 0.5 * (1 + torch.cos(math.pi * c / decay_steps))
            return (init_value * ((1 - alpha) * cosine**exponent + alpha)).to(_result_dtype(count))
        c = _clip(count, 0, decay_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * c / decay_steps))
        return init_value * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    ``decay_steps`` counts the whole schedule, warm-up included.
    """
    if decay_steps <= warmup_steps:
        raise ValueError('`decay_steps` must be larger than `warmup_steps`')
    alpha = 0.0 if peak_value == 0 else end_value / peak_value
    warmup = linear_schedule(init_value, peak_value, warmup_steps)
    decay = cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha, exponent)
    return piecewise_join([warmup, decay], [warmup_steps])


def piecewise_join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i]`` (restarted at 0) from ``boundaries[i-1]`` to ``boundaries[i]``."""

    def schedule(count: Numeric) -> Numeric:
        c = int(count)
        start = 0
        for fn, end in zip(schedules, boundaries):
            if c < end:
                return fn(c - start)
            start = end
        return schedules[-1](c - start)

    return schedule


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: dict[int, float] | None = None
) -> Schedule:
    """Start at ``init_value``; at each boundary step ``b`` multiply the value by ``scales[b]``."""
    items = sorted((boundaries_and_scales or {}).items())
    for b, s in items:
        if b < 0:
            raise ValueError(f'boundaries must be non-negative, got {b!r}')
        if s < 0:
            raise ValueError(f'scales must be non-negative, got {s!r}')

    def schedule(count: Numeric) -> Any:
        c = int(count)
        value = init_value
        for b, s in items:
            if c >= b:
                value *= s
        return value

    return schedule
