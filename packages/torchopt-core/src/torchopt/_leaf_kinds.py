"""Complex parameters and sparse gradients, handled as ``torch.optim`` handles them.

**Complex.** ``torch.optim`` runs every optimizer that accepts complex parameters on
``torch.view_as_real`` views of the parameter, its gradient and its state, so that Adam keeps one
second moment for the real part and one for the imaginary part (``|g|²`` would mix them, and
``g * g`` of a complex ``g`` is not a second moment at all). The built-in transformations do
the same here, once per ``update`` (:func:`run`): the complex leaves of the updates, the
parameters and the state are viewed as real, the flat math runs on the views (fused kernels
included), and the results are viewed back. The state stays complex, shaped like the
parameters, as ``torch.optim``'s is, so checkpoints move between the two. In-place updates write
through the views into the caller's tensors; the views are differentiable, so are the
out-of-place updates.

**Sparse.** ``torch.optim``'s SGD (with momentum) and Adagrad take sparse gradients
(``nn.Embedding(sparse=True)``); the others refuse them. A transformation declared
``accepts_sparse`` (momentum, Adagrad's accumulator, scaling, weight decay: their math on the
dense gradient gives ``torch.optim``'s sparse result exactly) runs on a dense copy of a sparse
gradient, and its update is dense (the gradient itself is never written); the others raise a
``TypeError`` naming the leaf before anything is written.

:func:`special` is the one scan an update pays for this (a chain with a fused step pays it only
when the fused kernel declined the tensors).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import optree
import torch

from torchopt import _dispatch

__all__ = [
    'any_complex',
    'as_real',
    'back',
    'check_real',
    'run',
    'special',
    'state_as_real',
    'state_back',
]


_COMPLEX = frozenset({torch.complex32, torch.complex64, torch.complex128})
_DTYPE = attrgetter('dtype')
_KIND = attrgetter('dtype', 'layout')


def special(leaves: list) -> bool:
    """Whether any tensor in ``leaves`` (``None`` allowed) is complex or not strided (sparse)."""
    if not _dispatch.compiling():  # the C getter is faster; dynamo does not trace it
        try:
            kinds = set(map(_KIND, leaves))
        except AttributeError:  # a None leaf (a missing gradient)
            kinds = {(t.dtype, t.layout) for t in leaves if t is not None}
        return any(d in _COMPLEX or layout is not torch.strided for d, layout in kinds)
    return any(t is not None and (t.is_complex() or t.is_sparse) for t in leaves)


def _densify(name: str, accepts_sparse: bool, leaves: list, what: str, treespec: Any) -> list:
    """``leaves`` with sparse tensors made dense, or ``TypeError`` when ``name`` refuses them."""
    out = list(leaves)
    for i, x in enumerate(leaves):
        if x is None or x.layout is torch.strided:
            continue
        if not accepts_sparse or what == 'parameter':
            raise TypeError(
                f'{name} does not support sparse {what}s, but {_dispatch._leaf(i, treespec)} '
                f'has layout {x.layout}; as in torch.optim, SGD and Adagrad take sparse '
                'gradients (torch.optim.SparseAdam is the lazy Adam for them)'
            )
        out[i] = x.to_dense()
    return out


def run(
    flat_update: Any,
    name: str,
    accepts_sparse: bool,
    leaves: list,
    state: Any,
    params: list | None,
    inplace: bool,
    treespec: Any,
) -> tuple[list, Any]:
    """``flat_update`` on leaves that :func:`special` flagged: densified, complex ones as real."""
    leaves = _densify(name, accepts_sparse, leaves, 'gradient', treespec)
    if params is not None:
        params = _densify(name, accepts_sparse, params, 'parameter', treespec)
    if not any_complex(leaves):
        return flat_update(leaves, state, params=params, inplace=inplace, treespec=treespec)
    views = as_real(leaves)
    real_state, originals, state_views = state_as_real(state)
    new_leaves, new_state = flat_update(
        views,
        real_state,
        params=None if params is None else as_real(params),
        inplace=inplace,
        treespec=treespec,
    )
    return back(new_leaves, leaves, views), state_back(new_state, originals, state_views)


def any_complex(leaves: list) -> bool:
    """Whether any tensor in ``leaves`` (``None`` allowed) is complex."""
    if not _dispatch.compiling():  # the C getter halves the cost; dynamo does not trace it
        try:
            return not _COMPLEX.isdisjoint(map(_DTYPE, leaves))
        except AttributeError:  # a None leaf (a missing gradient)
            pass
    return any(t is not None and t.is_complex() for t in leaves)


def check_real(name: str, params: list, treespec: Any = None) -> None:
    """Raise a ``TypeError`` naming the first complex leaf: ``name`` has no complex form.

    For the transformations whose state is not shaped like the parameter (Adafactor's factored
    moments) or whose math is defined on real matrices (Muon), as ``torch.optim`` refuses them.
    """
    for i, x in enumerate(params):
        if x is not None and x.is_complex():
            raise TypeError(
                f'{name} does not support complex parameters, but {_dispatch._leaf(i, treespec)} is '
                f'{x.dtype}; as torch.optim, optimize it with another optimizer (or as two real '
                'parameters, torch.view_as_real)'
            )


def _real(x: Any) -> Any:
    return torch.view_as_real(x) if isinstance(x, torch.Tensor) and x.is_complex() else x


def as_real(leaves: list) -> list:
    """``leaves`` with every complex tensor replaced by its ``view_as_real`` view."""
    return [_real(x) for x in leaves]


def _complex(new: Any, original: Any, view: Any) -> Any:
    """``new`` (computed from ``view``, the real view of ``original``) as a complex tensor."""
    if new is view:
        return original  # updated in place through the view: the caller's own tensor
    if isinstance(new, torch.Tensor) and not new.is_complex() and new.shape[-1:] == (2,):
        return torch.view_as_complex(new if new.stride(-1) == 1 else new.contiguous())
    return new


def back(new: list, originals: list, views: list) -> list:
    """``new`` leaves with those computed for complex ``originals`` viewed as complex again."""
    return [
        _complex(n, o, v) if isinstance(o, torch.Tensor) and o.is_complex() else n
        for n, o, v in zip(new, originals, views)
    ]


def state_as_real(state: Any) -> tuple[Any, list, list]:
    """``state`` with its complex tensors viewed as real, and its original and viewed leaves."""
    leaves, spec = optree.tree_flatten(state, none_is_leaf=True)
    views = [_real(x) for x in leaves]
    return spec.unflatten(views), leaves, views


def state_back(new_state: Any, originals: list, views: list) -> Any:
    """The state after an update on real views, its formerly complex tensors complex again."""
    leaves, spec = optree.tree_flatten(new_state, none_is_leaf=True)
    if len(leaves) != len(originals):  # a state of another structure: nothing to map back
        return new_state
    return spec.unflatten(back(leaves, originals, views))
