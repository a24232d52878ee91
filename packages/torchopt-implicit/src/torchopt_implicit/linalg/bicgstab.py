"""Preconditioned BiCGSTAB over tensor trees, for general (non-symmetric) systems."""

from __future__ import annotations

from typing import Any, Callable

import torch

from torchopt.typing import TensorTree
from torchopt_implicit.linalg.utils import (
    FlatSystem,
    MatvecLike,
    all_true,
    axpy,
    host_float,
    scalar_div,
    vdot_real,
)

__all__ = ['bicgstab']


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.vdot(x, y) if x.is_complex() else torch.dot(x, y)


def bicgstab(
    A: MatvecLike,  # noqa: N803
    b: TensorTree,
    x0: TensorTree | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: MatvecLike | str | None = None,  # noqa: N803
    warn: bool | None = None,
) -> TensorTree:
    r"""Solve :math:`A x = b` for a general square :math:`A` by BiCGSTAB (van der Vorst, 1992).

    With shadow residual :math:`\hat r = r_0` and preconditioner :math:`M`, each iteration does

    .. math::

        \rho_k &= \langle \hat r, r_k \rangle, \quad
        p_k = r_k + \tfrac{\rho_k}{\rho_{k-1}} \tfrac{\alpha_{k-1}}{\omega_{k-1}}
              (p_{k-1} - \omega_{k-1} v_{k-1}), \quad v_k = A M p_k, \\
        \alpha_k &= \rho_k / \langle \hat r, v_k \rangle, \quad s = r_k - \alpha_k v_k, \quad
        t = A M s, \quad \omega_k = \langle t, s \rangle / \langle t, t \rangle, \\
        x_{k+1} &= x_k + \alpha_k M p_k + \omega_k M s, \quad r_{k+1} = s - \omega_k t .

    Two matvecs per iteration; stops when
    :math:`\|r\|^2 \le \max(\text{rtol}^2\|b\|^2, \text{atol}^2)`. Works under
    :func:`torch.func.vmap` like :func:`~torchopt_implicit.linalg.cg`.

    Args:
        A: a callable ``x -> A @ x`` over trees like ``b``, or a tree of square matrices.
        b: the right-hand side tree.
        x0: the initial guess, shaped like ``b`` (zeros by default).
        rtol: relative tolerance on the residual norm.
        atol: absolute tolerance on the residual norm.
        maxiter: iteration cap; defaults to 10 times the number of elements of ``b`` (at least 1).
        M: preconditioner approximating :math:`A^{-1}` (callable, matrices or ``'jacobi'``).
        warn: warn with the residual when not converged (``None``: only if ``maxiter`` was not
            given).

    Returns:
        The approximate solution, a tree shaped like ``b``.
    """
    system = FlatSystem(A, b, x0, M, maxiter, rtol=rtol, atol=atol, warn=warn)
    tol_sq, matvec, precond = system.tol_sq, system.matvec, system.apply_precond

    x = system.x0
    r = system.initial_residual()
    r_hat = r
    rr = vdot_real(r, r)
    try:
        rr_value, tol_value = host_float(rr), host_float(tol_sq)
        batched = False
    except RuntimeError:  # under vmap: mask converged problems, stop when all have converged
        batched = True
    # On CPU the scalar recurrences run on Python floats (an .item() is cheaper there than the
    # vmap-safe tensor divisions); on accelerators they stay on the device, one sync per step.
    host = not batched and not r.is_complex() and r.device.type == 'cpu'
    scal: Callable[[torch.Tensor], Any] = host_float if host else (lambda t: t)
    one = 1.0 if host else torch.ones((), dtype=r.dtype, device=r.device)
    rho, alpha, omega = one, one, one
    p = v = torch.zeros_like(r)
    for _ in range(system.maxiter):
        if batched:
            done = rr <= tol_sq
            if all_true(done):
                break
        elif rr_value <= tol_value:
            break
        rho_new = scal(_dot(r_hat, r))
        beta = scalar_div(rho_new, rho) * scalar_div(alpha, omega)
        p = axpy(r, axpy(p, v, -omega), beta)
        p_hat = precond(p)
        v = matvec(p_hat)
        alpha = scalar_div(rho_new, scal(_dot(r_hat, v)))
        s = axpy(r, v, -alpha)
        s_hat = precond(s)
        t = matvec(s_hat)
        omega = scalar_div(scal(_dot(t, s)), scal(_dot(t, t)))
        x_next = axpy(axpy(x, p_hat, alpha), s_hat, omega)
        r_next = axpy(s, t, -omega)
        if batched:
            x, r = torch.where(done, x, x_next), torch.where(done, r, r_next)
        else:
            x, r = x_next, r_next
        rho = rho_new
        rr = vdot_real(r, r)
        if not batched:
            rr_value = host_float(rr)  # the convergence test's host sync
    return system.finish('bicgstab', x, rr)
