"""Momentum (heavy-ball and Nesterov) as a transformation."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt import _foreach as _fe

from torchopt import _checks
from torchopt.base import GradientTransformation, identity
from torchopt.transform._adam import _check_state
from torchopt.transform._flat import FlatTransformation, present_indices, put, take
from torchopt.transform.utils import zeros_like

__all__ = ['TraceState', 'trace']


class TraceState(NamedTuple):
    """State of :func:`trace`: the momentum buffers and whether a step was taken.

    ``started`` lives in the state (not in the transformation, as upstream), so a freshly
    initialised state always starts with ``trace = g``.
    """

    trace: list
    started: bool = False


def trace(
    momentum: float = 0.9,
    dampening: float = 0.0,
    nesterov: bool = False,
    moment_requires_grad: bool = False,
) -> GradientTransformation:
    r"""Momentum, as ``torch.optim.SGD``: the first step sets :math:`b_1 = g_1`, then

    .. math::

        b_t = \mu b_{t-1} + (1 - d) g_t, \qquad
        u_t = g_t + \mu b_t \text{ (Nesterov) or } b_t.

    ``momentum == 0`` returns :func:`~torchopt.base.identity`.
    """
    _checks.check_nonnegative('momentum value', momentum)
    _checks.check_nonnegative('dampening value', dampening)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError('Nesterov momentum requires a momentum and zero dampening')
    if momentum == 0:
        return identity()

    def init_fn(params: list, treespec: Any) -> TraceState:
        return TraceState(trace=zeros_like(params, moment_requires_grad), started=False)

    def update_fn(
        updates: list, state: TraceState, *, params: Any = None, inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, TraceState]:
        _check_state('trace', updates, state.trace)
        idx = present_indices(updates)
        g, buf = take(updates, idx), take(state.trace, idx)
        if not g:
            return updates, state
        if inplace:
            if nesterov:
                if state.started:
                    _fe.mul_(buf, momentum)
                    _fe.add_(buf, g, alpha=1.0 - dampening)
                else:
                    _fe.copy_(buf, g)
                _fe.add_(g, buf, alpha=momentum)
            else:
                # Build the new buffer in g (it is the update) and copy it to the state:
                # 7 memory passes instead of 9 for updating the buffer, then copying it out.
                if state.started:
                    if dampening != 0.0:
                        _fe.mul_(g, 1.0 - dampening)
                    _fe.add_(g, buf, alpha=momentum)
                _fe.copy_(buf, g)
            new_buf, u = buf, g
        else:
            if state.started and dampening == 0.0:
                new_buf = _fe.add(g, buf, alpha=momentum)  # one pass: g + momentum * buf
            elif state.started:
                new_buf = _fe.add(_fe.mul(buf, momentum), g, alpha=1.0 - dampening)
            else:
                # A fresh buffer equals g; keep it connected to the (grad-requiring) initial state.
                new_buf = _fe.add(_fe.mul(buf, 0.0), g) if any(
                    b.requires_grad for b in buf
                ) else [x.clone() for x in g]
            u = _fe.add(g, new_buf, alpha=momentum) if nesterov else new_buf
        return put(updates, idx, u), TraceState(trace=put(state.trace, idx, new_buf), started=True)

    return FlatTransformation(init_fn, update_fn, 'trace')
