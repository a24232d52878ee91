"""Transformations defined once, on flat lists of leaves.

Every built-in transformation is a :class:`FlatTransformation`: its math is written against
flat lists of tensors (``None`` for a leaf without a gradient) so it can use ``torch._foreach_*``
ops. Its ``init``/``update`` fields accept any pytree: they flatten, run the flat functions and
unflatten. :func:`torchopt.combine.chain_flat` (used by every optimizer alias) composes the flat
functions directly, so a step flattens the pytrees exactly once.

The flat functions receive the params treespec so that tree-shaped arguments (masks) can be
aligned with the leaves.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import optree
import torch

from torchopt import _foreach as _fe

from torchopt.base import GradientTransformation

__all__ = ['FlatTransformation', 'flatten_updates', 'present_indices', 'take', 'put']

FlatInit = Callable[[list, optree.PyTreeSpec], Any]
FlatUpdate = Callable[..., tuple[list, Any]]


def flatten_updates(
    updates: Any, params: Any | None
) -> tuple[list, list | None, optree.PyTreeSpec]:
    """Flatten ``updates`` (``None`` is a leaf) and ``params`` along the same structure."""
    leaves, treespec = optree.tree_flatten(updates, none_is_leaf=True)
    if params is None:
        return leaves, None, treespec
    try:
        param_leaves = treespec.flatten_up_to(params)
    except ValueError as ex:
        raise ValueError(
            f'`params` must have the same tree structure as `updates` ({treespec}): {ex}'
        ) from ex
    return leaves, param_leaves, treespec


class FlatTransformation(GradientTransformation):
    """A :class:`GradientTransformation` implemented on flat lists of leaves."""

    flat_init: FlatInit
    flat_update: FlatUpdate
    name: str

    def __new__(cls, flat_init: FlatInit, flat_update: FlatUpdate, name: str = '') -> Any:
        def init_fn(params: Any) -> Any:
            leaves, treespec = optree.tree_flatten(params, none_is_leaf=True)
            return flat_init(leaves, treespec)

        def update_fn(
            updates: Any, state: Any, *, params: Any | None = None, inplace: bool = True
        ) -> tuple[Any, Any]:
            leaves, param_leaves, treespec = flatten_updates(updates, params)
            new_leaves, state = flat_update(
                leaves, state, params=param_leaves, inplace=inplace, treespec=treespec
            )
            return treespec.unflatten(new_leaves), state

        instance = super().__new__(cls, init_fn, update_fn)
        instance.flat_init = flat_init
        instance.flat_update = flat_update
        instance.name = name or getattr(flat_update, '__qualname__', 'transformation')
        return instance

    def __repr__(self) -> str:
        return f'{self.name}'

    def __reduce__(self) -> Any:
        return FlatTransformation, (self.flat_init, self.flat_update, self.name)


def as_flat(transformation: GradientTransformation) -> tuple[FlatInit, FlatUpdate]:
    """The flat functions of ``transformation`` (a user transform sees the lists as its tree)."""
    if isinstance(transformation, FlatTransformation):
        return transformation.flat_init, transformation.flat_update

    def flat_init(leaves: list, treespec: optree.PyTreeSpec) -> Any:  # noqa: ARG001
        return transformation.init(leaves)

    def flat_update(
        leaves: list, state: Any, *, params: list | None, inplace: bool, treespec: Any
    ) -> tuple[list, Any]:
        del treespec
        new, state = transformation.update(leaves, state, params=params, inplace=inplace)
        return list(new), state

    return flat_init, flat_update


def present_indices(updates: Sequence[torch.Tensor | None]) -> list[int] | None:
    """Indices of the non-``None`` leaves, or ``None`` when every leaf is present."""
    for u in updates:
        if u is None:
            return [i for i, v in enumerate(updates) if v is not None]
    return None


def take(values: Sequence[Any], idx: list[int] | None) -> list:
    """``values`` restricted to ``idx`` (all of them when ``idx`` is ``None``)."""
    return list(values) if idx is None else [values[i] for i in idx]


def put(full: Sequence[Any], idx: list[int] | None, values: list) -> list:
    """A copy of ``full`` with the positions ``idx`` replaced by ``values``."""
    if idx is None:
        return values
    out = list(full)
    for i, v in zip(idx, values):
        out[i] = v
    return out
