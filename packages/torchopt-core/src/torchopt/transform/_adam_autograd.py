"""Adam's differentiable update as one autograd node with a hand-written, exact backward.

Recorded op by op, an Adam step keeps five tensors per parameter for the outer backward
(``g`` for ``g*g``, the square root, the bias-corrected moment and the denominator). This
function keeps three (``g`` and the new moments) and recomputes the denominator in backward.
The backward is written with differentiable ops, so second-order gradients work. Inside
``torch.func`` transforms the op-by-op path is used instead (this node has no vmap rule).
"""

from __future__ import annotations

from typing import Any

import torch

from torchopt.transform._adam_kernels import adam_step_untracked

__all__ = ['adam_update_diff']


class _AdamUpdate(torch.autograd.Function):
    """``(g, mu, nu) -> (u, mu', nu')`` for lists of tensors (flattened into the arguments)."""

    @staticmethod
    def forward(ctx: Any, hyper: tuple, n: int, *tensors: torch.Tensor) -> tuple:
        b1, b2, eps, eps_root, counts, bc1, bc2 = hyper
        g, mu, nu = list(tensors[:n]), list(tensors[n : 2 * n]), list(tensors[2 * n :])
        u, new_mu, new_nu = adam_step_untracked(g, mu, nu, counts, bc1, bc2, b1, b2, eps, eps_root)
        ctx.save_for_backward(*g, *new_mu, *new_nu)
        ctx.hyper, ctx.n = hyper, n
        return (*u, *new_mu, *new_nu)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple:
        b1, b2, eps, eps_root, _, bc1s, bc2s = ctx.hyper
        n = ctx.n
        saved = ctx.saved_tensors
        g, new_mu, new_nu = saved[:n], saved[n : 2 * n], saved[2 * n :]
        gu, gmu, gnu = grads[:n], grads[n : 2 * n], grads[2 * n :]
        out_g, out_mu, out_nu = [], [], []
        for i in range(n):
            bc1 = bc1s[i] if isinstance(bc1s, list) else bc1s
            bc2 = bc2s[i] if isinstance(bc2s, list) else bc2s
            root = torch.sqrt(new_nu[i] / bc2 + eps_root)  # sqrt(nu_hat + eps_root)
            denom = (root + eps) * bc1
            d_mu = gmu[i] + gu[i] / denom
            # u = mu' / ((root + eps) bc1);  du/dnu' = -u / (root + eps) / (2 root bc2). Where
            # root is 0 (nu' = 0 and eps_root = 0: an entry whose gradient was always 0) the
            # chain through the square root contributes 0, as in the recorded path (_foreach).
            positive = root > 0
            inv_root = torch.where(positive, 1.0 / torch.where(positive, root, 1.0), 0.0)
            d_nu = gnu[i] - gu[i] * new_mu[i] / (denom * (root + eps)) * inv_root / (2.0 * bc2)
            out_g.append((1.0 - b1) * d_mu + (2.0 * (1.0 - b2)) * g[i] * d_nu)
            out_mu.append(b1 * d_mu)
            out_nu.append(b2 * d_nu)
        return (None, None, *out_g, *out_mu, *out_nu)


def adam_update_diff(
    g: list,
    mu: list,
    nu: list,
    counts: list,
    bc1: Any,
    bc2: Any,
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
) -> tuple[list, list, list]:
    """Differentiable Adam step on flat lists: ``(direction, new_mu, new_nu)``.

    ``counts`` are the new step counts, ``bc1``/``bc2`` the bias corrections (a float, or one per
    leaf).
    """
    n = len(g)
    out = _AdamUpdate.apply((b1, b2, eps, eps_root, counts, bc1, bc2), n, *g, *mu, *nu)
    return list(out[:n]), list(out[n : 2 * n]), list(out[2 * n :])
