"""Learning-rate schedules: callables ``count -> value`` (upstream ``torchopt.schedule``).

``count`` may be a Python number or a tensor (integer or floating). Values are computed in
double precision: Python floats for numbers; for a tensor count, float64 tensors cast at the
end to the count's floating dtype (the default dtype for an integer count).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from torchopt import _upstream_modules
from torchopt.typing import Numeric, Schedule

__all__ = [
    'exponential_decay',
    'linear_schedule',
    'polynomial_schedule',
    'cosine_decay_schedule',
    'warmup_cosine_decay_schedule',
    'piecewise_constant_schedule',
    # optax's, beyond TorchOpt 0.7
    'constant_schedule',
    'join_schedules',
    'piecewise_interpolate_schedule',
    'warmup_constant_schedule',
    'warmup_exponential_decay_schedule',
    'linear_onecycle_schedule',
    'cosine_onecycle_schedule',
    'sgdr_schedule',
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
        n = count - transition_begin
        v: float
        if n <= 0:
            v = init_value
        else:
            e = n / transition_steps
            v = init_value * decay_rate ** (math.floor(e) if staircase else e)
        if end_value is not None:
            v = max(v, end_value) if lower else min(v, end_value)
        return v

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
            c = torch.clamp(count.to(torch.float64), 0, decay_steps)
            cosine = 0.5 * (1 + torch.cos(math.pi * c / decay_steps))
            return (init_value * ((1 - alpha) * cosine**exponent + alpha)).to(_result_dtype(count))
        n = min(max(count, 0), decay_steps)
        cos = 0.5 * (1 + math.cos(math.pi * n / decay_steps))
        return init_value * ((1 - alpha) * cos**exponent + alpha)

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
    return join_schedules([warmup, decay], [warmup_steps])


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


# --- optax's schedules beyond TorchOpt 0.7 --------------------------------------------------------


def _as_float64(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(torch.float64)
    return torch.tensor(float(value), dtype=torch.float64)


def constant_schedule(value: float) -> Schedule:
    """The constant schedule: ``value`` at every count.

    Reference: optax ``constant_schedule``.
    """
    return lambda count: value


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    r"""Run ``schedules[i]`` from ``boundaries[i-1]`` on, restarted at count 0 there.

    :math:`v(c) = s_i(c - b_{i-1})` for :math:`b_{i-1} \le c < b_i` (:math:`b_{-1} = 0`). A
    tensor count is handled with ``torch.where`` (no host read, so it also works under
    ``torch.func`` transforms); the pieces are evaluated in float64.

    Args:
        schedules: ``len(boundaries) + 1`` schedules.
        boundaries: increasing step counts at which the next schedule starts.

    Reference: optax ``join_schedules``.
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if len(schedules) != len(boundaries) + 1:
        raise ValueError('join_schedules: give one schedule more than boundaries')

    def schedule(count: Numeric) -> Numeric:
        if isinstance(count, torch.Tensor):
            c = count.to(torch.float64)
            out = _as_float64(schedules[0](c))
            for b, fn in zip(boundaries, schedules[1:]):
                out = torch.where(c < b, out, _as_float64(fn(c - b)))
            return out.to(_result_dtype(count))
        value = schedules[0](count)
        for b, fn in zip(boundaries, schedules[1:]):
            if count >= b:
                value = fn(count - b)
        return value

    return schedule


def _interpolate(kind: str, start: Any, end: Any, pct: Any) -> Any:
    if kind == 'linear':
        return (end - start) * pct + start
    cos = torch.cos(math.pi * pct) if isinstance(pct, torch.Tensor) else math.cos(math.pi * pct)
    return end + (start - end) / 2.0 * (cos + 1.0)


def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: float,
    boundaries_and_scales: dict[int, float] | None = None,
) -> Schedule:
    """Interpolate (linearly or by a half cosine) between values scaled at the boundaries.

    The value at boundary :math:`b_k` is ``init_value`` times the product of the scales up to
    :math:`b_k`; between two boundaries the schedule interpolates between those values, and
    after the last it stays at the last value (before count 0 it is 0, as in optax).

    Args:
        interpolate_type: ``'linear'`` or ``'cosine'``.
        init_value: the value at count 0.
        boundaries_and_scales: ``{step: scale}``, scales non-negative.

    Reference: optax ``piecewise_interpolate_schedule``.
    """
    if interpolate_type not in ('linear', 'cosine'):
        raise ValueError("`interpolate_type` must be either 'cosine' or 'linear'")
    items = sorted((boundaries_and_scales or {}).items())
    if any(scale < 0 for _, scale in items):
        raise ValueError('`piecewise_interpolate_schedule` expects non-negative scale factors')
    bounds = [0] + [b for b, _ in items]
    values = [float(init_value)]
    for _, scale in items:
        values.append(values[-1] * scale)

    def schedule(count: Numeric) -> Numeric:
        if isinstance(count, torch.Tensor):
            c = count.to(torch.float64)
            out = torch.where(c >= bounds[-1], torch.full_like(c, values[-1]), torch.zeros_like(c))
            for i in range(len(bounds) - 1):
                size = max(bounds[i + 1] - bounds[i], 1)
                inside = (c >= bounds[i]) & (c < bounds[i + 1])
                value = _interpolate(interpolate_type, values[i], values[i + 1],
                                     (c - bounds[i]) / size)  # fmt: skip
                out = torch.where(inside, value, out)
            return out.to(_result_dtype(count))
        for i in range(len(bounds) - 1):
            if bounds[i] <= count < bounds[i + 1]:
                pct = (count - bounds[i]) / max(bounds[i + 1] - bounds[i], 1)
                return _interpolate(interpolate_type, values[i], values[i + 1], pct)
        return values[-1] if count >= bounds[-1] else 0.0

    return schedule


def warmup_constant_schedule(init_value: float, peak_value: float, warmup_steps: int) -> Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then constant.

    Reference: optax ``warmup_constant_schedule``.
    """
    return linear_schedule(init_value, peak_value, warmup_steps)


def warmup_exponential_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """Linear warm-up to ``peak_value``, then :func:`exponential_decay` from it.

    The decay counts from the end of the warm-up (``transition_begin`` steps after it the
    value starts to decay).

    Reference: optax ``warmup_exponential_decay_schedule``.
    """
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            exponential_decay(
                peak_value,
                decay_rate,
                transition_begin=transition_begin,
                transition_steps=transition_steps,
                staircase=staircase,
                end_value=end_value,
            ),  # fmt: skip
        ],
        [warmup_steps],
    )


def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """The one-cycle schedule with three linear phases.

    From ``peak_value / div_factor`` up to ``peak_value`` at ``pct_start * transition_steps``,
    back down to ``peak_value / div_factor`` at ``pct_final * transition_steps``, then to
    ``peak_value / div_factor / final_div_factor`` at ``transition_steps``.

    Reference: Smith & Topin, *Super-Convergence: Very Fast Training of Neural Networks Using
    Large Learning Rates*, 2017; optax ``linear_onecycle_schedule``.
    """
    if transition_steps <= 0:
        raise ValueError('linear_onecycle_schedule: `transition_steps` must be positive')
    return piecewise_interpolate_schedule('linear', peak_value / div_factor, {
        int(pct_start * transition_steps): div_factor,
        int(pct_final * transition_steps): 1.0 / div_factor,
        transition_steps: 1.0 / final_div_factor,
    })  # fmt: skip


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """The one-cycle schedule with half-cosine phases.

    From ``peak_value / div_factor`` up to ``peak_value`` at ``pct_start * transition_steps``,
    then down to ``peak_value / (div_factor * final_div_factor)`` at ``transition_steps``.

    Reference: Smith & Topin, 2017; optax ``cosine_onecycle_schedule``.
    """
    if transition_steps <= 0:
        raise ValueError('cosine_onecycle_schedule: `transition_steps` must be positive')
    return piecewise_interpolate_schedule('cosine', peak_value / div_factor, {
        int(pct_start * transition_steps): div_factor,
        int(transition_steps): 1.0 / (div_factor * final_div_factor),
    })  # fmt: skip


def sgdr_schedule(cosine_kwargs: Iterable[dict[str, Any]]) -> Schedule:
    """Stochastic gradient descent with warm restarts: joined warm-up cosine cycles.

    Each dict holds the arguments of one :func:`warmup_cosine_decay_schedule` cycle; its
    ``decay_steps`` is the cycle's length.

    Reference: Loshchilov & Hutter, *SGDR: Stochastic Gradient Descent with Warm Restarts*,
    ICLR 2017; optax ``sgdr_schedule``.
    """
    schedules, boundaries, step = [], [], 0
    for kwargs in cosine_kwargs:
        schedules.append(warmup_cosine_decay_schedule(**kwargs))
        step += kwargs['decay_steps']
        boundaries.append(step)
    if not schedules:
        raise ValueError('sgdr_schedule needs at least one cycle')
    return join_schedules(schedules, boundaries[:-1])


_upstream_modules.register(__name__)  # TorchOpt 0.7's per-object module paths
