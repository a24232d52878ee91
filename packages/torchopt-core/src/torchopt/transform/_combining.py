"""A different transformation per labelled subset of the parameters, and freezing.

:func:`partition` (optax's name; :func:`multi_transform` is its older spelling) runs each
transformation on the flat list of the leaves that carry its label, so every member keeps its
fast paths; :func:`freeze` and :func:`selective_transform` are built on it and on
:func:`~torchopt.transform.masked`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Callable, NamedTuple

import optree

from torchopt.base import GradientTransformation
from torchopt.transform._elementwise import set_to_zero
from torchopt.transform._flat import FlatTransformation, as_flat, put
from torchopt.transform._masking import masked

__all__ = [
    'MultiTransformState',
    'PartitionState',
    'freeze',
    'multi_transform',
    'partition',
    'selective_transform',
]


class PartitionState(NamedTuple):
    """State of :func:`partition`: ``{label: state of that label's transformation}``."""

    inner_states: dict


MultiTransformState = PartitionState


def _labels(param_labels: Any, leaves: list, treespec: optree.PyTreeSpec) -> list:
    """One label per leaf: ``param_labels`` (a prefix tree of labels, or a callable) broadcast."""
    labels = param_labels(treespec.unflatten(leaves)) if callable(param_labels) else param_labels
    try:
        full = optree.tree_broadcast_prefix(labels, treespec.unflatten(leaves), none_is_leaf=True)
    except ValueError as ex:
        raise ValueError(
            f'`param_labels` must be a tree prefix of the params ({treespec}): {ex}'
        ) from ex
    return treespec.flatten_up_to(full)


def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Any], Any],
) -> FlatTransformation:
    """Apply a different transformation to each labelled subset of the parameters.

    Each leaf of the params carries a label; ``transforms[label]`` sees only the leaves with that
    label (as a flat list, so its state holds only theirs). For Adam on the weights and SGD on
    the biases::

        labels = {'w': 'adam', 'b': 'sgd'}
        opt = torchopt.partition({'adam': torchopt.adam(1e-3), 'sgd': torchopt.sgd(1e-2)}, labels)

    Args:
        transforms: ``{label: transformation}``.
        param_labels: a tree of labels that is a prefix of the params (``('gen', 'disc')`` for a
            pair of sub-trees), or a callable returning one (called on the params at ``init``
            and on the updates at ``update``).

    Raises:
        ValueError: when a leaf's label has no transformation.

    Reference: optax ``partition`` (formerly ``multi_transform``).
    """
    transforms = dict(transforms)
    flats = {label: as_flat(t) for label, t in transforms.items()}

    def groups(leaves: list, treespec: optree.PyTreeSpec) -> dict[Hashable, list[int]]:
        labels = _labels(param_labels, leaves, treespec)
        unknown = {lb for lb in labels if lb not in transforms}
        if unknown:
            raise ValueError(
                'partition: some parameters have no corresponding transformation.\n'
                f'Parameter labels: {sorted(map(repr, set(labels)))}\n'
                f'Transforms keys: {sorted(map(repr, transforms))}'
            )
        out: dict[Hashable, list[int]] = {label: [] for label in transforms}
        for i, lb in enumerate(labels):
            out[lb].append(i)
        return out

    def init_fn(params: list, treespec: Any) -> PartitionState:
        states = {}
        for label, idx in groups(params, treespec).items():
            sub = [params[i] for i in idx]
            states[label] = flats[label][0](sub, optree.tree_structure(sub, none_is_leaf=True))
        return PartitionState(inner_states=states)

    def update_fn(
        updates: list,
        state: PartitionState,
        *,
        params: list | None = None,
        inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, PartitionState]:
        if treespec is None:
            treespec = optree.tree_structure(updates, none_is_leaf=True)
        new_states = dict(state.inner_states)
        out = list(updates)
        for label, idx in groups(updates, treespec).items():
            sub = [updates[i] for i in idx]
            if all(u is None for u in sub):  # nothing to do (also: no leaf has this label)
                continue
            sub_params = None if params is None else [params[i] for i in idx]
            new_sub, new_states[label] = flats[label][1](
                sub,
                state.inner_states[label],
                params=sub_params,
                inplace=inplace,
                treespec=optree.tree_structure(sub, none_is_leaf=True),
            )
            out = put(out, idx, list(new_sub))
        return out, PartitionState(inner_states=new_states)

    return FlatTransformation(init_fn, update_fn, f'partition({sorted(map(repr, transforms))})')


def multi_transform(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Any], Any],
) -> FlatTransformation:
    """The older name of :func:`partition` (optax ``multi_transform``)."""
    return partition(transforms, param_labels)


def freeze(mask: Any) -> FlatTransformation:
    """Zero the updates of the leaves where ``mask`` is true, so those parameters stay fixed.

    Args:
        mask: ``True``/``False`` for every leaf, a tree of booleans that is a prefix of the
            params, or a callable returning one.

    Reference: optax ``freeze``.
    """
    return masked(set_to_zero(), mask)


def selective_transform(
    optimizer: GradientTransformation, *, freeze_mask: Any
) -> FlatTransformation:
    """Run ``optimizer`` on the leaves where ``freeze_mask`` is false and zero the others.

    Unlike ``chain(freeze(mask), optimizer)``, the frozen leaves never reach ``optimizer``: it
    keeps no state for them and its weight decay or momentum cannot move them.

    Args:
        optimizer: the transformation for the trainable leaves.
        freeze_mask: ``True``/``False``, or a tree of booleans that is a prefix of the params
            (true = frozen).

    Reference: optax ``selective_transform``.
    """
    labels = optree.tree_map(lambda m: 'freeze' if m else 'train', freeze_mask)
    return partition({'train': optimizer, 'freeze': set_to_zero()}, labels)
