"""``Optimizer.state``: a live, writable per-parameter view, as ``torch.optim.Optimizer.state``.

A torch-like optimizer keeps each param group's state as one chain of NamedTuples holding
per-parameter lists (what its transformation's ``init`` returns). ``torch.optim`` code reads and
edits ``optimizer.state[p]`` instead, a dict of buffers per parameter. :class:`StateView` is that
dict over the chain, with ``torch.optim``'s buffer names (:data:`._state_dict.NAMES`):

- ``opt.state[p]['exp_avg']`` is the optimizer's own tensor: in-place edits take effect;
- ``opt.state[p]['exp_avg'] = t`` copies ``t`` into that buffer (shape checked);
- ``del opt.state[p]`` / ``opt.state.pop(p)`` resets ``p``'s state to what ``init`` gives (its
  next step is a first step, as in ``torch.optim``, where the state is then created afresh);
- ``opt.state.clear()`` and ``opt.state = collections.defaultdict(dict)`` reset every group;
- ``opt.state[p] = {...}`` resets ``p`` and loads the given buffers, as ``load_state_dict`` does.

Writes keep the tensors the optimizer already holds (values are copied in), so the step counts
stay views of one vector (:mod:`torchopt._counts`) and ``torch.compile``'s identity guards on the
fused kernels' buffers keep holding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import torch

from torchopt.base import UninitializedState
from torchopt.optim import _state_dict

__all__ = ['ParamState', 'StateView', 'assign', 'reset']


def _locate(opt: Any, param: Any) -> tuple[int, int]:
    """``(group, index)`` of ``param`` in ``opt``, or ``KeyError``."""
    for i, group in enumerate(opt.param_groups):
        for j, p in enumerate(group['params']):
            if p is param:
                return i, j
    raise KeyError(
        f'optimizer.state: {type(param).__name__} of shape {tuple(getattr(param, "shape", ()))} '
        'is not a parameter of this optimizer (add it with add_param_group first)'
    )


def reset(opt: Any, i: int, j: int) -> None:
    """Set parameter ``j`` of group ``i`` back to its initial state (in place)."""
    state = opt.state_groups[i]
    if isinstance(state, UninitializedState):
        return  # nothing has been created: the first step initialises everything
    params = tuple(opt.param_groups[i]['params'])
    _state_dict.copy_param(state, opt.group_impl(i).init(params), len(params), j)


class ParamState(MutableMapping):
    """One parameter's buffers under ``torch.optim``'s names (``opt.state[p]``)."""

    def __init__(self, opt: Any, i: int, j: int) -> None:
        self._opt, self._i, self._j = opt, i, j

    def _entry(self) -> dict[str, Any]:
        return _state_dict.param_entry(self._opt, self._i, self._j)

    def __getitem__(self, name: str) -> Any:
        return self._entry()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entry())

    def __len__(self) -> int:
        return len(self._entry())

    def __setitem__(self, name: str, value: Any) -> None:
        self.update({name: value})

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Copy the given buffers in (validated together: a bad one changes nothing)."""
        values = {**self._entry(), **dict(other), **kwargs}
        _state_dict.import_param(self._opt, self._i, self._j, values)

    def __delitem__(self, name: str) -> None:
        raise TypeError(
            f'optimizer.state[p]: a single buffer ({name!r}) cannot be deleted; reset the '
            "parameter's whole state with `del optimizer.state[p]`"
        )

    def __repr__(self) -> str:
        return repr(self._entry())


class StateView(MutableMapping):
    """``{parameter: ParamState}`` for the parameters that have state (``opt.state``)."""

    def __init__(self, opt: Any) -> None:
        self._opt = opt

    def _started(self) -> list[Any]:
        params = [p for group in self._opt.param_groups for p in group['params']]
        return [params[k] for k in _state_dict.export(self._opt)['state']]

    def __getitem__(self, param: Any) -> ParamState:
        return ParamState(self._opt, *_locate(self._opt, param))

    def __contains__(self, param: object) -> bool:
        return any(p is param for p in self._started())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._started())

    def __len__(self) -> int:
        return len(self._started())

    def __setitem__(self, param: Any, value: Mapping[str, Any]) -> None:
        if not isinstance(value, Mapping):
            raise TypeError(
                f'optimizer.state[p] = ...: expected a mapping of buffer names to tensors, got '
                f'{type(value).__name__}'
            )
        i, j = _locate(self._opt, param)
        values = dict(value)
        if values:
            _state_dict.import_param(self._opt, i, j, values)  # validates before writing
        else:
            reset(self._opt, i, j)

    def __delitem__(self, param: Any) -> None:
        i, j = _locate(self._opt, param)
        if not _state_dict.param_entry(self._opt, i, j):
            raise KeyError('del optimizer.state[p]: the parameter has no state yet')
        reset(self._opt, i, j)

    def pop(self, param: Any, *default: Any) -> Any:
        """Remove ``param``'s state and return a copy of its buffers (or ``default``)."""
        i, j = _locate(self._opt, param)
        entry = _state_dict.param_entry(self._opt, i, j)
        if not entry:
            if default:
                return default[0]
            raise KeyError('optimizer.state.pop: the parameter has no state yet')
        snapshot = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in entry.items()}
        reset(self._opt, i, j)  # in place: the returned buffers must not be the reset ones
        return snapshot

    def clear(self) -> None:
        """Reset every parameter's state (each group initialises again at its next step)."""
        self._opt.state_groups[:] = [UninitializedState() for _ in self._opt.state_groups]

    def __repr__(self) -> str:
        return repr({p: dict(self[p]) for p in self})


def assign(opt: Any, value: Any) -> None:
    """``opt.state = value``: reset everything, then load ``{parameter: {name: tensor}}``."""
    if not hasattr(opt, 'state_groups') or not opt.state_groups:
        if value:
            raise ValueError('optimizer.state = ...: the optimizer has no parameters yet')
        return  # torch.optim.Optimizer.__init__ assigns an empty mapping
    if not isinstance(value, Mapping):
        raise TypeError(
            'optimizer.state = ...: expected a mapping of parameters to their buffers, got '
            f'{type(value).__name__}'
        )
    targets = [(_locate(opt, p), dict(v)) for p, v in value.items()]
    states = list(opt.state_groups)
    view = StateView(opt)
    view.clear()
    try:
        for (i, j), buffers in targets:
            if buffers:
                _state_dict.import_param(opt, i, j, buffers)
    except Exception:
        opt.state_groups[:] = states
        raise
