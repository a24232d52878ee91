"""Momentum (heavy-ball and Nesterov) as a transformation."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt import _checks
from torchopt import _foreach as _fe
from torchopt.base import GradientTransformation, identity
from torchopt.transform._flat import stateful
from torchopt.transform.utils import advance, count_scalars, counts_like, smap, zeros_like

__all__ = ['DampenedTraceState', 'TraceState', 'trace']


class TraceState(NamedTuple):
    """State of :func:`trace` without dampening: the momentum buffers (upstream's layout).

    Buffers start at zero, so the first step gives exactly ``b = g`` (as ``torch.optim.SGD``)
    with no flag at all. Upstream kept a "first step done" flag on the transformation object, so
    a fresh state of a used transformation started wrong.
    """

    trace: list


class DampenedTraceState(NamedTuple):
    """State of :func:`trace` with dampening: buffers and one step count per parameter.

    The first step of a parameter skips the dampening (``b = g``, as ``torch.optim.SGD``), so
    each parameter needs to know whether it has taken one.
    """

    trace: list
    count: list  # type: ignore[assignment]  # shadows tuple.count


def trace(
    momentum: float = 0.9,
    dampening: float = 0.0,
    nesterov: bool = False,
    moment_requires_grad: bool = False,
) -> GradientTransformation:
    r"""Momentum, as ``torch.optim.SGD``.

    The first step sets :math:`b_1 = g_1`, then

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

    def init_fn(params: list, treespec: Any) -> TraceState | DampenedTraceState:
        buffers = zeros_like(params, moment_requires_grad)
        if dampening == 0.0:
            return TraceState(trace=buffers)
        return DampenedTraceState(trace=buffers, count=counts_like(params))

    def weights(c: Any) -> tuple[Any, Any]:
        """(the factor on the buffer, the factor on the gradient) at step count ``c``."""
        if isinstance(c, torch.Tensor):
            first = c == 0
            return torch.where(first, 0.0, momentum), torch.where(first, 1.0, 1.0 - dampening)
        return (0.0, 1.0) if c == 0 else (momentum, 1.0 - dampening)

    def step(g: list, s: Any, p: Any, inplace: bool) -> tuple[list, Any]:
        if isinstance(
            s, TraceState
        ):  # no dampening: b = g + momentum * b, exact from a zero buffer
            if inplace and nesterov:
                _fe.mul_(s.trace, momentum)
                _fe.add_(s.trace, g)
                _fe.add_(g, s.trace, alpha=momentum)
                return g, s
            if inplace:
                # Build the new buffer in g (it is the update) and copy it to the state:
                # 7 memory passes instead of 9 for updating the buffer, then copying it out.
                _fe.add_(g, s.trace, alpha=momentum)
                _fe.copy_(s.trace, g)
                return g, s
            new_buf = _fe.add(g, s.trace, alpha=momentum)  # one pass: g + momentum * buf
            u = _fe.add(g, new_buf, alpha=momentum) if nesterov else new_buf
            return u, TraceState(trace=new_buf)
        w = smap(weights, count_scalars(s.count))
        w_buf, w_g = ([a for a, _ in w], [b for _, b in w]) if isinstance(w, list) else w
        new_buf = _fe.add(_fe.mul(s.trace, w_buf), _fe.mul(g, w_g))
        counts = advance(s.count, inplace)
        if not inplace:
            return new_buf, DampenedTraceState(trace=new_buf, count=counts)
        _fe.copy_(s.trace, new_buf)
        _fe.copy_(g, new_buf)
        return g, s

    return stateful('trace', init_fn, step, scalars=('count',), accepts_sparse=True)
