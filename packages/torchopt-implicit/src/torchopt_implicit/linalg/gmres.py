"""Restarted GMRES over tensor trees, for general (non-symmetric) systems."""

from __future__ import annotations

import math

import torch

from torchopt.typing import TensorTree
from torchopt_implicit.linalg.utils import (
    FlatSystem,
    MatvecLike,
    all_true,
    host_float,
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
    applied on the right, so the residual that is tested is the true one. For a real system
    outside :func:`torch.func.vmap` the small least-squares problem is updated by one Givens
    rotation per step on host floats (its residual norm comes for free); under ``vmap`` or for
    complex systems it is a batched least-squares solve of :math:`\bar H_k` at each step.

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
        # real and not under vmap: the small least-squares problem on host floats (Givens);
        # otherwise (vmap, complex) a batched lstsq of the Hessenberg matrix at each step
        givens = _Givens(host_float(beta)) if _host_scalars(rr, r) else None
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
            if givens is not None:
                column = torch.cat([h, h_next.to(h.dtype).reshape(1)]).tolist()
                if givens.add_column(column) ** 2 <= host_float(tol_sq):
                    break
                continue
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
        if givens is not None:
            y = torch.tensor(givens.solve(), dtype=r.dtype, device=r.device)
        update = precond(y @ torch.stack(basis[: y.shape[0]]))
        x = x + torch.where(done, torch.zeros_like(update), update)
        r = system.b - matvec(x)
        rr = vdot_real(r, r)
    return system.finish('gmres', x, rr)


def _host_scalars(rr: torch.Tensor, r: torch.Tensor) -> bool:
    """Whether the cycle can keep its small least-squares problem in Python floats."""
    if r.is_complex():
        return False
    try:
        host_float(rr)
    except RuntimeError:  # a vmap-batched tensor has no single value
        return False
    return True


class _Givens:
    r"""Incremental QR of the Hessenberg matrix :math:`\bar H_k` by Givens rotations, on floats.

    Each new column is rotated by the previous rotations, then a new rotation zeroes its
    subdiagonal entry; the rotated right-hand side :math:`g = Q (\beta e_1)` gives the residual
    norm :math:`|g_{k+1}|` of the least-squares problem without solving it.
    """

    def __init__(self, beta: float) -> None:
        self.g = [beta]
        self.rot: list[tuple[float, float]] = []
        self.cols: list[list[float]] = []

    def add_column(self, column: list[float]) -> float:
        """Append the Hessenberg column ``[h_0, ..., h_j, h_{j+1}]``; return the residual norm."""
        for i, (c, s) in enumerate(self.rot):
            upper, lower = column[i], column[i + 1]
            column[i], column[i + 1] = c * upper + s * lower, c * lower - s * upper
        j = len(self.rot)
        a, b = column[j], column[j + 1]
        rho = math.hypot(a, b)
        c, s = (a / rho, b / rho) if rho > 0 else (1.0, 0.0)
        self.rot.append((c, s))
        column[j] = rho
        self.cols.append(column[: j + 1])
        self.g.append(-s * self.g[j])
        self.g[j] *= c
        return abs(self.g[j + 1])

    def solve(self) -> list[float]:
        """Back-substitute :math:`R y = g_{1..k}`."""
        k = len(self.cols)
        y = [0.0] * k
        for i in range(k - 1, -1, -1):
            acc = self.g[i] - sum(self.cols[m][i] * y[m] for m in range(i + 1, k))
            y[i] = acc / self.cols[i][i] if self.cols[i][i] != 0 else 0.0
        return y
