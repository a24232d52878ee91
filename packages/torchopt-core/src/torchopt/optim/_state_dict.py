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

from typing import Any

import optree
import torch

from torchopt.base import UninitializedState
from torchopt.optim import _state_names as _names
from torchopt.optim._state_names import NAMES, is_buffer_name, split
from torchopt.optim._upstream_states import adopt

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
    'per_param_lists',
    'refit',
    'regrow',
    'split',
]


def extra_state(opt: Any) -> dict[Any, dict[Any, Any]]:
    """The user's own state of ``opt``: ``{parameter: {name: value}}``, plus any other keys.

    Keys that are not parameters of ``opt`` (another tensor, a string) hold what was assigned
    to them, as in ``torch.optim``'s ``defaultdict``.
    """
    extras: dict[Any, dict[Any, Any]] | None = opt.__dict__.get('_extra_state')
    if extras is None:
        extras = opt.__dict__['_extra_state'] = {}
    return extras


def param_entry(opt: Any, i: int, j: int) -> dict[str, Any]:
    """Parameter ``j`` of group ``i`` as :func:`export` writes it (``{}``: no state)."""
    chain = opt.state_groups[i]
    group = opt.param_groups[i]
    if isinstance(chain, UninitializedState):
        return {}
    layout = _names.layout(chain, len(group['params']))
    return {} if layout is None else _names.entry(layout, j, group['params'][j], group)


def group_entries(opt: Any, i: int) -> tuple[list[dict[str, Any]], bool]:
    """Each parameter's entry in group ``i`` (buffers, then own entries; ``{}``: no state).

    Also whether the group's chain state has no per-parameter layout (it is then saved whole).
    """
    group, chain = opt.param_groups[i], opt.state_groups[i]
    extras = extra_state(opt)
    layout = None
    if not isinstance(chain, UninitializedState):
        layout = _names.layout(chain, len(group['params']))
    entries = []
    for j, param in enumerate(group['params']):
        entry = {} if layout is None else _names.entry(layout, j, param, group)
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
    i: int,
    idx: int,
    entry: Any,
    layout: _names.Layout,
    j: int,
    param: torch.Tensor,
    *,
    kept: frozenset[str] = frozenset(),
    refit: bool = False,
) -> dict[str, Any]:
    """Write one parameter's saved buffers into the template's ``layout`` (validated first).

    Only the buffer names (:func:`is_buffer_name`) of ``entry`` are read: the others are the
    user's own entries, which :func:`parse` keeps apart. Returns the buffers named in ``kept``
    (:func:`._state_names.kept_when_off`) that the layout does not use: they are kept beside the chain.
    ``refit`` (a hyper-parameter change, :func:`refit`): a missing buffer keeps its initial
    value, and a buffer of the right device, dtype and shape is taken by reference.
    """
    if not isinstance(entry, dict):
        raise _fail(i, f'the state of parameter {idx} must be a dict, got {type(entry).__name__}')
    entry, _ = split(entry)
    expected = {_names.export_value(name, torch.zeros(()))[0]: (node, field, name)
                for node, field, name in layout.slots if _names.kept(node, field, param)}  # fmt: skip
    dropped = set(layout.ignored) | {n for _, names, _ in layout.derived for n in names}
    dropped |= {_names.HIDDEN[type(node)][field] for node, field in layout.hidden} - set(expected)
    parked = {k: entry.pop(k) for k in kept & set(entry) - set(expected)}
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
            if entry and not refit:
                raise _fail(i, f'parameter {idx} is missing the state key {key!r}')
            continue
        want = lst[j]
        if field in _names.SCALARS:
            value = _one_number(i, idx, key, entry[key])
        else:
            value = entry[key]
            if not isinstance(value, torch.Tensor):
                value = torch.as_tensor(value)
            if value.shape != want.shape:
                raise _fail(i, f'state {key!r} of parameter {idx} has shape '
                               f'{tuple(value.shape)}, expected {tuple(want.shape)} (the '
                               f'parameter has shape {tuple(param.shape)})')  # fmt: skip
        if name.startswith('step+1'):
            value = value + 1
        if field in _names.SCALARS:
            with torch.no_grad():  # in place: the counts stay views of one vector (_counts)
                want.copy_(value.detach().reshape(want.shape))
        elif refit and (value.dtype, value.device, value.shape) == (
            want.dtype,
            want.device,
            want.shape,
        ):
            lst[j] = value  # the same tensor, as torch.optim keeps it
        else:
            lst[j] = value.detach().to(want.device, want.dtype, copy=True).reshape(want.shape)
    if entry:
        for node, field in layout.hidden:  # the parameter has taken a step
            with torch.no_grad():
                getattr(node, field)[j].fill_(1.0)
    return parked


def _cast_extra(value: Any, param: torch.Tensor) -> Any:
    """A loaded own entry on ``param``'s device (floating tensors in its dtype), copied."""

    def cast(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        floating = param.is_floating_point() and leaf.is_floating_point()
        dtype = param.dtype if floating else leaf.dtype
        return leaf.detach().to(device=param.device, dtype=dtype, copy=True)

    return optree.tree_map(cast, value, none_is_leaf=True)


def _loaded_extras(
    opt: Any, saved_state: dict, groups: list, parked: dict[int, dict[str, Any]]
) -> dict[Any, Any]:
    """A checkpoint's own entries and ``parked`` buffers, by parameter (other keys as they are)."""
    extras: dict[Any, Any] = {}
    indices = set()
    for group, saved in zip(opt.param_groups, groups):
        for idx, param in zip(saved.get('params', ()), group['params']):
            indices.add(idx)
            entry = saved_state.get(idx)
            own = {**parked.get(idx, {}), **(split(entry)[1] if isinstance(entry, dict) else {})}
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
                template = opt.group_impl(i).init(params)
                state = check_tree(i, template, adopt(template, state))
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
    parked: dict[int, dict[str, Any]] = {}
    for i, (group, saved) in enumerate(zip(opt.param_groups, groups)):
        params = tuple(group['params'])
        ids = list(saved.get('params', ()))
        if len(ids) != len(params):
            raise _fail(i, f'the state holds {len(ids)} parameters, the group has {len(params)}')
        template = opt.impl_with(i, saved).init(params)  # the hyper-parameters being loaded
        layout = _names.layout(template, len(params))
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
        kept = _names.kept_when_off(opt, i, saved)
        for j, (idx, entry, param) in enumerate(zip(ids, entries, params)):
            if entry is not None:
                parked[idx] = _import_entry(i, idx, entry, layout, j, param, kept=kept)
        states.append(template)
    return states, [dict(g) for g in groups], _loaded_extras(opt, saved_state, groups, parked)


def refit(opt: Any, i: int, impl: Any) -> tuple | None:
    """Group ``i``'s state moved to the chain ``impl`` by buffer name, as ``torch.optim`` keeps it.

    After a hyper-parameter change that changes the chain's state types (``amsgrad``,
    ``dampening`` from or to 0, ``momentum`` or ``centered`` switched), each buffer goes where
    the new chain keeps a buffer of that name (by reference), a missing one starts at its
    initial value (``max_exp_avg_sq`` at zero, a new momentum buffer as the next gradient), and
    the ones of :func:`._state_names.kept_when_off` that the chain has no place for are kept beside it
    until the hyper-parameter comes back. ``None`` when either state has no layout in
    ``torch.optim``'s names (the caller then matches members by state type).
    """
    group = opt.param_groups[i]
    params = tuple(group['params'])
    old = _names.layout(opt.state_groups[i], len(params))
    template = impl.init(params)
    new = _names.layout(template, len(params))
    if old is None or new is None:
        return None
    extras, kept = extra_state(opt), _names.kept_when_off(opt, i)
    moved = {}
    try:
        for j, param in enumerate(params):
            own = extras.get(param, {})
            entry = {**{k: own[k] for k in kept & set(own)}, **_names.entry(old, j, param, group)}
            if entry:
                moved[param] = _import_entry(i, j, entry, new, j, param, kept=kept, refit=True)
    except ValueError:  # a buffer the new chain cannot hold (not a change torch.optim has)
        return None
    for param, parked in moved.items():
        own = {k: v for k, v in extras.get(param, {}).items() if k not in kept}
        own.update(parked)
        if own:
            extras[param] = own
        else:
            extras.pop(param, None)
    return template


# --- one parameter at a time (``Optimizer.state``, :mod:`torchopt.optim._state_view`) ----------


def import_param(opt: Any, i: int, j: int, entry: dict[str, Any]) -> dict[str, Any]:
    """Load one parameter's buffers (``opt.state[p] = entry``) into the live state, in place.

    The entry is checked as :meth:`load_state_dict` checks one (names, shapes, completeness) on
    a fresh state first, so a bad entry changes nothing; then parameter ``j``'s slot of every
    per-parameter list is copied in, keeping the tensors the optimizer holds. Returns the
    buffers of :func:`._state_names.kept_when_off` the chain has no place for (the caller keeps them).
    """
    params = tuple(opt.param_groups[i]['params'])
    template = opt.group_impl(i).init(params)
    layout = _names.layout(template, len(params))
    if layout is None:
        raise TypeError(
            f'optimizer.state: param group {i} runs a transformation whose state has no '
            "per-parameter layout in torch.optim's names; set it with load_state_dict()"
        )
    idx = sum(len(g['params']) for g in opt.param_groups[:i]) + j
    try:
        parked = _import_entry(
            i, idx, entry, layout, j, params[j], kept=_names.kept_when_off(opt, i)
        )
    except ValueError as error:  # load_state_dict's checks: say where this entry came from
        message = str(error).replace('load_state_dict:', 'optimizer.state:', 1)
        raise ValueError(message) from None
    if isinstance(opt.state_groups[i], UninitializedState):
        opt.state_groups[i] = opt.group_impl(i).init(params)
    copy_param(opt.state_groups[i], template, len(params), j)
    return {key: _cast_extra(value, params[j]) for key, value in parked.items()}


def per_param_lists(state: Any, n: int) -> list[tuple[Any, str]]:
    """``(namedtuple, field)`` of every per-parameter list (length ``n``) in a chain state."""
    found = []
    if hasattr(state, '_fields'):
        for field in state._fields:
            value = getattr(state, field)
            if isinstance(value, list) and len(value) == n:
                found.append((state, field))
            elif isinstance(value, tuple):
                found += per_param_lists(value, n)
    elif isinstance(state, tuple):
        for node in state:
            found += per_param_lists(node, n)
    return found


def regrow(state: Any, fresh: Any, old: tuple, new: tuple) -> Any:
    """``state``, made for the parameters ``old``, fitted to the parameters ``new``.

    Each parameter of ``new`` keeps its entries of ``state`` (by identity, by reference); a
    parameter not in ``old`` takes its entries of ``fresh`` (``init(new)``); the fields that
    are not per-parameter stay ``state``'s.
    """
    where = {id(p): k for k, p in enumerate(old)}
    return _regrown(state, fresh, len(old), [where.get(id(p)) for p in new])


def _regrown(old: Any, fresh: Any, n_old: int, mapping: list[int | None]) -> Any:
    """``old``, a state of ``n_old`` parameters, fitted to a new list of parameters.

    New parameter ``j`` takes ``old``'s per-parameter entries at ``mapping[j]``, or ``fresh``'s
    where that is ``None``; the other fields stay ``old``'s.
    """
    if isinstance(old, tuple) and hasattr(old, '_fields'):
        fields = {}
        for name in old._fields:
            value, initial = getattr(old, name), getattr(fresh, name)
            if isinstance(value, list) and len(value) == n_old and isinstance(initial, list):
                value = [initial[j] if k is None else value[k] for j, k in enumerate(mapping)]
            elif isinstance(value, tuple):
                value = _regrown(value, initial, n_old, mapping)
            fields[name] = value
        return type(old)(**fields)
    if isinstance(old, tuple):
        return tuple(_regrown(o, f, n_old, mapping) for o, f in zip(old, fresh))
    return old


def copy_param(state: Any, source: Any, n: int, j: int) -> None:
    """Copy parameter ``j``'s entries of ``source`` (same structure) into ``state``, in place."""
    with torch.no_grad():
        for (node, field), (other, _) in zip(per_param_lists(state, n),
                                             per_param_lists(source, n)):  # fmt: skip
            current, new = getattr(node, field), getattr(other, field)
            if isinstance(current[j], torch.Tensor) and isinstance(new[j], torch.Tensor):
                current[j].copy_(new[j])
            else:
                current[j] = new[j]
