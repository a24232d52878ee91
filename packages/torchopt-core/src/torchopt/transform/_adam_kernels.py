r"""Adam's element-wise math on flat lists, written once: the reference the fast paths are tested on.

:func:`adam_direction` is the one Python definition of the direction
:math:`\hat m / (\sqrt{\hat v + \epsilon_{root}} + \epsilon)`; :func:`adam_step_untracked` the
out-of-place step that autograd does not record (the fused kernel on copies when eligible).
The bias corrections ``bc1``/``bc2`` are double-precision scalars per leaf
(:func:`~torchopt.transform.utils.bias_correction`).
"""

from __future__ import annotations

from torchopt import _dispatch, _kernels
from torchopt import _foreach as _fe
from torchopt.transform.utils import Scalars, ema, ema_sq, smap

__all__ = ['adam_direction', 'adam_step_untracked']


def adam_direction(
    mu: list,
    nu: list,
    bc1: Scalars,
    bc2: Scalars,
    eps: float,
    eps_root: float,
    *,
    recorded: bool,
) -> list:
    """``(mu / bc1) / (sqrt(nu / bc2 + eps_root) + eps)`` for flat lists, in new tensors.

    With ``eps_root == 0`` the bias corrections are folded into two scalar ops on the
    denominator: ``mu / (sqrt(nu) * (bc1 / sqrt(bc2)) + eps * bc1)``. Unless ``recorded``, the
    denominator is built in place in its own temporaries (fewer allocations).
    """
    if eps_root == 0.0:
        scale = smap(lambda a, b: a / b**0.5, bc1, bc2)
        shift = smap(lambda a: eps * a, bc1)
        if recorded:
            return _fe.div(mu, _fe.add(_fe.mul(_fe.sqrt(nu), scale), shift))
        denom = _fe.sqrt(nu)
        _fe.mul_(denom, scale)
        _fe.add_(denom, shift)
        return _fe.div(mu, denom)
    if recorded:
        root = _fe.sqrt(_fe.add(_fe.div(nu, bc2), eps_root))
        return _fe.div(mu, _fe.mul(_fe.add(root, eps), bc1))
    denom = _fe.div(nu, bc2)
    _fe.add_(denom, eps_root)
    _fe.sqrt_(denom)
    _fe.add_(denom, eps)
    _fe.mul_(denom, bc1)
    return _fe.div(mu, denom)


def adam_step_untracked(
    g: list,
    mu: list,
    nu: list,
    counts: list,
    bc1: Scalars,
    bc2: Scalars,
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
) -> tuple[list, list, list]:
    """Out-of-place Adam step ``(direction, new_mu, new_nu)`` for code autograd does not record.

    ``counts`` are the new (incremented) step counts. With ``eps_root == 0`` and eligible tensors
    the inputs are copied once and torch's fused kernel runs on the copies; otherwise foreach ops.
    """
    if eps_root == 0.0 and _dispatch.kernel_eligible(g, mu, nu):
        u, new_mu, new_nu = (_fe.mul(x, 1.0) for x in (g, mu, nu))
        _kernels.adam_direction_(u, new_mu, new_nu, counts, b1, b2, eps)
        return u, new_mu, new_nu
    new_mu = ema(mu, g, b1, inplace=False)
    new_nu = ema_sq(nu, g, b2, inplace=False)
    return adam_direction(new_mu, new_nu, bc1, bc2, eps, eps_root, recorded=False), new_mu, new_nu
