"""Clipping transformations with optax's names: by value, by block RMS, by global norm.

Unlike :func:`torchopt.clip_grad_norm` (upstream TorchOpt's, whose coefficient is a host float
with a ``1e-6`` in the denominator), these keep their coefficients as tensors: no host
synchronisation, and the out-of-place update is differentiable through the norm.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from torchopt import _checks, _dispatch
from torchopt import _foreach as _fe
from torchopt.transform._flat import FlatTransformation, stateless

__all__ = ['clip', 'clip_by_block_rms', 'clip_by_global_norm']


def _mul_each(g: list, factors: list, inplace: bool) -> list:
    """``g[i] * factors[i]`` for 0-dim tensor ``factors`` (one multi-tensor op)."""
    if inplace:
        _fe.mul_(g, factors)
        return g
    return _fe.mul(g, factors)


def clip(max_delta: float) -> FlatTransformation:
    r"""Clip updates element-wise: :math:`u = \min(\max(g, -\delta), \delta)`.

    Args:
        max_delta: :math:`\delta \ge 0`, the largest absolute value of an update element.

    Reference: optax ``clip``.
    """
    _checks.check_nonnegative('max_delta', max_delta)
    delta = float(max_delta)

    def step(g: list, params: Any, inplace: bool) -> list:
        if _dispatch.per_tensor((g,), inplace):
            return [x.clamp(-delta, delta) for x in g]
        if inplace:
            torch._foreach_clamp_min_(g, -delta)
            torch._foreach_clamp_max_(g, delta)
            return g
        out = torch._foreach_clamp_min(g, -delta)
        torch._foreach_clamp_max_(out, delta)
        return list(out)

    return stateless(f'clip({max_delta!r})', step)


def clip_by_block_rms(threshold: float) -> FlatTransformation:
    r"""Clip each leaf (block) to a root mean square of at most ``threshold``.

    .. math::

        u = \frac{g}{\max\left(1, \sqrt{\operatorname{mean}(g^2)} / \tau\right)}

    Args:
        threshold: :math:`\tau > 0`, the largest RMS of a leaf's update.

    Reference: optax ``clip_by_block_rms``; Shazeer & Stern, *Adafactor*, ICML 2018 (update
    clipping).
    """
    _checks.check_nonnegative('threshold', threshold)
    if threshold == 0:
        raise ValueError('clip_by_block_rms: `threshold` must be positive')

    def step(g: list, params: Any, inplace: bool) -> list:
        norms = _fe.norm(g)
        factors = [
            threshold / torch.clamp(n / math.sqrt(max(x.numel(), 1)), min=threshold)
            for n, x in zip(norms, g)
        ]
        return _mul_each(g, factors, inplace)

    return stateless(f'clip_by_block_rms({threshold!r})', step)


def global_norm(g: list) -> torch.Tensor:
    """The 2-norm of all the tensors of ``g`` together (a 0-dim tensor on ``g[0]``'s device)."""
    norms = _fe.norm(g)
    first = norms[0]
    if any(n.device != first.device or n.dtype != first.dtype for n in norms):
        norms = [n.to(first.device, torch.promote_types(n.dtype, first.dtype)) for n in norms]
    return torch.linalg.vector_norm(torch.stack(norms))


def clip_by_global_norm(max_norm: float) -> FlatTransformation:
    r"""Clip the updates by their global norm (all leaves together).

    .. math::

        u = \begin{cases} g & \|g\| < c \\ g \, c / \|g\| & \text{otherwise} \end{cases}

    The coefficient :math:`c / \max(\|g\|, c)` stays a tensor (no host synchronisation) and the
    out-of-place update is differentiable through the norm.

    Args:
        max_norm: :math:`c > 0`, the largest global norm.

    Reference: optax ``clip_by_global_norm``; Pascanu et al., *On the difficulty of training
    recurrent neural networks*, ICML 2013.
    """
    _checks.check_nonnegative('max_norm', max_norm)
    if max_norm == 0:
        raise ValueError('clip_by_global_norm: `max_norm` must be positive')

    def step(g: list, params: Any, inplace: bool) -> list:
        total = global_norm(g)
        factor = max_norm / torch.clamp(total, min=max_norm)
        if inplace:
            _fe.mul_(g, factor.to(g[0].dtype))
            return g
        return _fe.mul(g, factor)

    return stateless(f'clip_by_global_norm({max_norm!r})', step)
