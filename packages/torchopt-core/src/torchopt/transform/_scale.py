"""Scaling transformations: by a constant and by a schedule."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt.transform._flat import FlatTransformation, stateful, stateless
from torchopt.transform.utils import advance, count_scalars, counts_like, scale_
from torchopt.typing import Numeric, Schedule

__all__ = ['scale', 'scale_by_schedule', 'ScaleByScheduleState']


def scale(step_size: Numeric) -> FlatTransformation:
    """Scale updates by a fixed ``step_size``: ``u = step_size * g``.

    Args:
        step_size: a number, or a scalar tensor (differentiable when it requires grad).
    """

    def step(g: list, params: Any, inplace: bool) -> list:
        return scale_(g, step_size, inplace=inplace)

    return stateless(f'scale({step_size!r})', step, accepts_sparse=True)


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_schedule`: the number of updates each leaf has seen."""

    count: list  # type: ignore[assignment]  # shadows tuple.count


def scale_by_schedule(step_size_fn: Schedule) -> FlatTransformation:
    """Scale updates by ``step_size_fn(count)``; the first update of a leaf sees ``count == 0``.

    The count is per leaf, as upstream: a leaf whose update is ``None`` is not counted. The
    schedule receives the count as a float64 0-dim tensor (upstream passes int64, which makes
    ``0.99 ** count`` a float32 value: the precision defect of upstream issue #235); it is
    evaluated once per distinct count (once per step when every leaf has the same count), or per
    leaf inside ``torch.func`` transforms.

    Args:
        step_size_fn: a callable mapping the step count to a scale.
    """
    if not callable(step_size_fn):
        raise TypeError(f'`step_size_fn` must be callable, got {type(step_size_fn).__name__}')

    def init_fn(params: list, treespec: Any) -> ScaleByScheduleState:
        return ScaleByScheduleState(count=counts_like(params))

    def step(
        g: list, s: ScaleByScheduleState, params: Any, inplace: bool
    ) -> tuple[list, ScaleByScheduleState]:
        values = count_scalars(s.count)
        counts = advance(s.count, inplace)
        if not isinstance(values, list):  # one count for every leaf: one evaluation
            factor = step_size_fn(torch.tensor(values, dtype=torch.float64))
            return scale_(g, factor, inplace=inplace), ScaleByScheduleState(count=counts)
        if values and isinstance(values[0], torch.Tensor):  # under a transform: per leaf
            u = [scale_([x], step_size_fn(c), inplace=inplace)[0]
                 for x, c in zip(g, values)]  # fmt: skip
            return u, ScaleByScheduleState(count=counts)
        groups: dict[float, list[int]] = {}
        for i, v in enumerate(values):
            groups.setdefault(v, []).append(i)
        u = list(g)
        for v, members in groups.items():
            factor = step_size_fn(torch.tensor(v, dtype=torch.float64))
            new = scale_([g[i] for i in members], factor, inplace=inplace)
            for i, x in zip(members, new):
                u[i] = x
        return u, ScaleByScheduleState(count=counts)

    return stateful(
        f'scale_by_schedule({step_size_fn!r})',
        init_fn,
        step,
        scalars=('count',),
        accepts_sparse=True,
    )
