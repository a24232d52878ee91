"""Composing transformations (upstream ``torchopt.combine``)."""

from __future__ import annotations

from typing import Any, Callable

from torchopt.base import ChainedGradientTransformation, GradientTransformation, identity
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

    ``apply_fused`` (set by some optimizer aliases) is the fused path of the torch-like
    :class:`~torchopt.Optimizer`: ``apply_fused(params, grads, state)`` updates the parameters
    in place with one of torch's fused kernels and returns the new state, or returns ``None``
    when the tensors are not eligible (the composed transformations then run).
    """

    transformations: tuple[GradientTransformation, ...]
    apply_fused: Callable[[tuple, tuple, tuple], tuple | None] | None = None

    def __new__(cls, *transformations: GradientTransformation) -> Any:
        members = ChainedGradientTransformation(*transformations).transformations
        flat_fns = [as_flat(t) for t in members]
        inits = tuple(f[0] for f in flat_fns)
        updates_fns = tuple(f[1] for f in flat_fns)

        def init_fn(params: list, treespec: Any) -> tuple:
            return tuple(fn(params, treespec) for fn in inits)

        def update_fn(
            updates: list, state: tuple, *, params: list | None = None, inplace: bool = True,
            treespec: Any = None,
        ) -> tuple[list, tuple]:
            if not isinstance(state, tuple) or len(state) != len(updates_fns):
                raise ValueError(
                    'The number of updates and states has to be the same in chain! Make sure you '
                    'have called init first!'
                )
            new_state = []
            for fn, s in zip(updates_fns, state):
                updates, s = fn(updates, s, params=params, inplace=inplace, treespec=treespec)
                new_state.append(s)
            return updates, tuple(new_state)

        instance = super().__new__(cls, init_fn, update_fn, 'chain_flat')
        instance.transformations = members
        return instance

    def __repr__(self) -> str:
        body = ',\n'.join(f'    {t!r}' for t in self.transformations)
        return f'chain_flat(\n{body}\n)'

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlatChain) and self.transformations == other.transformations

    def __hash__(self) -> int:
        return hash(self.transformations)

    def __reduce__(self) -> Any:
        return FlatChain, self.transformations


def chain_flat(*transformations: GradientTransformation) -> GradientTransformation:
    """Like :func:`chain`, but flatten the pytrees once and run every member on flat lists.

    The members see (and their states hold) flat lists of leaves. Every optimizer alias is
    built this way.
    """
    if len(transformations) == 0:
        return identity()
    return FlatChain(*transformations)


chain.flat = chain_flat  # type: ignore[attr-defined]  # upstream spelling
