"""Scaling transformations: by a constant and by a schedule."""

from __future__ import annotations

from typing import Any, NamedTuple

from torchopt.base import EmptyState
from torchopt.transform._flat import FlatTransformation, present_indices, put, take
from torchopt.transform.utils import scale_
from torchopt.typing import Numeric, Schedule

__all__ = ['scale', 'scale_by_schedule', 'ScaleByScheduleState']


def scale(step_size: Numeric) -> FlatTransformation:
    """Scale updates by a fixed ``step_size``: ``u = step_size * g``.

    Args:
        step_size: a number, or a scalar tensor (differentiable when it requires grad).
    """

    def init_fn(params: list, treespec: Any) -> EmptyState:
        return EmptyState()

    def update_fn(
        updates: list, state: EmptyState, *, params: Any = None, inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, EmptyState]:
        idx = present_indices(updates)
        new = scale_(take(updates, idx), step_size, inplace=inplace)
        return put(updates, idx, new), state

    return FlatTransformation(init_fn, update_fn, f'scale({step_size!r})')


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_schedule`: the number of updates seen so far."""

    count: int


def scale_by_schedule(step_size_fn: Schedule) -> FlatTransformation:
    """Scale updates by ``step_size_fn(count)``; the first update sees ``count == 0``.

    Args:
        step_size_fn: a callable mapping the step count (a Python ``int``) to a scale.
    """
    if not callable(step_size_fn):
        raise TypeError(f'`step_size_fn` must be callable, got {type(step_size_fn).__name__}')

    def init_fn(params: list, treespec: Any) -> ScaleByScheduleState:
        return ScaleByScheduleState(count=0)

    def update_fn(
        updates: list, state: ScaleByScheduleState, *, params: Any = None,
        inplace: bool = True, treespec: Any = None,
    ) -> tuple[list, ScaleByScheduleState]:
        idx = present_indices(updates)
        present = take(updates, idx)
        if not present:
            return updates, state
        new = scale_(present, step_size_fn(state.count), inplace=inplace)
        return put(updates, idx, new), ScaleByScheduleState(count=state.count + 1)

    return FlatTransformation(init_fn, update_fn, f'scale_by_schedule({step_size_fn!r})')
