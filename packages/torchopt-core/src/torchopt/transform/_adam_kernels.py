"""Adam's element-wise math on flat lists: foreach, differentiable and fused-kernel forms.

Shared by :func:`~torchopt.transform.scale_by_adam` and its custom autograd node.
"""

from __future__ import annotations

import math

import torch

from torchopt import _foreach as _fe
from torchopt.transform.utils import ema, ema_sq

__all__ = ['adam_direction', 'adam_direction_diff', 'fused_adam_direction_', 'adam_step_untracked']


def adam_direction(
    mu: list, nu: list, count: int, b1: float, b2: float, eps: float, eps_root: float
) -> list:
    """``mu_hat / (sqrt(nu_hat + eps_root) + eps)`` for flat lists, in new tensors.

    Works in place on its own temporaries, so it must not be recorded by autograd. With
    ``eps_root == 0`` the bias corrections are folded into two scalar ops on the denominator:
    ``mu / (sqrt(nu) * (bc1 / sqrt(bc2)) + eps * bc1)``.
    """
    bc1 = 1.0 - b1**count
    bc2 = 1.0 - b2**count
    if eps_root == 0.0:
        denom = _fe.sqrt(nu)
        _fe.mul_(denom, bc1 / math.sqrt(bc2))
        _fe.add_(denom, eps * bc1)
        return _fe.div(mu, denom)
    denom = _fe.div(nu, bc2)
    _fe.add_(denom, eps_root)
    _fe.sqrt_(denom)
    _fe.add_(denom, eps)
    _fe.mul_(denom, bc1)
    return _fe.div(mu, denom)


def adam_direction_diff(
    mu: list, nu: list, count: int, b1: float, b2: float, eps: float, eps_root: float
) -> list:
    """Differentiable :func:`adam_direction` (no in-place op on graph tensors)."""
    bc1 = 1.0 - b1**count
    bc2 = 1.0 - b2**count
    if eps_root == 0.0:
        denom = _fe.add(
            _fe.mul(_fe.sqrt(nu), bc1 / math.sqrt(bc2)), eps * bc1
        )
    else:
        denom = _fe.mul(
            _fe.add(
                _fe.sqrt(_fe.add(_fe.div(nu, bc2), eps_root)),
                eps,
            ),
            bc1,
        )
    return _fe.div(mu, denom)


def fused_adam_direction_(
    g: list, mu: list, nu: list, count: int, b1: float, b2: float, eps: float
) -> None:
    """One pass of torch's fused AdamW kernel that leaves the Adam direction in ``g``.

    The kernel computes ``p = p * (1 - lr * wd) - lr * direction`` element by element, reading
    the gradient before writing the parameter. With ``p`` aliased to ``g``, ``lr = -1`` and
    ``wd = -1`` the first factor is exactly zero, so ``g`` becomes the direction while ``mu`` and
    ``nu`` get their usual moving averages: 6 memory passes instead of ~19 for the foreach ops.
    """
    step = torch.tensor(float(count), device=g[0].device)
    with torch.no_grad():
        torch._fused_adamw_(
            g, g, mu, nu, [], [step] * len(g), lr=-1.0, beta1=b1, beta2=b2, weight_decay=-1.0,
            eps=eps, amsgrad=False, maximize=False,
        )


def adam_step_untracked(
    g: list, mu: list, nu: list, count: int, b1: float, b2: float, eps: float, eps_root: float
) -> tuple[list, list, list]:
    """Out-of-place Adam step ``(direction, new_mu, new_nu)`` for code autograd does not record.

    With ``eps_root == 0`` and eligible tensors the inputs are copied once and torch's fused
    kernel runs on the copies; otherwise foreach ops.
    """
    if eps_root == 0.0 and _fe.fusable(g, mu, nu):
        u, new_mu, new_nu = (torch._foreach_mul(x, 1.0) for x in (g, mu, nu))
        fused_adam_direction_(u, new_mu, new_nu, count, b1, b2, eps)
        return u, new_mu, new_nu
    new_mu = ema(mu, g, b1, inplace=False)
    new_nu = ema_sq(nu, g, b2, inplace=False)
    return adam_direction(new_mu, new_nu, count, b1, b2, eps, eps_root), new_mu, new_nu
