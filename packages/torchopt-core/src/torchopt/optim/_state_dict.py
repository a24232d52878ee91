"""``state_dict`` / ``load_state_dict`` of the torch-like optimizers in ``torch.optim``'s layout.

A group's state is a chain of NamedTuples holding per-parameter lists. :data:`NAMES` maps each
known state class's fields to ``torch.optim``'s buffer names, so that a checkpoint reads like
``torch.optim``'s (``{'state': {index: {'step': ..., 'exp_avg': ...}}, 'param_groups': [...]}``)
and loads into ``torch.optim`` and back. A chain with a state this table does not describe (a
user's ``Optimizer(params, impl)`` with masks or custom transformations) is stored as it is under
``'torchopt'`` and restored exactly.

Loading validates everything first (groups, parameter counts, buffer names, shapes) and builds
the new states aside, so a failed load leaves the optimizer unchanged.
"""

from __future__ import annotations

from typing import Any

import optree
import torch

from torchopt.base import EmptyState, UninitializedState
from torchopt.transform import (
    DampenedTraceState,
    ScaleByAdadeltaState,
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByLionState,
    ScaleByNAdamState,
    ScaleByRAdamState,
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByRStdDevState,
    ScaleByScheduleState,
    TraceState,
)
from torchopt.transform._adaptive import ScaleByAmsgradState

__all__ = ['NAMES', 'check_tree', 'export', 'parse', 'state_view']

# field -> torch.optim buffer name; ``+1`` marks a "next step index" stored as ``step + 1``.
NAMES: dict[type, dict[str, str]] = {
    ScaleByAdamState: {'mu': 'exp_avg', 'nu': 'exp_avg_sq', 'count': 'step'},
    ScaleByAmsgradState: {
        'mu': 'exp_avg',
        'nu': 'exp_avg_sq',
        'nu_max': 'max_exp_avg_sq',
        'count': 'step',
    },
    ScaleByAdamaxState: {'mu': 'exp_avg', 'nu': 'exp_inf', 't': 'step+1'},
    ScaleByRAdamState: {'mu': 'exp_avg', 'nu': 'exp_avg_sq', 't': 'step+1'},
    ScaleByNAdamState: {
        'mu': 'exp_avg',
        'nu': 'exp_avg_sq',
        'count': 'step',
        'mu_product': 'mu_product',
    },
    TraceState: {'trace': 'momentum_buffer'},
    DampenedTraceState: {'trace': 'momentum_buffer', 'count': 'step'},
    ScaleByRssState: {'sum_of_squares': 'sum'},
    ScaleByScheduleState: {'count': 'step'},
    ScaleByRmsState: {'nu': 'square_avg'},
    ScaleByRStdDevState: {'mu': 'grad_avg', 'nu': 'square_avg'},
    ScaleByAdadeltaState: {'mu': 'square_avg', 'nu': 'acc_delta'},
    ScaleByLionState: {'mu': 'exp_avg'},
}
_SCALARS = {'count', 't', 'mu_product'}


def _slots(state: Any, n: int) -> list[tuple[Any, str, str]] | None:
    """``(namedtuple, field, name)`` for every per-leaf field of a chain state, or ``None``.

    ``None`` when some part of the state is not described by :data:`NAMES` (it is then stored
    as it is). Names that repeat within a chain (two step counts) get a ``_1``, ``_2`` suffix.
    """
    out: list[tuple[Any, str, str]] = []
    used: dict[str, int] = {}

    def walk(node: Any) -> bool:
        if isinstance(node, (EmptyState, UninitializedState)):
            return True
        if type(node) in NAMES:
            names = NAMES[type(node)]
            for field in node._fields:
                value = getattr(node, field)
                if field not in names or not isinstance(value, list) or len(value) != n:
                    return False
                name = names[field]
                k = used.get(name, 0)
                used[name] = k + 1
                out.append((node, field, name if k == 0 else f'{name}_{k}'))
            return True
        if isinstance(node, tuple) and not hasattr(node, '_fields'):
            return all(walk(x) for x in node)
        return False

    return out if walk(state) else None


def _export_value(name: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    if name.startswith('step+1'):
        return 'step' + name[len('step+1') :], value - 1
    return name, value


def _started(node: Any, j: int) -> bool:
    """Whether leaf ``j`` has taken a step (torch.optim keeps no state before that)."""
    for field in ('count', 't'):
        counts = getattr(node, field, None)
        if isinstance(counts, list) and counts[j] is not None:
            return float(counts[j]) > (1.0 if field == 't' else 0.0)
    return True


def export(opt: Any) -> dict[str, Any]:
    """The optimizer's ``state_dict()`` (tensors by reference)."""
    state: dict[int, dict[str, Any]] = {}
    groups, raw = [], {}
    start = 0
    for i, group in enumerate(opt.param_groups):
        n = len(group['params'])
        ids = list(range(start, start + n))
        start += n
        saved = {k: v for k, v in group.items() if k != 'params'}
        saved['params'] = ids
        groups.append(saved)
        chain = opt.state_groups[i]
        if isinstance(chain, UninitializedState):
            continue
        slots = _slots(chain, n)
        if slots is None:
            raw[i] = chain
            continue
        for j, idx in enumerate(ids):
            entry = {}
            for node, field, name in slots:
                value = getattr(node, field)[j]
                if value is None or not _started(node, j):
                    continue
                key, value = _export_value(name, value)
                entry[key] = value
            if entry:
                state[idx] = entry
    return {
        'state': state,
        'param_groups': groups,
        'torchopt': {'optimizer': type(opt).__name__, 'raw': raw},
    }


def state_view(opt: Any) -> dict:
    """``{parameter: {name: tensor}}`` from :func:`export` (what ``torch.optim.state`` holds)."""
    exported = export(opt)
    params = [p for group in opt.param_groups for p in group['params']]
    return {params[i]: entry for i, entry in exported['state'].items()}


def _fail(group: int, message: str) -> ValueError:
    return ValueError(f'load_state_dict: param group {group}: {message}')


def check_tree(i: int, template: Any, state: Any) -> Any:
    """``state`` if it has the structure and tensor shapes of ``template``, else ``ValueError``."""
    spec_t = optree.tree_structure(template, none_is_leaf=True)
    spec_s = optree.tree_structure(state, none_is_leaf=True)
    if spec_t != spec_s:
        raise _fail(i, f'the state has structure {spec_s}, but this optimizer expects '
                       f'{spec_t}: is it the state of another optimizer or model?')  # fmt: skip
    paths = optree.tree_paths(template, none_is_leaf=True)
    for path, want, got in zip(paths, optree.tree_leaves(template, none_is_leaf=True),
                               optree.tree_leaves(state, none_is_leaf=True)):  # fmt: skip
        if isinstance(want, torch.Tensor):
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                raise _fail(i, f'state entry {path} has shape {shape}, expected '
                               f'{tuple(want.shape)}: it belongs to other parameters')  # fmt: skip
    return state


def _import_entry(i: int, idx: int, entry: Any, slots: list, j: int, param: torch.Tensor) -> None:
    """Write one parameter's saved buffers into the template ``slots`` (validated first)."""
    if not isinstance(entry, dict):
        raise _fail(i, f'the state of parameter {idx} must be a dict, got {type(entry).__name__}')
    expected = {_export_value(name, torch.zeros(()))[0]: (node, field, name)
                for node, field, name in slots}  # fmt: skip
    unknown = sorted(set(entry) - set(expected))
    if unknown:
        raise _fail(
            i,
            f'parameter {idx} has unexpected state keys {unknown}; this optimizer keeps '
            f'{sorted(expected)}: is it the state of another optimizer?',
        )
    for key, (node, field, name) in expected.items():
        lst = getattr(node, field)
        if key not in entry:
            if key == 'step' and type(node) is DampenedTraceState and 'momentum_buffer' in entry:
                lst[j] = torch.ones_like(lst[j])  # torch.optim.SGD keeps no step: it has started
                continue
            if entry:
                raise _fail(i, f'parameter {idx} is missing the state key {key!r}')
            continue
        value = entry[key]
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        want = lst[j]
        if field not in _SCALARS and value.shape != param.shape:
            raise _fail(i, f'state {key!r} of parameter {idx} has shape {tuple(value.shape)} but '
                           f'the parameter has shape {tuple(param.shape)}')  # fmt: skip
        if field in _SCALARS and value.numel() != 1:
            raise _fail(i, f'state {key!r} of parameter {idx} must hold one number, got shape '
                           f'{tuple(value.shape)}')  # fmt: skip
        value = value.detach().to(dtype=want.dtype, device=want.device).reshape(want.shape)
        if name.startswith('step+1'):
            value = value + 1
        lst[j] = value.clone()


def parse(opt: Any, state_dict: Any) -> tuple[list, list[dict]]:
    """Validate ``state_dict`` against ``opt``; return the new group states and saved groups."""
    n_groups = len(opt.param_groups)
    if isinstance(state_dict, (tuple, list)):  # TorchOpt 0.7: one chain state per group
        if len(state_dict) != n_groups:
            raise ValueError(f'load_state_dict: the state holds {len(state_dict)} groups, the '
                             f'optimizer has {n_groups}')  # fmt: skip
        states = []
        for i, state in enumerate(state_dict):
            if not isinstance(state, UninitializedState):
                params = tuple(opt.param_groups[i]['params'])
                check_tree(i, opt.group_impl(i).init(params), state)
            states.append(state)
        return states, [{} for _ in range(n_groups)]
    if (
        not isinstance(state_dict, dict)
        or 'state' not in state_dict
        or 'param_groups' not in state_dict
    ):
        raise ValueError('load_state_dict: expected a dict with keys "state" and "param_groups" '
                         f'(or a tuple of states), got {type(state_dict).__name__}')  # fmt: skip
    meta = state_dict.get('torchopt') or {}
    kind = meta.get('optimizer')
    if kind is not None and kind != type(opt).__name__:
        raise ValueError(f'load_state_dict: the state belongs to a {kind}, this optimizer is a '
                         f'{type(opt).__name__}')  # fmt: skip
    groups = state_dict['param_groups']
    if len(groups) != n_groups:
        raise ValueError(f'load_state_dict: the state holds {len(groups)} param groups, the '
                         f'optimizer has {n_groups}')  # fmt: skip
    saved_state = state_dict['state']
    raw = meta.get('raw') or {}
    states = []
    for i, (group, saved) in enumerate(zip(opt.param_groups, groups)):
        params = tuple(group['params'])
        ids = list(saved.get('params', ()))
        if len(ids) != len(params):
            raise _fail(i, f'the state holds {len(ids)} parameters, the group has {len(params)}')
        template = opt.group_impl(i).init(params)
        slots = _slots(template, len(params))
        if saved.get('amsgrad') and not any(s[2] == 'max_exp_avg_sq' for s in slots or ()):
            raise _fail(i, "the state is AMSGrad's (amsgrad=True): load it into torchopt.AMSGrad")
        if i in raw:
            states.append(check_tree(i, template, raw[i]))
            continue
        if slots is None:
            raise _fail(i, 'the state has no per-parameter layout for this transformation')
        entries = [saved_state.get(idx) for idx in ids]
        if all(e is None for e in entries):
            states.append(UninitializedState() if not saved_state else template)
            continue
        for j, (idx, entry, param) in enumerate(zip(ids, entries, params)):
            if entry is not None:
                _import_entry(i, idx, entry, slots, j, param)
        states.append(template)
    return states, [dict(g) for g in groups]
