"""The transformation contract (upstream ``torchopt.base``).

A :class:`GradientTransformation` is a pair of pure functions::

    state = init(params)
    updates, state = update(updates, state, *, params=None, inplace=True)

``None`` leaves in ``updates`` mean "no gradient" and pass through untouched. With
``inplace=True`` the returned updates may be the input tensors, mutated; with
``inplace=False`` no input is mutated and the result is differentiable.
"""

from __future__ import annotations

import itertools
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol

from torchopt import _checks

if TYPE_CHECKING:
    from torchopt.typing import OptState, Params, Updates

__all__ = [
    'ChainedGradientTransformation',
    'EmptyState',
    'GradientTransformation',
    'UninitializedState',
    'identity',
]


class EmptyState(NamedTuple):
    """The state of stateless transformations."""


class UninitializedState(NamedTuple):
    """Placeholder until an optimizer's first ``step()`` calls ``init``."""


class TransformInitFn(Protocol):
    """``init(params) -> state``."""

    @abstractmethod
    def __call__(self, params: Params) -> OptState:
        """Return the initial state for ``params``."""


class TransformUpdateFn(Protocol):
    """``update(updates, state, *, params=None, inplace=True) -> (updates, state)``."""

    @abstractmethod
    def __call__(
        self,
        updates: Updates,
        state: OptState,
        *,
        params: Params | None = None,
        inplace: bool = True,
    ) -> tuple[Updates, OptState]:
        """Transform ``updates`` and return them with the new state."""


class GradientTransformation(NamedTuple):
    """A pair of pure functions ``(init, update)``; see the module docstring."""

    init: TransformInitFn
    update: TransformUpdateFn

    def chain(self, next: GradientTransformation) -> ChainedGradientTransformation:  # noqa: A002
        """Return ``self`` followed by ``next``."""
        return ChainedGradientTransformation(self, next)


class ChainedGradientTransformation(GradientTransformation):
    """Transformations applied in sequence; the state is a tuple of their states.

    Nested chains are flattened and identities dropped at construction.
    """

    transformations: tuple[GradientTransformation, ...]

    def __new__(cls, *transformations: GradientTransformation) -> ChainedGradientTransformation:
        """Chain ``transformations``, flattening nested chains."""
        flat = tuple(
            itertools.chain.from_iterable(
                t.transformations if isinstance(t, ChainedGradientTransformation) else (t,)
                for t in transformations
            )
        )
        for t in flat:
            if not isinstance(t, GradientTransformation):
                raise TypeError(
                    f'chain() expects GradientTransformation instances, got {type(t).__name__}'
                )
        flat = tuple(t for t in flat if not isinstance(t, IdentityGradientTransformation))
        if not flat:
            flat = (identity(),)
        init_fns = tuple(t.init for t in flat)
        update_fns = tuple(t.update for t in flat)
        # the first member's error when ``params`` are needed and missing: raised before any
        # member has written (a chain of chains is one chain; FlatChain declares its members')
        needs = next((m for m in (getattr(t, 'requires_params', None) for t in flat) if m), None)

        def init_fn(params: Params) -> OptState:
            return tuple(fn(params) for fn in init_fns)

        def update_fn(
            updates: Updates,
            state: OptState,
            *,
            params: Params | None = None,
            inplace: bool = True,
        ) -> tuple[Updates, OptState]:
            if len(update_fns) != len(state):
                raise ValueError(
                    'The number of updates and states has to be the same in chain! Make sure you '
                    'have called init first!'
                )
            if params is None and needs is not None:
                raise _checks.ArgumentError(needs)
            new_state = []
            for s, fn in zip(state, update_fns):
                updates, s = fn(updates, s, params=params, inplace=inplace)
                new_state.append(s)
            return updates, tuple(new_state)

        instance = super().__new__(cls, init=init_fn, update=update_fn)
        instance.transformations = flat
        return instance

    def __str__(self) -> str:
        body = ',\n'.join(f'    {t!r}'.replace('\n', '\n    ') for t in self.transformations)
        return f'{type(self).__name__}(\n{body}\n)'

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChainedGradientTransformation):
            return self.transformations == other.transformations
        if isinstance(other, GradientTransformation):
            return self.transformations == (other,)
        return False

    def __hash__(self) -> int:
        return hash(self.transformations)

    def __getstate__(self) -> tuple[GradientTransformation, ...]:
        return self.transformations

    def __setstate__(self, state: tuple[GradientTransformation, ...]) -> None:
        self.transformations = state

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return ChainedGradientTransformation, self.transformations


class IdentityGradientTransformation(GradientTransformation):
    """Leaves updates and state unchanged."""

    def __new__(cls) -> IdentityGradientTransformation:
        return super().__new__(cls, init=cls.init_fn, update=cls.update_fn)

    @staticmethod
    def init_fn(params: Params) -> OptState:  # noqa: ARG004
        """Return :class:`EmptyState`."""
        return EmptyState()

    @staticmethod
    def update_fn(
        updates: Updates,
        state: OptState,
        *,
        params: Params | None = None,  # noqa: ARG004
        inplace: bool = True,  # noqa: ARG004
    ) -> tuple[Updates, OptState]:
        """Return the inputs unchanged."""
        return updates, state


def identity() -> IdentityGradientTransformation:
    """Return the identity transformation (stateless, updates pass through)."""
    return IdentityGradientTransformation()
