"""Transformations defined once, on flat lists of leaves.

Every built-in transformation is a :class:`FlatTransformation`: its math is written against
flat lists of tensors (``None`` for a leaf without a gradient) so it can use ``torch._foreach_*``
ops. Its ``init``/``update`` fields accept any pytree: they flatten, run the flat functions and
unflatten. :func:`torchopt.combine.chain_flat` (used by every optimizer alias) composes the flat
functions directly, so a step flattens the pytrees exactly once.

A state made by :func:`stateful` (every field a list with one entry per leaf) is returned by
``init``/``update`` shaped like the params, as TorchOpt 0.7 and optax return it:
``scale_by_adam().init({'a': a, 'b': b}).mu`` is ``{'a': ..., 'b': ...}``. A flat sequence of
leaves (a list or tuple, the form the optimizer classes and :func:`chain_flat` pass) keeps
its flat lists, and the ``.flat`` variant of a factory (:func:`with_flat_variant`) always
does.

The flat functions receive the params treespec so that tree-shaped arguments (masks) can be
aligned with the leaves.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable

import optree
import torch

from torchopt import _checks, _dispatch, _leaf_kinds
from torchopt.base import EmptyState, GradientTransformation

__all__ = [
    'FlatTransformation',
    'fields_as_flat',
    'fields_as_tree',
    'flat_variant',
    'flatten_updates',
    'present_indices',
    'put',
    'stateful',
    'stateless',
    'take',
    'with_flat_variant',
]

FlatInit = Callable[[list, optree.PyTreeSpec], Any]
FlatUpdate = Callable[..., tuple[list, Any]]
#: ``(to_tree, to_flat)``: each ``(state, leaves, treespec, name) -> state``.
TreeForm = tuple[Callable[[Any, list, Any, str], Any], Callable[[Any, list, Any, str], Any]]


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
    """A :class:`GradientTransformation` implemented on flat lists of leaves.

    ``flat_check(updates, state, treespec)`` (optional) validates a state against the updates
    without touching anything, and ``flat_unchecked`` is ``flat_update`` without that check: a
    chain checks every member first, so that a bad state raises before any member has written.

    ``tree_form`` (set by :func:`stateful` and :func:`~torchopt.transform.masked`) is the pair
    ``(to_tree, to_flat)``, each ``(state, leaves, treespec, name) -> state``, with which
    ``init`` and ``update`` return the state's per-leaf lists shaped like the params and take
    them back (see the module docstring); ``tree_state`` says whether there is one.

    ``update`` handles complex and sparse leaves (:mod:`torchopt._leaf_kinds`) before the flat
    functions see them; ``accepts_sparse`` says whether the math takes a sparse gradient made
    dense (``torch.optim``'s SGD and Adagrad do), and ``own_leaf_kinds`` that ``flat_update``
    handles them itself (a chain does, after trying its fused kernel). ``requires_params`` is
    the message of the error ``update`` raises without ``params`` (``None``: they are optional),
    so that a chain raises it before any member has written.
    """

    flat_init: FlatInit
    flat_update: FlatUpdate
    flat_check: Callable[[list, Any, Any], Any] | None
    flat_unchecked: FlatUpdate | None
    accepts_sparse: bool
    requires_params: str | None
    name: str
    tree_form: TreeForm | None
    own_leaf_kinds: bool

    def __new__(
        cls,
        flat_init: FlatInit,
        flat_update: FlatUpdate,
        name: str = '',
        *,
        check: Callable[[list, Any, Any], Any] | None = None,
        unchecked: FlatUpdate | None = None,
        accepts_sparse: bool = False,
        own_leaf_kinds: bool = False,
        requires_params: str | None = None,
        tree_form: TreeForm | None = None,
    ) -> Any:
        def init_fn(params: Any) -> Any:
            leaves, treespec = optree.tree_flatten(params, none_is_leaf=True)
            state = flat_init(leaves, treespec)
            if tree_form is None or not _shaped(params, treespec):
                return state
            return tree_form[0](state, leaves, treespec, instance.name)

        def update_fn(
            updates: Any, state: Any, *, params: Any | None = None, inplace: bool = True
        ) -> tuple[Any, Any]:
            leaves, param_leaves, treespec = flatten_updates(updates, params)
            shaped = tree_form is not None and _shaped(updates, treespec)
            if shaped:
                state = tree_form[1](state, leaves, treespec, instance.name)  # type: ignore[index]
            if inplace:  # an expand-ed leaf cannot take the update: it gets a copy
                leaves = _dispatch.writable(leaves)
            if not own_leaf_kinds and _leaf_kinds.special(leaves):  # complex or sparse
                new_leaves, state = _leaf_kinds.run(
                    flat_update, instance.name, accepts_sparse, leaves, state, param_leaves,
                    inplace, treespec,
                )  # fmt: skip
            else:
                new_leaves, state = flat_update(
                    leaves, state, params=param_leaves, inplace=inplace, treespec=treespec
                )
            if shaped:
                state = tree_form[0](state, leaves, treespec, instance.name)  # type: ignore[index]
            return treespec.unflatten(new_leaves), state

        instance = super().__new__(cls, init_fn, update_fn)
        instance.flat_init = flat_init
        instance.flat_update = flat_update
        instance.flat_check = check
        instance.flat_unchecked = unchecked
        instance.accepts_sparse = accepts_sparse
        instance.requires_params = requires_params
        instance.name = name or getattr(flat_update, '__qualname__', 'transformation')
        instance.tree_form = tree_form
        instance.own_leaf_kinds = own_leaf_kinds
        return instance

    @property
    def tree_state(self) -> bool:
        """Whether ``init``/``update`` return the state shaped like the params."""
        return self.tree_form is not None

    def __repr__(self) -> str:
        return f'{self.name}'

    def __reduce__(self) -> Any:
        return _rebuild, (
            self.flat_init, self.flat_update, self.name, self.accepts_sparse, self.tree_form
        )  # fmt: skip


def _rebuild(
    flat_init: FlatInit,
    flat_update: FlatUpdate,
    name: str,
    accepts_sparse: bool,
    tree_form: TreeForm | None = None,
) -> FlatTransformation:
    return FlatTransformation(
        flat_init, flat_update, name, accepts_sparse=accepts_sparse, tree_form=tree_form
    )


def _shaped(tree: Any, treespec: optree.PyTreeSpec) -> bool:
    """Whether a state is returned shaped like ``tree`` (``treespec`` is its structure).

    Not for a flat list or tuple of leaves (the lists are already that shape) nor for a single
    leaf, where a per-leaf field could not be told from a tensor field such as a random key.
    (``type(tree)`` rather than ``treespec.kind``, which ``torch.compile`` does not trace.)
    """
    if type(tree) in (list, tuple):
        return treespec.num_nodes != treespec.num_leaves + 1
    return treespec.num_nodes > 1


def fields_as_tree(state: Any, treespec: optree.PyTreeSpec, where: list[int] | None = None) -> Any:
    r"""``state`` (a NamedTuple) with its per-leaf lists shaped like ``treespec``.

    With ``where`` the lists hold the leaves at those indices only (a mask's), and the others
    become :class:`~torchopt.transform.MaskedNode`\ s, as TorchOpt 0.7's ``masked`` has them.
    """
    if not optree.is_namedtuple_instance(state):
        return state
    n = treespec.num_leaves if where is None else len(where)

    def shaped(values: list) -> Any:
        if where is None:
            return treespec.unflatten(values)
        from torchopt.transform._masking import MaskedNode

        out: list = [MaskedNode()] * treespec.num_leaves
        for i, v in zip(where, values):
            out[i] = v
        return treespec.unflatten(out)

    return state._replace(**{
        f: shaped(v) for f, v in zip(state._fields, state) if isinstance(v, list) and len(v) == n
    })  # fmt: skip


def fields_as_flat(
    state: Any, treespec: optree.PyTreeSpec, name: str, where: list[int] | None = None
) -> Any:
    """The inverse of :func:`fields_as_tree`.

    A field shaped like ``treespec`` is flattened (also a list of lists when the params are
    one); a list of one entry per leaf (a state kept flat, or saved by an older version) and a
    tensor (a random key) are taken as they are; any other field raises a ``ValueError`` that
    names it.
    """
    if not optree.is_namedtuple_instance(state):
        return state
    fields = {}
    n = treespec.num_leaves if where is None else len(where)
    for f, v in zip(state._fields, state):
        if isinstance(v, torch.Tensor):
            continue
        try:
            entries = treespec.flatten_up_to(v)
            fields[f] = entries if where is None else [entries[i] for i in where]
        except (ValueError, TypeError) as ex:
            if isinstance(v, list) and len(v) == n:
                continue
            raise ValueError(
                f'{name}: `state.{f}` must be shaped like the updates ({treespec}), or be a '
                f'list of one entry per leaf: {ex}'
            ) from ex
    return state._replace(**fields) if fields else state


def _stateful_to_tree(state: Any, leaves: list, treespec: Any, name: str) -> Any:
    return fields_as_tree(state, treespec)


def _stateful_to_flat(state: Any, leaves: list, treespec: Any, name: str) -> Any:
    return fields_as_flat(state, treespec, name)


_STATEFUL_FORM: TreeForm = (_stateful_to_tree, _stateful_to_flat)


def flat_variant(transformation: Any) -> Any:
    """``transformation`` with its state kept as flat lists (TorchOpt 0.7's ``f.flat(...)``)."""
    if not (isinstance(transformation, FlatTransformation) and transformation.tree_state):
        return transformation
    t = transformation
    return FlatTransformation(
        t.flat_init, t.flat_update, t.name, check=t.flat_check, unchecked=t.flat_unchecked,
        accepts_sparse=t.accepts_sparse, own_leaf_kinds=t.own_leaf_kinds,
        requires_params=t.requires_params,
    )  # fmt: skip


def with_flat_variant(factory: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``factory`` TorchOpt 0.7's attributes ``factory.flat`` and ``factory.impl``.

    ``factory.flat(*args, **kwargs)`` is ``factory(*args, **kwargs)`` with its state kept as
    flat lists whatever the tree; ``factory.impl(*args, already_flattened=False, **kwargs)``
    chooses between the two.
    """

    @functools.wraps(factory)
    def flat(*args: Any, **kwargs: Any) -> Any:
        return flat_variant(factory(*args, **kwargs))

    def impl(*args: Any, already_flattened: bool = False, **kwargs: Any) -> Any:
        return (flat if already_flattened else factory)(*args, **kwargs)

    impl.__doc__ = (
        f'``{factory.__name__}`` itself, or its ``.flat`` variant when ``already_flattened``.'
    )
    factory.flat = flat  # type: ignore[attr-defined]
    factory.impl = impl  # type: ignore[attr-defined]
    return factory


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


def _present(updates: list, params: list | None) -> tuple[list[int] | None, list, list | None]:
    """``(idx, g, p)``: the indices of the present leaves and the updates and params there."""
    idx = present_indices(updates)
    g = take(updates, idx)
    return idx, g, None if params is None or not g else take(params, idx)


FlatStep = Callable[[list, Any, 'list | None', bool], tuple[list, Any]]
StatelessStep = Callable[[list, 'list | None', bool], list]


def stateful(
    name: str,
    init: FlatInit,
    step: FlatStep,
    *,
    scalars: tuple[str, ...] = (),
    check: Callable[[list, Any, Any], Any] | None = None,
    accepts_sparse: bool = False,
) -> FlatTransformation:
    """A transformation whose state is a NamedTuple of per-leaf lists, with the preamble done once.

    ``init(params, treespec)`` returns the state. Every ``list`` field holds one entry per leaf:
    a tensor shaped like the parameter, or, for the fields named in ``scalars``, a 0-dim tensor
    (a step count). The update checks the state against the updates (lengths and shapes, a
    ``ValueError`` naming the leaf), skips ``None`` leaves and returns early when none is left,
    then calls ``step(g, state, params, inplace)`` with every list restricted to the present
    leaves; ``step`` returns ``(new_updates, new_state)`` for those leaves only, and the absent
    leaves keep their state untouched (their counts do not advance, as in ``torch.optim``).

    ``check(updates, state, treespec)`` replaces the default check for a state whose fields are
    not all shaped like the parameters (Adafactor's factored moments); it must raise the same
    ``ValueError`` naming the leaf.
    """

    def default_check(updates: list, state: Any, treespec: Any) -> tuple[str, ...]:
        return _dispatch.check_state(name, updates, state, scalars, treespec)

    if check is None:
        check = default_check
    checker = check

    def unchecked(
        updates: list,
        state: Any,
        *,
        params: list | None = None,
        inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, Any]:
        idx, g, p = _present(updates, params)
        if not g:
            return updates, state
        if idx is None:
            return step(g, state, p, inplace)
        fields = [f for f in state._fields if isinstance(getattr(state, f), list)]
        sub = state._replace(**{f: take(getattr(state, f), idx) for f in fields})
        u, new = step(g, sub, p, inplace)
        merged = {f: put(getattr(state, f), idx, getattr(new, f)) for f in fields}
        return put(updates, idx, u), new._replace(**merged)

    def update_fn(
        updates: list,
        state: Any,
        *,
        params: list | None = None,
        inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, Any]:
        checker(updates, state, treespec)
        return unchecked(updates, state, params=params, inplace=inplace, treespec=treespec)

    return FlatTransformation(
        init, update_fn, name, check=checker, unchecked=unchecked, accepts_sparse=accepts_sparse,
        tree_form=_STATEFUL_FORM,
    )  # fmt: skip


def stateless(
    name: str,
    step: StatelessStep,
    *,
    requires_params: str | None = None,
    accepts_sparse: bool = False,
) -> FlatTransformation:
    """A transformation without state (:class:`~torchopt.base.EmptyState`), optax's ``stateless``.

    ``step(g, params, inplace)`` gets the present (non-``None``) updates and the matching
    parameters (``None`` when not given) and returns the new updates for them. With
    ``requires_params`` (the message of the error raised without them) the parameters are
    required and checked against the updates (shapes, per leaf) first; a chain checks that
    before any member runs. ``accepts_sparse``: see :class:`FlatTransformation`.
    """

    def init_fn(params: list, treespec: Any) -> EmptyState:
        return EmptyState()

    def update_fn(
        updates: list,
        state: Any,
        *,
        params: list | None = None,
        inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, Any]:
        if requires_params is not None and params is None:
            raise _checks.ArgumentError(requires_params)
        idx, g, p = _present(updates, params)
        if not g:
            return updates, state
        if params is not None and requires_params is not None:
            _dispatch.check_like(name, 'params', updates, params, treespec=treespec)
        return put(updates, idx, step(g, p, inplace)), state

    return FlatTransformation(
        init_fn, update_fn, name, accepts_sparse=accepts_sparse, requires_params=requires_params
    )
