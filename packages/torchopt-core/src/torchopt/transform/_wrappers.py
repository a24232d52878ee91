"""Wrappers around an optimizer: skip non-finite steps, and Lookahead.

* :func:`apply_if_finite` (optax's name) skips a step whose incoming updates hold a NaN or an
  Inf and counts the skips; after ``max_consecutive_errors`` skips in a row it gives up and
  applies the step.
* :func:`lookahead` keeps a pair of fast and slow parameters (:class:`LookaheadParams`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from torchopt import _dispatch
from torchopt.base import GradientTransformation
from torchopt.transform._flat import FlatTransformation, as_flat

__all__ = [
    'ApplyIfFiniteState',
    'LookaheadParams',
    'LookaheadState',
    'apply_if_finite',
    'lookahead',
]


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`.

    Attributes:
        notfinite_count: consecutive skipped steps so far (0-dim int64; reset by a finite one).
        last_finite: whether the last step's updates were finite (0-dim bool).
        total_notfinite: non-finite steps since ``init`` (0-dim int64; never reset).
        inner_state: the wrapped transformation's state.
    """

    notfinite_count: torch.Tensor
    last_finite: torch.Tensor
    total_notfinite: torch.Tensor
    inner_state: Any


def _all_finite(updates: list) -> bool:
    present = [u for u in updates if u is not None]
    if not present:
        return True
    flags = [torch.isfinite(u).all() for u in present]
    first = flags[0].device
    return bool(torch.stack([f.to(first) for f in flags]).all())


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> FlatTransformation:
    """Skip the steps whose updates hold a NaN or an Inf, and count them.

    A skipped step returns zero updates and leaves the inner state untouched (so, unlike a
    plain NaN filter, it does not poison moment estimates). After more than
    ``max_consecutive_errors`` consecutive non-finite steps the wrapper gives up and runs
    ``inner`` on them. Deciding costs one host synchronisation per step (``bool`` of a tensor).

    Args:
        inner: the transformation to protect (e.g. an optimizer alias).
        max_consecutive_errors: the most consecutive non-finite steps skipped.

    Reference: optax ``apply_if_finite``.
    """
    if max_consecutive_errors < 0:
        raise ValueError('apply_if_finite: `max_consecutive_errors` must be >= 0')
    inner_init, inner_update = as_flat(inner)

    def init_fn(params: list, treespec: Any) -> ApplyIfFiniteState:
        return ApplyIfFiniteState(
            notfinite_count=torch.zeros((), dtype=torch.int64),
            last_finite=torch.ones((), dtype=torch.bool),
            total_notfinite=torch.zeros((), dtype=torch.int64),
            inner_state=inner_init(params, treespec),
        )

    def update_fn(
        updates: list,
        state: ApplyIfFiniteState,
        *,
        params: list | None = None,
        inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, ApplyIfFiniteState]:
        finite = _all_finite(updates)
        notfinite = 0 if finite else int(state.notfinite_count) + 1
        total = int(state.total_notfinite) + (0 if finite else 1)
        if finite or notfinite > max_consecutive_errors:
            updates, inner_state = inner_update(
                updates, state.inner_state, params=params, inplace=inplace, treespec=treespec
            )
        else:
            inner_state = state.inner_state
            present = [u for u in updates if u is not None]
            if inplace and not _dispatch.functorch_active():
                torch._foreach_zero_(present)
            else:
                updates = [None if u is None else torch.zeros_like(u) for u in updates]
        if inplace:
            state.notfinite_count.fill_(notfinite)
            state.last_finite.fill_(finite)
            state.total_notfinite.fill_(total)
            return updates, state._replace(inner_state=inner_state)
        return updates, ApplyIfFiniteState(
            notfinite_count=torch.tensor(notfinite, dtype=torch.int64),
            last_finite=torch.tensor(finite, dtype=torch.bool),
            total_notfinite=torch.tensor(total, dtype=torch.int64),
            inner_state=inner_state,
        )

    return FlatTransformation(init_fn, update_fn, f'apply_if_finite({inner!r})')


# --- lookahead -----------------------------------------------------------------------------------


class LookaheadParams(NamedTuple):
    """The fast and slow parameters of :func:`lookahead` (a tree: ``apply_updates`` works on it).

    Compute gradients at ``fast``; evaluate with ``slow``.
    """

    fast: Any
    slow: Any

    @classmethod
    def init_synced(cls, params: Any) -> LookaheadParams:
        """``fast = params`` and ``slow`` a copy of them (``clone``: autograd still sees it)."""
        return cls(fast=params, slow=optree.tree_map(torch.clone, params))


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`: the fast optimizer's state and the steps since a sync."""

    fast_state: Any
    steps_since_sync: torch.Tensor


def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float,
    reset_state: bool = False,
) -> GradientTransformation:
    r"""Lookahead: ``k`` fast steps, then move the slow weights towards the fast ones.

    The parameters are a :class:`LookaheadParams` ``(fast, slow)``; the updates passed in are
    the gradients at ``fast``, and the returned updates are a ``LookaheadParams`` for
    :func:`~torchopt.apply_updates`. Every ``sync_period``-th step, with :math:`\phi` the slow and
    :math:`\theta` the fast weights after the fast optimizer's step,

    .. math::

        \phi \leftarrow \phi + \alpha (\theta - \phi), \qquad \theta \leftarrow \phi.

    Do not modify the returned updates before applying them.

    Args:
        fast_optimizer: the inner optimizer.
        sync_period: :math:`k \ge 1` fast steps per synchronisation.
        slow_step_size: :math:`\alpha`, the slow weights' step size.
        reset_state: re-initialise the fast optimizer's state at each synchronisation.

    Reference: Zhang et al., *Lookahead Optimizer: k steps forward, 1 step back*, NeurIPS 2019.
    """
    if sync_period < 1:
        raise ValueError('lookahead: `sync_period` must be >= 1')

    def init_fn(params: Any) -> LookaheadState:
        fast = params.fast if isinstance(params, LookaheadParams) else params
        return LookaheadState(
            fast_state=fast_optimizer.init(fast),
            steps_since_sync=torch.zeros((), dtype=torch.int64),
        )

    def update_fn(
        updates: Any, state: LookaheadState, *, params: Any = None, inplace: bool = True
    ) -> tuple[LookaheadParams, LookaheadState]:
        if not isinstance(params, LookaheadParams):
            raise ValueError(
                'lookahead needs `params=LookaheadParams(fast, slow)` (see '
                '`LookaheadParams.init_synced`)'
            )
        fast_updates, fast_state = fast_optimizer.update(
            updates, state.fast_state, params=params.fast, inplace=inplace
        )
        sync = int(state.steps_since_sync) == sync_period - 1
        u_leaves, treespec = optree.tree_flatten(fast_updates, none_is_leaf=True)
        fast = treespec.flatten_up_to(params.fast)
        slow = treespec.flatten_up_to(params.slow)
        slow_u: list = [None] * len(u_leaves)
        if sync:
            new_fast: list = []
            for i, (u, f, s) in enumerate(zip(u_leaves, fast, slow)):
                if u is None:
                    new_fast.append(None)
                    continue
                diff = (f.detach() + u - s.detach()) if inplace else (f + u - s)
                slow_u[i] = diff * slow_step_size
                if inplace:
                    new_fast.append(u.sub_(diff, alpha=1.0 - slow_step_size))
                else:
                    new_fast.append(u - (1.0 - slow_step_size) * diff)
            fast_updates = treespec.unflatten(new_fast)
            if reset_state:
                fast_state = fast_optimizer.init(params.fast)
        count = (int(state.steps_since_sync) + 1) % sync_period
        if inplace:
            state.steps_since_sync.fill_(count)
            steps = state.steps_since_sync
        else:
            steps = torch.tensor(count, dtype=torch.int64)
        return (
            LookaheadParams(fast=fast_updates, slow=treespec.unflatten(slow_u)),
            LookaheadState(fast_state=fast_state, steps_since_sync=steps),
        )

    # update_fn takes its own state class, narrower than the protocol's OptState.
    return GradientTransformation(init_fn, update_fn)  # type: ignore[arg-type]
