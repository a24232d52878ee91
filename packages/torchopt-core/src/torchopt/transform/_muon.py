"""Muon (as ``torch.optim.Muon``, torch >= 2.9): momentum, then Newton-Schulz orthogonalization.

Also :func:`scale_by_shape`, the shape-dependent learning-rate adjustment Muon's alias applies
after the direction.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from torchopt import _checks, _dispatch, _leaf_kinds
from torchopt import _foreach as _fe
from torchopt.transform._flat import FlatTransformation, stateful, stateless
from torchopt.transform.utils import ema, write_, zeros_like

__all__ = [
    'ScaleByMuonState',
    'orthogonalize_via_newton_schulz',
    'scale_by_muon',
    'scale_by_shape',
]


_NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)


def orthogonalize_via_newton_schulz(
    x: torch.Tensor,
    ns_coefficients: tuple[float, float, float] = _NS_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-7,
) -> torch.Tensor:
    r"""Approximately orthogonalize a matrix by a quintic Newton-Schulz iteration (in bfloat16).

    With :math:`X_0 = G / \max(\|G\|_F, \epsilon)` (transposed when it has more rows than
    columns) and :math:`(a, b, c)` = ``ns_coefficients``,

    .. math::

        A_k = X_k X_k^\top,\quad X_{k+1} = a X_k + (b A_k + c A_k^2) X_k

    The result has singular values near 1 (roughly :math:`U V^\top` for :math:`G = U S V^\top`),
    in bfloat16, computed with the same operations as ``torch.optim.Muon``.

    Args:
        x: a matrix.
        ns_coefficients: :math:`(a, b, c)`.
        ns_steps: the number of iterations (< 100).
        eps: the floor of the normalising Frobenius norm.
    """
    if ns_steps >= 100:
        raise ValueError('Number of steps must be less than 100 for computational efficiency')
    if x.dim() != 2:
        raise ValueError('Input tensor gradient must be a 2D matrix')
    a, b, c = ns_coefficients
    y = x.bfloat16()
    tall = x.size(0) > x.size(1)
    if tall:
        y = y.T
    y = y / y.norm().clamp(min=eps)  # out of place: differentiable, and x is never written
    for _ in range(ns_steps):
        gram = y @ y.T
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        y = torch.addmm(y, update, y, beta=a)
    return y.T if tall else y


class ScaleByMuonState(NamedTuple):
    """State of :func:`scale_by_muon`: the momentum buffers."""

    momentum_buffer: list


def scale_by_muon(
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = _NS_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    moment_requires_grad: bool = False,
) -> FlatTransformation:
    r"""Muon's direction: momentum, then Newton-Schulz orthogonalization (2-D leaves only).

    .. math::

        B_t = \mu B_{t-1} + (1-\mu) g_t,\quad
        O_t = \operatorname{NS}((1-\mu) g_t + \mu B_t \text{ (Nesterov) or } B_t)

    (:func:`orthogonalize_via_newton_schulz`), as ``torch.optim.Muon``. The update is
    :math:`O_t` cast to the parameter's dtype.

    Raises:
        ValueError: at ``init``, for a parameter that is not a matrix (combine Muon with another
            optimizer for those, e.g. with :func:`~torchopt.transform.partition`).

    Reference: Jordan et al., *Muon: An optimizer for hidden layers in neural networks*, 2024.
    """
    _checks.check_nonnegative('momentum value', momentum)

    def init_fn(params: list, treespec: Any) -> ScaleByMuonState:
        _leaf_kinds.check_real('scale_by_muon', params, treespec)
        for i, x in enumerate(params):
            if x is not None and x.dim() != 2:
                raise ValueError(
                    f'Muon only supports 2D parameters, but {_dispatch._leaf(i, treespec)} has '
                    f'shape {tuple(x.shape)}; optimize the others with another optimizer '
                    '(torchopt.transform.partition)'
                )
        return ScaleByMuonState(momentum_buffer=zeros_like(params, moment_requires_grad))

    def step(g: list, s: ScaleByMuonState, p: Any, inplace: bool) -> tuple[list, ScaleByMuonState]:
        buf = ema(s.momentum_buffer, g, momentum, inplace=inplace)
        direction = _fe.lerp(g, buf, momentum) if nesterov else buf
        u = [orthogonalize_via_newton_schulz(x, ns_coefficients, ns_steps, eps).to(x.dtype)
             for x in direction]  # fmt: skip
        return write_(g, u, inplace=inplace), ScaleByMuonState(momentum_buffer=buf)

    return stateful('scale_by_muon', init_fn, step)


def scale_by_shape(
    fn: Callable[[torch.Size], float], weight_decay: float = 0.0
) -> FlatTransformation:
    r"""Scale each leaf by a factor of its shape and add decoupled weight decay.

    :math:`u = f(\text{shape}(\theta))\, g + \lambda \theta` (``params`` are needed when
    :math:`\lambda \ne 0`). Muon uses it for its shape-dependent learning-rate adjustment.

    Args:
        fn: ``shape -> factor``.
        weight_decay: :math:`\lambda`.
    """
    _checks.check_nonnegative('weight_decay value', weight_decay)

    def step(g: list, p: list | None, inplace: bool) -> list:
        factors = [float(fn(x.shape)) for x in g]
        if inplace:
            _fe.mul_(g, factors)
            if weight_decay != 0.0:
                with torch.no_grad():
                    _fe.add_(g, p, alpha=weight_decay)
            return g
        u = _fe.mul(g, factors)
        return _fe.add(u, p, alpha=weight_decay) if weight_decay != 0.0 else u

    needs = _checks.PARAMS_FOR_WEIGHT_DECAY if weight_decay != 0.0 else None
    return stateless('scale_by_shape', step, requires_params=needs)
