"""``state_dict`` / ``load_state_dict`` of the torch-like optimizers in ``torch.optim``'s layout.

A group's state is a chain of NamedTuples holding per-parameter lists. :data:`NAMES` maps each
known state class's fields to ``torch.optim``'s buffer names, so that a checkpoint reads like
``torch.optim``'s (``{'state': {index: {'step': ..., 'exp_avg': ...}}, 'param_groups': [...]}``)
and loads into ``torch.optim`` and back. A chain with a state this table does not describe (a
user's ``Optimizer(params, impl)`` with masks or custom transformations) is stored as it is under
``'torchopt'`` and restored exactly.

Loading validates everything first (groups, parameter counts, buffer names, shapes) and builds
the new states aside, so a failed load leaves the optimizer unchanged.

Entries under any other name are a user's own per-parameter state (``opt.state[p]['slow'] = t``,
as Lookahead-style wrappers of ``torch.optim`` keep it): they are kept by reference beside the
chain (:func:`extra_state`), written into the checkpoint with the buffers and loaded back (cast to
the parameter's device and floating dtype, as ``torch.optim`` casts). Names that are some
optimizer's buffer (:func:`is_buffer_name`) stay reserved, so that another optimizer's state
is still refused instead of being kept as extras.
"""

from __future__ import annotations

import re
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
from torchopt.transform._muon import ScaleByMuonState
from torchopt.transform._torch_family import (
    ScaleByAdafactorState,
    ScaleByASGDState,
    ScaleByRpropState,
)

__all__ = [
    'NAMES',
    'check_tree',
    'copy_param',
    'export',
    'extra_state',
    'group_entries',
    'import_param',
    'is_buffer_name',
    'param_entry',
    'parse',
    'split',
]

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
    DampenedTraceState: {'trace': 'momentum_buffer'},
    ScaleByRssState: {'sum_of_squares': 'sum'},
    ScaleByScheduleState: {'count': 'step'},
    ScaleByRmsState: {'nu': 'square_avg'},
    ScaleByRStdDevState: {'mu': 'grad_avg', 'nu': 'square_avg'},
    ScaleByAdadeltaState: {'mu': 'square_avg', 'nu': 'acc_delta'},
    ScaleByLionState: {'mu': 'exp_avg'},
    ScaleByAdafactorState: {
        'row_var': 'row_var',
        'col_var': 'col_var',
        'variance': 'variance',
        'count': 'step',
    },
    ScaleByRpropState: {'prev': 'prev', 'step_size': 'step_size', 'count': 'step'},
    ScaleByASGDState: {'ax': 'ax', 'count': 'step'},
    ScaleByMuonState: {'momentum_buffer': 'momentum_buffer'},
}
_SCALARS = {'count', 't', 'mu_product'}

# Fields torch.optim does not keep, with the name older torchopt checkpoints gave them: not
# exported, and set to 1 for a loaded parameter (SGD's dampened momentum only asks whether a
# parameter has taken a step: its momentum buffer is then in the checkpoint).
_HIDDEN: dict[type, dict[str, str]] = {DampenedTraceState: {'count': 'step'}}

# States whose torch.optim counterpart keeps a ``step`` it counts but never reads (RMSprop,
# Adadelta), while the state (TorchOpt 0.7's layout) has no count: when nothing else in the
# chain counts the steps (a schedule does), ``step`` is written as 1 (the parameter has taken
# a step; the true number is not known) and ignored when loaded.
_UNCOUNTED = (ScaleByRmsState, ScaleByRStdDevState, ScaleByAdadeltaState)


# Every buffer name a known optimizer's state has (``_1``-style suffixes aside): reserved.
_BUFFER_NAMES = frozenset(
    {name.replace('step+1', 'step') for names in NAMES.values() for name in names.values()}
    | {name for names in _HIDDEN.values() for name in names.values()}
    | {'eta', 'mu'}  # ASGD's derived values (_DERIVED)
)
_SUFFIX = re.compile(r'_[0-9]+$')


def is_buffer_name(name: Any) -> bool:
    """Whether ``name`` is a buffer name of some optimizer's state (else a user's own entry)."""
    return isinstance(name, str) and (
        name in _BUFFER_NAMES or _SUFFIX.sub('', name) in _BUFFER_NAMES
    )


def split(entry: Any) -> tuple[dict[str, Any], dict[Any, Any]]:
    """``entry`` as (the optimizer's buffers, the user's own entries)."""
    buffers: dict[str, Any] = {}
    extras: dict[Any, Any] = {}
    for key, value in entry.items():
        (buffers if is_buffer_name(key) else extras)[key] = value
    return buffers, extras


def extra_state(opt: Any) -> dict[Any, dict[Any, Any]]:
    """The user's own state of ``opt``: ``{parameter: {name: value}}``, plus any other keys.

    Keys that are not parameters of ``opt`` (another tensor, a string) hold what was assigned
    to them, as in ``torch.optim``'s ``defaultdict``.
    """
    extras: dict[Any, dict[Any, Any]] | None = opt.__dict__.get('_extra_state')
    if extras is None:
        extras = opt.__dict__['_extra_state'] = {}
    return extras


def _adafactor_fields(param: torch.Tensor) -> set[str]:
    """The buffers ``torch.optim.Adafactor`` keeps for ``param``: factored for a matrix."""
    return {'row_var', 'col_var', 'count'} if param.dim() > 1 else {'variance', 'count'}


# Per-parameter layouts: the fields kept for each parameter (the others are empty tensors).
_PER_PARAM = {ScaleByAdafactorState: _adafactor_fields}


def _scalar_dtype() -> torch.dtype:
    """The dtype of ``torch.optim``'s 0-dim state (``_get_scalar_dtype``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _asgd_derived(count: torch.Tensor, group: dict) -> dict[str, torch.Tensor]:
    """``torch.optim.ASGD``'s ``eta`` and ``mu`` after ``count`` steps (for the next step).

    Nothing for a group without ASGD's hyper-parameters (a generic ``Optimizer(params, impl)``).
    """
    if not all(isinstance(group.get(k), (int, float)) for k in ('lr', 'lambd', 'alpha', 't0')):
        return {}
    step = float(count)
    lr, lambd, alpha, t0 = (float(group[k]) for k in ('lr', 'lambd', 'alpha', 't0'))
    dtype = _scalar_dtype()
    eta = torch.tensor(lr / ((1 + lambd * lr * step) ** alpha), dtype=dtype)
    return {'eta': eta, 'mu': torch.tensor(1 / max(1.0, step - t0), dtype=dtype)}


# Values torch.optim stores that follow from a state's count and the group's hyper-parameters:
# written on export, recomputed (so ignored) on import.
_DERIVED = {ScaleByASGDState: (('eta', 'mu'), _asgd_derived)}


class _Layout:
    """How one group's chain state reads in ``torch.optim``'s names.

    ``slots`` are ``(namedtuple, field, name)`` for the exported fields, ``hidden`` the
    ``(namedtuple, field)`` that are not, ``derived`` the ``(namedtuple, names, fn)`` computed
    on export, ``synth_step`` whether ``step`` is written as 1, and ``ignored`` the names
    accepted and dropped on import.
    """

    def __init__(self) -> None:
        self.slots: list[tuple[Any, str, str]] = []
        self.hidden: list[tuple[Any, str]] = []
        self.derived: list[tuple[Any, tuple[str, ...], Any]] = []
        self.synth_step = False
        self.ignored: set[str] = set()


def _layout(state: Any, n: int) -> _Layout | None:
    """The :class:`_Layout` of a chain state, or ``None``.

    ``None`` when some part of the state is not described by :data:`NAMES` (it is then stored
    as it is). Names that repeat within a chain (two step counts) get a ``_1``, ``_2`` suffix.
    """
    out = _Layout()
    used: dict[str, int] = {}
    uncounted = False

    def walk(node: Any) -> bool:
        nonlocal uncounted
        if isinstance(node, (EmptyState, UninitializedState)):
            return True
        if type(node) in NAMES:
            names, hidden = NAMES[type(node)], _HIDDEN.get(type(node), {})
            for field in node._fields:
                value = getattr(node, field)
                described = field in names or field in hidden
                if not described or not isinstance(value, list) or len(value) != n:
                    return False
                if field in hidden:
                    out.hidden.append((node, field))
                    continue
                name = names[field]
                k = used.get(name, 0)
                used[name] = k + 1
                out.slots.append((node, field, name if k == 0 else f'{name}_{k}'))
            if type(node) in _DERIVED:
                derived_names, fn = _DERIVED[type(node)]
                out.derived.append((node, derived_names, fn))
            uncounted = uncounted or isinstance(node, _UNCOUNTED)
            return True
        if isinstance(node, tuple) and not hasattr(node, '_fields'):
            return all(walk(x) for x in node)
        return False

    if not walk(state):
        return None
    if uncounted and 'step' not in used:
        out.synth_step = True
        out.ignored.add('step')
    return out


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


def _kept(node: Any, field: str, param: torch.Tensor) -> bool:
    """Whether ``torch.optim`` keeps ``field`` of ``node`` for ``param``."""
    fields = _PER_PARAM.get(type(node))
    return fields is None or field in fields(param)


def _entry(layout: _Layout, j: int, param: torch.Tensor, group: dict) -> dict[str, Any]:
    """Parameter ``j``'s buffers under ``torch.optim``'s names (empty before its first step)."""
    entry = {}
    for node, field, name in layout.slots:
        value = getattr(node, field)[j]
        if value is None or not _started(node, j) or not _kept(node, field, param):
            continue
        key, value = _export_value(name, value)
        entry[key] = value
    for node, _, fn in layout.derived:
        if _started(node, j) and node.count[j] is not None:
            entry.update(fn(node.count[j], group))
    if entry and layout.synth_step:
        entry['step'] = torch.ones((), dtype=torch.float32)
    return entry


def param_entry(opt: Any, i: int, j: int) -> dict[str, Any]:
    """Parameter ``j`` of group ``i`` as :func:`export` writes it (``{}``: no state)."""
    chain = opt.state_groups[i]
    group = opt.param_groups[i]
    if isinstance(chain, UninitializedState):
        return {}
    layout = _layout(chain, len(group['params']))
    return {} if layout is None else _entry(layout, j, group['params'][j], group)


def group_entries(opt: Any, i: int) -> tuple[list[dict[str, Any]], bool]:
    """Each parameter's entry in group ``i`` (buffers, then own entries; ``{}``: no state).

    Also whether the group's chain state has no per-parameter layout (it is then saved whole).
    """
    group, chain = opt.param_groups[i], opt.state_groups[i]
    extras = extra_state(opt)
    layout = None
    if not isinstance(chain, UninitializedState):
        layout = _layout(chain, len(group['params']))
    entries = []
    for j, param in enumerate(group['params']):
        entry = {} if layout is None else _entry(layout, j, param, group)
        entry.update(extras.get(param, ()))
        entries.append(entry)
    return entries, layout is None and not isinstance(chain, UninitializedState)


def export(opt: Any) -> dict[str, Any]:
    """The optimizer's ``state_dict()`` (tensors by reference).

    A parameter's entry holds its buffers and then its own entries (:func:`extra_state`); keys
    of ``opt.state`` that are not tensors are written as they are, as ``torch.optim`` writes
    them. Those that are tensors but not parameters of ``opt`` are left out (``torch.optim``
    cannot index them either).
    """
    state: dict[Any, dict[str, Any]] = {}
    groups, raw = [], {}
    start = 0
    for i, group in enumerate(opt.param_groups):
        n = len(group['params'])
        saved = {k: v for k, v in group.items() if k != 'params'}
        saved['params'] = list(range(start, start + n))
        groups.append(saved)
        entries, whole = group_entries(opt, i)
        if whole:
            raw[i] = opt.state_groups[i]
        for idx, entry in enumerate(entries, start):
            if entry:
                state[idx] = entry
        start += n
    for key, value in extra_state(opt).items():
        if not isinstance(key, torch.Tensor):
            state.setdefault(key, value)  # (an int key that is also an index: the index wins)
    return {
        'state': state,
        'param_groups': groups,
        'torchopt': {'optimizer': type(opt).__name__, 'raw': raw},
    }


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


def _one_number(i: int, idx: int, key: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value)
    if value.numel() != 1:
        raise _fail(i, f'state {key!r} of parameter {idx} must hold one number, got shape '
                       f'{tuple(value.shape)}')  # fmt: skip
    return value


def _import_entry(
    i: int, idx: int, entry: Any, layout: _Layout, j: int, param: torch.Tensor
) -> None:
    """Write one parameter's saved buffers into the template's ``layout`` (validated first).

    Only the buffer names (:func:`is_buffer_name`) of ``entry`` are read: the others are the
    user's own entries, which :func:`parse` keeps apart.
    """
    if not isinstance(entry, dict):
        raise _fail(i, f'the state of parameter {idx} must be a dict, got {type(entry).__name__}')
    entry, _ = split(entry)
    expected = {_export_value(name, torch.zeros(()))[0]: (node, field, name)
                for node, field, name in layout.slots if _kept(node, field, param)}  # fmt: skip
    dropped = set(layout.ignored) | {n for _, names, _ in layout.derived for n in names}
    dropped |= {_HIDDEN[type(node)][field] for node, field in layout.hidden} - set(expected)
    unknown = sorted(set(entry) - set(expected) - dropped)
    if unknown:
        raise _fail(
            i,
            f'parameter {idx} has unexpected state keys {unknown}; this optimizer keeps '
            f'{sorted(expected | dict.fromkeys(dropped))}: is it the state of another optimizer? '
            "(other optimizers' buffer names are reserved; any other name is kept as the "
            "user's own state)",
        )
    for key in dropped & set(entry):  # recomputed, or not kept: only checked
        _one_number(i, idx, key, entry[key])
    for key, (node, field, name) in expected.items():
        lst = getattr(node, field)
        if key not in entry:
            if entry:
                raise _fail(i, f'parameter {idx} is missing the state key {key!r}')
            continue
        want = lst[j]
        if field in _SCALARS:
            value = _one_number(i, idx, key, entry[key])
        else:
            value = entry[key]
            if not isinstance(value, torch.Tensor):
                value = torch.as_tensor(value)
            if value.shape != want.shape:
                raise _fail(i, f'state {key!r} of parameter {idx} has shape '
                               f'{tuple(value.shape)}, expected {tuple(want.shape)} (the '
                               f'parameter has shape {tuple(param.shape)})')  # fmt: skip
        value = value.detach().to(dtype=want.dtype, device=want.device).reshape(want.shape)
        if name.startswith('step+1'):
            value = value + 1
        if field in _SCALARS:
            with torch.no_grad():  # in place: the counts stay views of one vector (_counts)
                want.copy_(value)
        else:
            lst[j] = value.clone()
    if entry:
        for node, field in layout.hidden:  # the parameter has taken a step
            with torch.no_grad():
                getattr(node, field)[j].fill_(1.0)


def _cast_extra(value: Any, param: torch.Tensor) -> Any:
    """A loaded own entry on ``param``'s device (floating tensors in its dtype), copied."""

    def cast(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        floating = param.is_floating_point() and leaf.is_floating_point()
        dtype = param.dtype if floating else leaf.dtype
        return leaf.detach().to(device=param.device, dtype=dtype, copy=True)

    return optree.tree_map(cast, value, none_is_leaf=True)


def _loaded_extras(opt: Any, saved_state: dict, groups: list) -> dict[Any, Any]:
    """The user's own entries of a checkpoint, by parameter (other keys as they are)."""
    extras: dict[Any, Any] = {}
    indices = set()
    for group, saved in zip(opt.param_groups, groups):
        for idx, param in zip(saved.get('params', ()), group['params']):
            indices.add(idx)
            entry = saved_state.get(idx)
            own = split(entry)[1] if isinstance(entry, dict) else {}
            if own:
                extras[param] = {key: _cast_extra(v, param) for key, v in own.items()}
    for key, value in saved_state.items():
        if key not in indices:
            extras[key] = value
    return extras


def parse(opt: Any, state_dict: Any) -> tuple[list, list[dict], dict[Any, Any]]:
    """Validate ``state_dict`` against ``opt``.

    Returns:
        The new group states, the saved groups and the user's own entries (:func:`extra_state`).
    """
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
        return states, [{} for _ in range(n_groups)], {}
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
        template = opt.impl_with(i, saved).init(params)  # the hyper-parameters being loaded
        layout = _layout(template, len(params))
        slots = layout.slots if layout is not None else ()
        if saved.get('amsgrad') and not any(s[2] == 'max_exp_avg_sq' for s in slots):
            raise _fail(i, "the state is AMSGrad's (amsgrad=True): load it into torchopt.AMSGrad")
        if i in raw:
            states.append(check_tree(i, template, raw[i]))
            continue
        if layout is None:
            raise _fail(i, 'the state has no per-parameter layout for this transformation')
        entries = [saved_state.get(idx) for idx in ids]
        if all(e is None for e in entries):
            states.append(UninitializedState() if not saved_state else template)
            continue
        for j, (idx, entry, param) in enumerate(zip(ids, entries, params)):
            if entry is not None:
                _import_entry(i, idx, entry, layout, j, param)
        states.append(template)
    return states, [dict(g) for g in groups], _loaded_extras(opt, saved_state, groups)


# --- one parameter at a time (``Optimizer.state``, :mod:`torchopt.optim._state_view`) ----------


def import_param(opt: Any, i: int, j: int, entry: dict[str, Any]) -> None:
    """Load one parameter's buffers (``opt.state[p] = entry``) into the live state, in place.

    The entry is checked as :meth:`load_state_dict` checks one (names, shapes, completeness) on
    a fresh state first, so a bad entry changes nothing; then parameter ``j``'s slot of every
    per-parameter list is copied in, keeping the tensors the optimizer holds.
    """
    params = tuple(opt.param_groups[i]['params'])
    template = opt.group_impl(i).init(params)
    layout = _layout(template, len(params))
    if layout is None:
        raise TypeError(
            f'optimizer.state: param group {i} runs a transformation whose state has no '
            "per-parameter layout in torch.optim's names; set it with load_state_dict()"
        )
    idx = sum(len(g['params']) for g in opt.param_groups[:i]) + j
    try:
        _import_entry(i, idx, entry, layout, j, params[j])
    except ValueError as error:  # load_state_dict's checks: say where this entry came from
        message = str(error).replace('load_state_dict:', 'optimizer.state:', 1)
        raise ValueError(message) from None
    if isinstance(opt.state_groups[i], UninitializedState):
        opt.state_groups[i] = opt.group_impl(i).init(params)
    copy_param(opt.state_groups[i], template, len(params), j)


def _per_param_lists(state: Any, n: int) -> list[tuple[Any, str]]:
    """``(namedtuple, field)`` of every per-parameter list (length ``n``) in a chain state."""
    found = []
    if hasattr(state, '_fields'):
        for field in state._fields:
            value = getattr(state, field)
            if isinstance(value, list) and len(value) == n:
                found.append((state, field))
            elif isinstance(value, tuple):
                found += _per_param_lists(value, n)
    elif isinstance(state, tuple):
        for node in state:
            found += _per_param_lists(node, n)
    return found


def copy_param(state: Any, source: Any, n: int, j: int) -> None:
    """Copy parameter ``j``'s entries of ``source`` (same structure) into ``state``, in place."""
    with torch.no_grad():
        for (node, field), (other, _) in zip(_per_param_lists(state, n),
                                             _per_param_lists(source, n)):  # fmt: skip
            current, new = getattr(node, field), getattr(other, field)
            if isinstance(current[j], torch.Tensor) and isinstance(new[j], torch.Tensor):
                current[j].copy_(new[j])
            else:
                current[j] = new[j]
