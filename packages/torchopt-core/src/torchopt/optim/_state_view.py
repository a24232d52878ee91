"""``Optimizer.state``: a live, writable per-parameter view, as ``torch.optim.Optimizer.state``.

A torch-like optimizer keeps each param group's state as one chain of NamedTuples holding
per-parameter lists (what its transformation's ``init`` returns). ``torch.optim`` code reads and
edits ``optimizer.state[p]`` instead, a dict of buffers per parameter. :class:`StateView` is that
dict over the chain, with ``torch.optim``'s buffer names (:data:`._state_names.NAMES`):

- ``opt.state[p]['exp_avg']`` is the optimizer's own tensor: in-place edits take effect;
- ``opt.state[p]['exp_avg'] = t`` copies ``t`` into that buffer (shape checked);
- ``opt.state[p]['slow'] = t`` under a name that is no optimizer's buffer keeps ``t`` itself, as
  ``torch.optim`` does (Lookahead-style wrappers keep their buffers there): it is in
  ``state_dict()`` and loaded back, and ``del opt.state[p]['slow']`` removes it;
- ``opt.state[q]`` of a tensor (or any key) that is not a parameter of the optimizer is a plain
  dict, created on first use, as ``torch.optim``'s ``defaultdict`` gives;
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


def _layout_key(opt: Any) -> tuple[tuple[int, int], ...]:
    """Which parameter lists ``opt`` has, and their lengths (when to rebuild the index)."""
    return tuple((id(g['params']), len(g['params'])) for g in opt.param_groups)


def _locate(opt: Any, key: Any) -> tuple[int, int] | None:
    """``(group, index)`` of the parameter ``key`` in ``opt``, or ``None``.

    An index by ``id`` is kept on the optimizer, checked on a hit and rebuilt when the param
    groups changed, so that ``opt.state[p]`` in a loop over the parameters stays linear.
    """
    if not isinstance(key, torch.Tensor):
        return None
    groups = opt.param_groups
    cached = opt.__dict__.get('_param_index')
    if cached is not None:
        layout, index = cached
        hit = index.get(id(key))
        if hit is not None:
            i, j = hit
            if i < len(groups) and j < len(groups[i]['params']) and groups[i]['params'][j] is key:
                return hit
        elif layout == _layout_key(opt):
            return None
    index = {id(p): (i, j) for i, g in enumerate(groups) for j, p in enumerate(g['params'])}
    opt.__dict__['_param_index'] = (_layout_key(opt), index)
    hit = index.get(id(key))
    return hit if hit is not None and groups[hit[0]]['params'][hit[1]] is key else None


def reset(opt: Any, i: int, j: int) -> None:
    """Set parameter ``j`` of group ``i`` back to its initial state (in place), own entries too."""
    _state_dict.extra_state(opt).pop(opt.param_groups[i]['params'][j], None)
    state = opt.state_groups[i]
    if isinstance(state, UninitializedState):
        return  # nothing has been created: the first step initialises everything
    params = tuple(opt.param_groups[i]['params'])
    _state_dict.copy_param(state, opt.group_impl(i).init(params), len(params), j)


def _load(opt: Any, i: int, j: int, values: Mapping[Any, Any]) -> None:
    """``opt.state[p] = values`` for parameter ``j`` of group ``i`` (buffers validated first)."""
    buffers, own = _state_dict.split(values)
    if buffers:  # validates before writing
        own = {**_state_dict.import_param(opt, i, j, buffers), **own}
    else:
        reset(opt, i, j)
    param = opt.param_groups[i]['params'][j]
    extras = _state_dict.extra_state(opt)
    if own:
        extras[param] = own
    else:
        extras.pop(param, None)


class ParamState(MutableMapping):
    """One parameter's buffers under ``torch.optim``'s names, then its own entries."""

    def __init__(self, opt: Any, i: int, j: int) -> None:
        self._opt, self._i, self._j = opt, i, j

    def _own(self) -> dict[Any, Any]:
        return _state_dict.extra_state(self._opt).get(self._param(), {})

    def _param(self) -> torch.Tensor:
        return self._opt.param_groups[self._i]['params'][self._j]

    def _entry(self) -> dict[str, Any]:
        return {**_state_dict.param_entry(self._opt, self._i, self._j), **self._own()}

    def __getitem__(self, name: str) -> Any:
        own = self._own()
        return own[name] if name in own else self._entry()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entry())

    def __len__(self) -> int:
        return len(self._entry())

    def __setitem__(self, name: str, value: Any) -> None:
        if _state_dict.is_buffer_name(name):
            self.update({name: value})
        else:  # the user's own entry: kept as it is, as torch.optim keeps it
            _state_dict.extra_state(self._opt).setdefault(self._param(), {})[name] = value

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Copy the given buffers in (validated together: a bad one changes nothing).

        Entries under other names are the user's own and are kept as they are.
        """
        buffers, own = _state_dict.split({**dict(other), **kwargs})
        if buffers:
            merged = {**_state_dict.param_entry(self._opt, self._i, self._j), **buffers}
            own = {**_state_dict.import_param(self._opt, self._i, self._j, merged), **own}
        if own:
            _state_dict.extra_state(self._opt).setdefault(self._param(), {}).update(own)

    def __delitem__(self, name: str) -> None:
        extras = _state_dict.extra_state(self._opt)
        own = extras.get(self._param(), {})
        if name in own:
            del own[name]
            if not own:
                del extras[self._param()]
            return
        if name not in self._entry():
            raise KeyError(name)
        raise TypeError(
            f'optimizer.state[p]: a single buffer ({name!r}) cannot be deleted; reset the '
            "parameter's whole state with `del optimizer.state[p]`"
        )

    def __repr__(self) -> str:
        return repr(self._entry())


class StateView(MutableMapping):
    """``{parameter: ParamState}`` for the parameters that have state (``opt.state``).

    Keys that are not parameters of the optimizer map to plain dicts (``torch.optim``'s
    ``defaultdict(dict)``), kept in :func:`._state_dict.extra_state`.
    """

    def __init__(self, opt: Any) -> None:
        self._opt = opt

    def _keys(self) -> list[Any]:
        keys = []
        for i, group in enumerate(self._opt.param_groups):
            entries, _ = _state_dict.group_entries(self._opt, i)
            keys += [p for p, entry in zip(group['params'], entries) if entry]
        others = _state_dict.extra_state(self._opt)
        return keys + [k for k in others if _locate(self._opt, k) is None]

    def __getitem__(self, key: Any) -> Any:
        where = _locate(self._opt, key)
        if where is None:
            return _state_dict.extra_state(self._opt).setdefault(key, {})
        return ParamState(self._opt, *where)

    def __contains__(self, key: object) -> bool:
        return any(k is key for k in self._keys())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __setitem__(self, key: Any, value: Any) -> None:
        where = _locate(self._opt, key)
        if where is None:
            _state_dict.extra_state(self._opt)[key] = value
            return
        if not isinstance(value, Mapping):
            raise TypeError(
                f'optimizer.state[p] = ...: expected a mapping of buffer names to tensors, got '
                f'{type(value).__name__}'
            )
        _load(self._opt, *where, value)

    def __delitem__(self, key: Any) -> None:
        where = _locate(self._opt, key)
        if where is None:
            del _state_dict.extra_state(self._opt)[key]
            return
        if not ParamState(self._opt, *where):
            raise KeyError('del optimizer.state[p]: the parameter has no state yet')
        reset(self._opt, *where)

    def pop(self, key: Any, *default: Any) -> Any:
        """Remove ``key``'s state and return a copy of its buffers (or ``default``)."""
        where = _locate(self._opt, key)
        if where is None:
            return _state_dict.extra_state(self._opt).pop(key, *default)
        entry = dict(ParamState(self._opt, *where))
        if not entry:
            if default:
                return default[0]
            raise KeyError('optimizer.state.pop: the parameter has no state yet')
        own = _state_dict.extra_state(self._opt).get(key, {})
        snapshot = {k: v if k in own else v.clone() if isinstance(v, torch.Tensor) else v
                    for k, v in entry.items()}  # fmt: skip
        reset(self._opt, *where)  # in place: the returned buffers must not be the reset ones
        return snapshot

    def clear(self) -> None:
        """Reset every parameter's state (each group initialises again at its next step)."""
        self._opt.state_groups[:] = [UninitializedState() for _ in self._opt.state_groups]
        _state_dict.extra_state(self._opt).clear()

    def __repr__(self) -> str:
        entries = ((k, self[k]) for k in self)
        return repr({k: dict(v) if isinstance(v, ParamState) else v for k, v in entries})


def assign(opt: Any, value: Any) -> None:
    """``opt.state = value``: reset everything, then load ``{parameter: {name: tensor}}``."""
    extras = _state_dict.extra_state(opt)
    if not getattr(opt, 'state_groups', None):
        if value:
            raise ValueError('optimizer.state = ...: the optimizer has no parameters yet')
        extras.clear()
        return  # torch.optim.Optimizer.__init__ assigns an empty mapping
    if not isinstance(value, Mapping):
        raise TypeError(
            'optimizer.state = ...: expected a mapping of parameters to their buffers, got '
            f'{type(value).__name__}'
        )
    items = list(value.items())
    for key, entry in items:
        if _locate(opt, key) is not None and not isinstance(entry, Mapping):
            raise TypeError(
                f'optimizer.state = ...: expected a mapping of buffer names to tensors for each '
                f'parameter, got {type(entry).__name__}'
            )
    states, saved_extras = list(opt.state_groups), dict(extras)
    view = StateView(opt)
    view.clear()
    try:
        for key, entry in items:
            view[key] = entry
    except Exception:
        opt.state_groups[:] = states
        extras.clear()
        extras.update(saved_extras)
        raise
