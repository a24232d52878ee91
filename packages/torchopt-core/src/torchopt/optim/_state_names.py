"""How a chain state reads in ``torch.optim``'s buffer names.

A group's state is a chain of NamedTuples holding per-parameter lists. :data:`NAMES` maps each
known state class's fields to ``torch.optim``'s buffer names; :func:`layout` finds them in a
chain state and :func:`entry` reads one parameter's buffers under those names. Checkpoints
(:mod:`._state_dict`) and ``opt.state`` (:mod:`._state_view`) are built on this.
"""

from __future__ import annotations

import re
from typing import Any

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
    'HIDDEN',
    'KEPT_WHEN_OFF',
    'NAMES',
    'SCALARS',
    'Layout',
    'entry',
    'export_value',
    'is_buffer_name',
    'kept',
    'kept_when_off',
    'layout',
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
SCALARS = {'count', 't', 'mu_product'}

# Fields torch.optim does not keep, with the name older torchopt checkpoints gave them: not
# exported, and set to 1 for a loaded parameter (SGD's dampened momentum only asks whether a
# parameter has taken a step: its momentum buffer is then in the checkpoint).
HIDDEN: dict[type, dict[str, str]] = {DampenedTraceState: {'count': 'step'}}

# States whose torch.optim counterpart keeps a ``step`` it counts but never reads (RMSprop,
# Adadelta), while the state (TorchOpt 0.7's layout) has no count: when nothing else in the
# chain counts the steps (a schedule does), ``step`` is written as 1 (the parameter has taken
# a step; the true number is not known) and ignored when loaded.
_UNCOUNTED = (ScaleByRmsState, ScaleByRStdDevState, ScaleByAdadeltaState)

# Buffers torch.optim keeps while the hyper-parameter that uses them is off (SGD's and RMSprop's
# ``momentum`` 0, ``amsgrad`` False, ``centered`` False) and uses again when it is switched back
# on. The chain then has no place for them: they are kept beside it, with the user's own entries
# (:func:`extra_state`), shown in ``opt.state[p]``, saved and loaded under their names.
KEPT_WHEN_OFF = frozenset({'momentum_buffer', 'max_exp_avg_sq', 'grad_avg'})
_SWITCHED_ON = {'momentum': 0.9, 'amsgrad': True, 'centered': True}


def kept_when_off(opt: Any, i: int, saved: Any = ()) -> frozenset[str]:
    """The buffers of :data:`KEPT_WHEN_OFF` that group ``i`` of ``opt`` has with its switches on.

    ``saved`` overrides the group's hyper-parameters (a checkpoint's). Another optimizer's
    buffers stay refused: ``torchopt.Adam`` keeps a ``max_exp_avg_sq``, not a momentum buffer.
    """
    hyper = getattr(opt, '_hyper', ())
    group = {**opt.param_groups[i], **{k: v for k, v in dict(saved).items() if k in hyper}}
    on = {k: v for k, v in _SWITCHED_ON.items() if k in hyper and not group[k]}
    # The names do not depend on the sizes: one-element stand-ins (same dim, dtype, device).
    params = tuple(p.new_zeros((1,) * p.dim()) for p in group['params'])
    try:
        found = layout(opt._build({**group, **on})[1].init(params), len(params))
    except Exception:  # noqa: BLE001  (a combination the class refuses: nothing is kept)
        return frozenset()
    names = {name for _, _, name in found.slots} if found is not None else set()
    return KEPT_WHEN_OFF & names


# Every buffer name a known optimizer's state has (``_1``-style suffixes aside): reserved.
_BUFFER_NAMES = frozenset(
    {name.replace('step+1', 'step') for names in NAMES.values() for name in names.values()}
    | {name for names in HIDDEN.values() for name in names.values()}
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


class Layout:
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


def layout(state: Any, n: int) -> Layout | None:
    """The :class:`Layout` of a chain state, or ``None``.

    ``None`` when some part of the state is not described by :data:`NAMES` (it is then stored
    as it is). Names that repeat within a chain (two step counts) get a ``_1``, ``_2`` suffix.
    """
    out = Layout()
    used: dict[str, int] = {}
    uncounted = False

    def walk(node: Any) -> bool:
        nonlocal uncounted
        if isinstance(node, (EmptyState, UninitializedState)):
            return True
        if type(node) in NAMES:
            names, hidden = NAMES[type(node)], HIDDEN.get(type(node), {})
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


def export_value(name: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
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


def kept(node: Any, field: str, param: torch.Tensor) -> bool:
    """Whether ``torch.optim`` keeps ``field`` of ``node`` for ``param``."""
    fields = _PER_PARAM.get(type(node))
    return fields is None or field in fields(param)


def entry(layout: Layout, j: int, param: torch.Tensor, group: dict) -> dict[str, Any]:
    """Parameter ``j``'s buffers under ``torch.optim``'s names (empty before its first step)."""
    out = {}
    for node, field, name in layout.slots:
        value = getattr(node, field)[j]
        if value is None or not _started(node, j) or not kept(node, field, param):
            continue
        key, value = export_value(name, value)
        out[key] = value
    for node, _, fn in layout.derived:
        if _started(node, j) and node.count[j] is not None:
            out.update(fn(node.count[j], group))
    if out and layout.synth_step:
        out['step'] = torch.ones((), dtype=torch.float32)
    return out
