"""Decoupled weight decay and masking of transformations to a subset of leaves."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from torchopt import _checks
from torchopt import _foreach as _fe
from torchopt.base import GradientTransformation, identity
from torchopt.transform._flat import (
    FlatTransformation,
    as_flat,
    fields_as_flat,
    fields_as_tree,
    put,
    stateless,
)

__all__ = ['MaskedNode', 'MaskedState', 'masked', 'add_decayed_weights']


class MaskedNode(NamedTuple):
    """An empty subtree standing for a leaf that a mask leaves out."""


class MaskedState(NamedTuple):
    """State of :func:`masked`: the inner transformation's state (over the masked-in leaves).

    Used on its own or in :func:`~torchopt.chain`, the inner state's per-leaf fields are shaped
    like the params with a :class:`MaskedNode` at each leaf left out, as TorchOpt 0.7 has them;
    inside ``chain.flat`` they are lists of the masked-in leaves.
    """

    inner_state: Any


def _mask_leaves(mask: Any, leaves: list, treespec: optree.PyTreeSpec) -> list[bool]:
    """Evaluate ``mask`` (a bool tree prefix of the params, or a callable) against the leaves."""
    if callable(mask):
        mask = mask(treespec.unflatten(leaves))
    try:
        full = optree.tree_broadcast_prefix(mask, treespec.unflatten(leaves), none_is_leaf=True)
    except ValueError as ex:
        raise ValueError(f'`mask` must be a tree prefix of the params ({treespec}): {ex}') from ex
    return [bool(m) for m in treespec.flatten_up_to(full)]


def masked(inner: GradientTransformation, mask: Any = None) -> FlatTransformation:
    """Apply ``inner`` only to the leaves where ``mask`` is true; other leaves pass through.

    Args:
        inner: the transformation to mask.
        mask: a tree of booleans that is a prefix of the params, or a callable returning one
            (evaluated on the params at ``init`` and on the updates at ``update``).
    """
    inner_init, inner_update = as_flat(inner)

    def init_fn(params: list, treespec: Any) -> MaskedState:
        sel = [i for i, m in enumerate(_mask_leaves(mask, params, treespec)) if m]
        sub = [params[i] for i in sel]
        return MaskedState(inner_state=inner_init(sub, optree.tree_structure(sub)))

    def update_fn(
        updates: list,
        state: MaskedState,
        *,
        params: list | None = None,
        inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, MaskedState]:
        sel = [i for i, m in enumerate(_mask_leaves(mask, updates, treespec)) if m]
        sub = [updates[i] for i in sel]
        sub_params = None if params is None else [params[i] for i in sel]
        new_sub, inner_state = inner_update(
            sub,
            state.inner_state,
            params=sub_params,
            inplace=inplace,
            treespec=optree.tree_structure(sub, none_is_leaf=True),
        )
        return put(updates, sel, list(new_sub)), MaskedState(inner_state=inner_state)

    def to_tree(state: Any, leaves: list, treespec: Any, name: str) -> Any:
        if not isinstance(state, MaskedState):
            return state
        sel = [i for i, m in enumerate(_mask_leaves(mask, leaves, treespec)) if m]
        return MaskedState(inner_state=fields_as_tree(state.inner_state, treespec, sel))

    def to_flat(state: Any, leaves: list, treespec: Any, name: str) -> Any:
        if not isinstance(state, MaskedState):
            return state
        sel = [i for i, m in enumerate(_mask_leaves(mask, leaves, treespec)) if m]
        return MaskedState(inner_state=fields_as_flat(state.inner_state, treespec, name, sel))

    return FlatTransformation(
        init_fn, update_fn, f'masked({inner!r})',
        requires_params=getattr(inner, 'requires_params', None),
        tree_form=(to_tree, to_flat) if getattr(inner, 'tree_state', False) else None,
    )  # fmt: skip


def add_decayed_weights(weight_decay: float = 0.0, mask: Any = None) -> GradientTransformation:
    r"""Add decoupled weight decay: :math:`u = g + \lambda p` (needs ``params`` at update).

    Args:
        weight_decay: :math:`\lambda \ge 0`.
        mask: optional leaf mask (see :func:`masked`); leaves outside it are not decayed.
    """
    _checks.check_nonnegative('weight_decay value', weight_decay)
    if weight_decay == 0.0 and mask is None:
        return identity()

    def step(g: list, p: list | None, inplace: bool) -> list:
        if weight_decay == 0.0:
            return g
        if inplace:
            with torch.no_grad():
                _fe.add_(g, p, alpha=weight_decay)
            return g
        return _fe.add(g, p, alpha=weight_decay)

    plain = stateless(
        f'add_decayed_weights({weight_decay!r})',
        step,
        requires_params=_checks.PARAMS_FOR_WEIGHT_DECAY,
        accepts_sparse=True,
    )
    return plain if mask is None else masked(plain, mask)
