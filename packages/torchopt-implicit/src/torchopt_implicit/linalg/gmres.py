"""Restarted GMRES over tensor trees, for general (non-symmetric) systems."""

from __future__ import annotations

import torch
from torchopt.typing import TensorTree

from torchopt_implicit.linalg.utils import (
    FlatSystem,
    MatvecLike,
    all_true,
    safe_div,
    vdot_real,
)

__all__ = ['gmres']


def gmres(
    A: MatvecLike,  # noqa: N803
    b: TensorTree,
    x0: TensorTree | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    restart: int = 20,
    maxiter: int | None = None,
    M: MatvecLike | str | None = None,  # noqa: N803
    warn: bool | None = None,
) -> TensorTree:
    r"""Solve :math:`A x = b` for a general square :math:`A` by restarted GMRES.

    Each cycle builds an orthonormal Krylov basis :math:`V_k` of
    :math:`\{r_0, A M r_0, \dots\}` by Arnoldi with re-orthogonalized classical Gram-Schmidt, so
    that :math:`A M V_k = V_{k+1} \bar H_k`, and takes the minimal-residual correction

    .. math::

        x = x_0 + M V_k y_k, \qquad
        y_k = \arg\min_y \big\| \beta e_1 - \bar H_k y \big\|, \quad \beta = \|r_0\| .

    The cycle stops when the least-squares residual reaches
    :math:`\max(\text{rtol}\,\|b\|, \text{atol})` or after ``restart`` steps; the method restarts
    from the true residual until it converges or ``maxiter`` matvecs have been spent. ``M`` is
    applied on the right, so the residual that is tested is the true one.

    Args:
        A: a callable ``x -> A @ x`` over trees like ``b``, or a tree of square matrices.
        b: the right-hand side tree.
        x0: the initial guess, shaped like ``b`` (zeros by default).
        rtol: relative tolerance on the residual norm.
        atol: absolute tolerance on the residual norm.
        restart: Krylov subspace size of each cycle.
        maxiter: total number of Arnoldi steps (matvecs); defaults to 10 times the number of
            elements of ``b`` (at least 1).
        M: right preconditioner approximating :math:`A^{-1}` (callable, matrices, ``'jacobi'``).
        warn: warn with the residual when not converged (``None``: only if ``maxiter`` was not
            given).

    Returns:
        The approximate solution, a tree shaped like ``b``.
    """
    if not isinstance(restart, int) or restart < 1:
        raise ValueError(f'`restart` must be a positive integer, got {restart!r}')
    system = FlatSystem(A, b, x0, M, maxiter, rtol=rtol, atol=atol, warn=warn)
    tol_sq, matvec, precond = system.tol_sq, system.matvec, system.apply_precond

    x = system.x0
    r = system.initial_residual()
    rr = vdot_real(r, r)
    steps = 0
    while steps < system.maxiter:
        done = rr <= tol_sq
        if all_true(done):
            break
        beta = rr.sqrt()
        basis = [safe_div(r, beta.to(r.dtype))]
        hess = r.new_zeros((1, 0))
        beta_vec = beta.to(r.dtype).reshape(1)
        y = hess.new_zeros((0,))
        for j in range(min(restart, system.maxiter - steps)):
            w = matvec(precond(basis[j]))
            steps += 1
            vmat = torch.stack(basis)
            h = vmat.conj() @ w
            w = w - h @ vmat
            h2 = vmat.conj() @ w  # second pass keeps the basis orthogonal in finite precision
            w = w - h2 @ vmat
            h = h + h2
            h_next = vdot_real(w, w).sqrt()
            basis.append(safe_div(w, h_next.to(w.dtype)))
            hess = torch.cat(
                [
                    torch.cat([hess, hess.new_zeros((1, j))], dim=0),
                    torch.cat([h, h_next.to(h.dtype).reshape(1)]).unsqueeze(1),
                ],
                dim=1,
            )
            rhs = torch.cat([beta_vec, beta_vec.new_zeros(j + 1)])
            y = torch.linalg.lstsq(hess, rhs.unsqueeze(1)).solution.squeeze(1)
            res = rhs - hess @ y
            if all_true(vdot_real(res, res) <= tol_sq):
                break
        update = precond(y @ torch.stack(basis[: y.shape[0]]))
        x = x + torch.where(done, torch.zeros_like(update), update)
        r = system.b - matvec(x)
        rr = vdot_real(r, r)
    return system.finish('gmres', x, rr)
