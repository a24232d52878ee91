"""TorchOpt 0.7's optimizer states, brought to this library's layout when they are loaded.

A checkpoint saved by TorchOpt 0.7 (``torch.save(opt.state_dict())``: a tuple of chain states)
unpickles into the same NamedTuple classes, with three differences in their contents:

- step counts are int64 tensors (``ScaleByAdamState.count``, ``ScaleByScheduleState.count``);
  here they are the float32 tensors ``torch.optim`` and its fused kernels use;
- ``ScaleByAdamaxState.t`` and ``ScaleByRAdamState.t`` are one Python int for all leaves; here
  there is one count per parameter;
- momentum with dampening is a ``TraceState`` (the first-step flag lived in the transformation
  object); here it is a ``DampenedTraceState`` that counts the steps of each parameter.

:func:`adopt` converts such a state against a fresh one of the loading optimizer (the template)
and leaves any other state as it is, for the structure check that follows to accept or refuse.
"""

from __future__ import annotations

from typing import Any

import optree
import torch

__all__ = ['adopt']


def _count_like(value: Any, like: Any) -> Any:
    """``value`` (a saved count) as the template's count tensor ``like`` holds it."""
    if not isinstance(like, torch.Tensor) or like.dim() != 0:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full_like(like, value)
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != like.dtype:
        return value.to(dtype=like.dtype, device=like.device)
    return value


def _first_step_done(trace: Any, like: torch.Tensor) -> torch.Tensor:
    """A count for a buffer of TorchOpt 0.7's ``TraceState``: 1 once it holds a step, else 0."""
    taken = isinstance(trace, torch.Tensor) and bool(torch.count_nonzero(trace.detach()))
    return torch.full_like(like, 1.0 if taken else 0.0)


def adopt(template: Any, state: Any) -> Any:
    """``state`` (TorchOpt 0.7's layout, or already this library's) in the layout of ``template``."""
    if optree.is_namedtuple_instance(template) and optree.is_namedtuple_instance(state):
        if type(template).__name__ == 'DampenedTraceState' and type(state).__name__ == 'TraceState':
            if isinstance(state.trace, list) and len(state.trace) == len(template.count):
                counts = [_first_step_done(t, c) for t, c in zip(state.trace, template.count)]
                return type(template)(trace=state.trace, count=counts)
            return state
        if type(template) is not type(state):
            return state
        fields = {}
        for name in template._fields:
            want, got = getattr(template, name), getattr(state, name)
            if isinstance(want, list) and want and not isinstance(got, (list, tuple)):
                got = [_count_like(got, w) for w in want]  # one count for every leaf
            elif isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
                got = [_count_like(g, w) for g, w in zip(got, want)]
            elif isinstance(want, tuple):
                got = adopt(want, got)
            fields[name] = got
        return type(state)(**fields)
    if isinstance(template, tuple) and isinstance(state, tuple) and len(template) == len(state):
        return tuple(adopt(t, s) for t, s in zip(template, state))
    return state
