"""Composing transformations (upstream ``torchopt.combine``)."""

from __future__ import annotations

from typing import Any

from torchopt import _checks, _kernels, _leaf_kinds
from torchopt._dispatch import FusedStep
from torchopt.base import (
    ChainedGradientTransformation,
    GradientTransformation,
    IdentityGradientTransformation,
    identity,
)
from torchopt.transform._flat import FlatTransformation, as_flat

__all__ = ['chain', 'chain_flat']


def chain(*transformations: GradientTransformation) -> GradientTransformation:
    """Apply transformations in sequence; the state is the tuple of their states.

    ``chain()`` is :func:`~torchopt.base.identity` and ``chain(t)`` is ``t`` itself.
    """
    if len(transformations) == 0:
        return identity()
    if len(transformations) == 1:
        return transformations[0]
    return ChainedGradientTransformation(*transformations)


class FlatChain(FlatTransformation):
    """A chain that flattens the pytrees once and runs its members on the flat lists.

    ``fused`` (declared by the optimizer aliases that have one) says which fused kernel computes
    the whole in-place step; :mod:`torchopt._dispatch` runs it for the torch-like
    :class:`~torchopt.Optimizer` when the tensors are eligible.
    """

    transformations: tuple[GradientTransformation, ...]
    fused: FusedStep | None

    def __new__(
        cls, *transformations: GradientTransformation, fused: FusedStep | None = None
    ) -> Any:
        members = ChainedGradientTransformation(*transformations).transformations
        flat_fns = [as_flat(t) for t in members]
        inits = tuple(f[0] for f in flat_fns)
        checks = tuple(getattr(t, 'flat_check', None) for t in members)
        updates_fns = tuple(
            getattr(t, 'flat_unchecked', None) or f[1] for t, f in zip(members, flat_fns)
        )
        checked = tuple(i for i, c in enumerate(checks) if c is not None)

        def init_fn(params: list, treespec: Any) -> tuple:
            return tuple(fn(params, treespec) for fn in inits)

        def update_fn(
            updates: list,
            state: tuple,
            *,
            params: list | None = None,
            inplace: bool = True,
            treespec: Any = None,
        ) -> tuple[list, tuple]:
            if not isinstance(state, tuple) or len(state) != len(updates_fns):
                raise ValueError(
                    'The number of updates and states has to be the same in chain! Make sure you '
                    'have called init first!'
                )
            if inplace and fused is not None:  # one kernel pass for the whole update
                done = _kernels.fused_update(fused, updates, state, params, treespec)
                if done is not None:
                    return done
            if _leaf_kinds.special(updates):  # complex or sparse (after the fused kernel declined)
                return _leaf_kinds.run(
                    fused_or_members, refuses_sparse, not refuses_sparse, updates, state, params,
                    inplace, treespec,
                )  # fmt: skip
            return run_members(updates, state, params=params, inplace=inplace, treespec=treespec)

        def fused_or_members(
            updates: list, state: tuple, *, params: Any, inplace: bool, treespec: Any
        ) -> tuple[list, tuple]:
            if inplace and fused is not None:  # the real views of complex leaves may fuse
                done = _kernels.fused_update(fused, updates, state, params, treespec)
                if done is not None:
                    return done
            return run_members(updates, state, params=params, inplace=inplace, treespec=treespec)

        def run_members(
            updates: list, state: tuple, *, params: Any, inplace: bool, treespec: Any
        ) -> tuple[list, tuple]:
            if params is None and requires_params is not None:  # before any member writes
                raise _checks.ArgumentError(requires_params)
            for i in checked:  # every state is checked before any member writes
                checks[i](updates, state[i], treespec)  # type: ignore[misc]  # not None at i
            new_state = []
            for fn, s in zip(updates_fns, state):
                updates, s = fn(updates, s, params=params, inplace=inplace, treespec=treespec)
                new_state.append(s)
            return updates, tuple(new_state)

        needs = [getattr(m, 'requires_params', None) for m in members]  # nested chains' too
        requires_params = next((msg for msg in needs if msg), None)  # the first member's
        fused = None if fused is None else _locate(fused, members)
        refuses_sparse = next(  # the member named when a sparse gradient is refused
            (getattr(t, 'name', repr(t)) for t in members if not _accepts_sparse(t)),
            '',
        )
        instance = super().__new__(
            cls, init_fn, update_fn, 'chain_flat', accepts_sparse=not refuses_sparse,
            own_leaf_kinds=True, requires_params=requires_params,
        )  # fmt: skip
        instance.transformations = members
        instance.fused = fused
        return instance

    def __repr__(self) -> str:
        body = ',\n'.join(f'    {t!r}' for t in self.transformations)
        return f'chain_flat(\n{body}\n)'

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlatChain) and self.transformations == other.transformations

    def __hash__(self) -> int:
        return hash(self.transformations)

    def __reduce__(self) -> Any:
        return _flat_chain, (self.fused, *self.transformations)


def _accepts_sparse(t: GradientTransformation) -> bool:
    """Whether a chain member takes a sparse gradient made dense (the identity does)."""
    return isinstance(t, IdentityGradientTransformation) or getattr(t, 'accepts_sparse', False)


def _flat_chain(fused: FusedStep | None, *transformations: GradientTransformation) -> FlatChain:
    return FlatChain(*transformations, fused=fused)


def _locate(fused: FusedStep, members: tuple) -> FusedStep:
    """``fused`` with ``at`` set to the position of the member that holds the kernel's buffers."""
    names = {
        'sgd': ('trace',),
        'amsgrad': ('scale_by_amsgrad',),
        'adamw-amsgrad': ('scale_by_amsgrad',),
        'rmsprop': ('scale_by_rms', 'scale_by_stddev'),
        'adagrad': ('scale_by_rss',),
    }.get(fused.kind, ('scale_by_adam', 'scale_by_accelerated_adam'))
    for i, t in enumerate(members):
        if getattr(t, 'name', None) in names:
            return fused._replace(at=i)
    return fused._replace(at=-1)


def chain_flat(
    *transformations: GradientTransformation, fused: FusedStep | None = None
) -> GradientTransformation:
    """Like :func:`chain`, but flatten the pytrees once and run every member on flat lists.

    The members see (and their states hold) flat lists of leaves. Every optimizer alias is
    built this way; ``fused`` declares the fused kernel that computes the chain's whole
    in-place step (see :class:`~torchopt._dispatch.FusedStep`).
    """
    if len(transformations) == 0:
        return identity()
    return FlatChain(*transformations, fused=fused)


chain.flat = chain_flat  # type: ignore[attr-defined]  # upstream spelling
