"""MINRES for symmetric (possibly indefinite) systems over tensor trees."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from torchopt.typing import TensorTree
from torchopt_implicit.linalg.utils import (
    ConvergenceWarning,
    FlatSystem,
    MatvecLike,
    all_true,
    axpy,
    host_float,
    max_value,
    vdot_real,
)

__all__ = ['minres', 'minres_with_status']

# A Python float, or a 0-d tensor under vmap: the recurrences are written once for both (duck
# typed), which a type checker cannot follow, so to it a scalar is Any.
Scalar = Any


def _sqrt(a: Scalar) -> Scalar:
    return math.sqrt(max(a, 0.0)) if isinstance(a, float) else torch.sqrt(torch.clamp(a, min=0.0))


def _nonzero(a: Scalar, tiny: float) -> Scalar:
    """``a`` with magnitudes below ``tiny`` raised to ``tiny`` (keeps the divisions finite)."""
    if isinstance(a, float):
        return a if abs(a) > tiny else tiny
    return torch.where(a.abs() > tiny, a, torch.full_like(a, tiny))


def minres(
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
    r"""Solve :math:`A x = b` for a symmetric (Hermitian), possibly indefinite :math:`A` by MINRES.

    MINRES picks :math:`x_k \in x_0 + \mathcal K_k(A, r_0)` minimizing :math:`\|b - A x_k\|`. The
    Lanczos recurrence (with :math:`\beta_1 q_1 = r_0`)

    .. math::

        \beta_{k+1} q_{k+1} = A q_k - \alpha_k q_k - \beta_k q_{k-1}, \qquad
        \alpha_k = q_k^\top A q_k,

    builds the tridiagonal :math:`T_k`; Givens rotations :math:`(c_k, s_k)` reduce it to upper
    triangular form, the residual norm is :math:`|\bar\phi_k| = |s_k \bar\phi_{k-1}|`
    (:math:`\bar\phi_0 = \beta_1`), and the iterate advances along
    :math:`w_k = (q_k - \delta_k w_{k-1} - \epsilon_k w_{k-2}) / \gamma_k` by
    :math:`\tau_k = c_k \bar\phi_{k-1}`. One matvec per iteration, like CG, but no positive
    definiteness is needed; on a definite system it takes about as many iterations as CG.

    With a preconditioner ``M`` (which must be symmetric positive definite) the recurrence runs
    in the :math:`M^{-1}` inner product and :math:`|\bar\phi_k|` is the :math:`M`-norm of the
    residual. Stopping: :math:`\bar\phi_k^2 \le \max(\text{rtol}^2 \|b\|^2, \text{atol}^2)` or
    ``maxiter``. Works under :func:`torch.func.vmap` (converged problems of a batch keep their
    iterate). Without a preconditioner it also stops at a least-squares solution of an
    inconsistent system (see :func:`minres_with_status`), warning that the residual tolerance
    was not met.

    Args:
        A: the operator: a callable ``x -> A @ x`` over trees like ``b``, or a tree of square
            matrices applied leaf-wise. Must be symmetric.
        b: the right-hand side (a tensor or a tree of tensors).
        x0: the initial guess, shaped like ``b`` (zeros by default).
        rtol: relative tolerance on the residual norm.
        atol: absolute tolerance on the residual norm.
        maxiter: iteration cap; defaults to 10 times the number of elements of ``b`` (at least 1).
        M: symmetric positive definite preconditioner approximating :math:`A^{-1}` (callable, tree
            of matrices, ``'jacobi'`` for a diagonal with positive entries) or ``None``.
        warn: emit a :class:`~torchopt_implicit.linalg.utils.ConvergenceWarning` with the
            residual when the tolerance is not reached (``None``: only if ``maxiter`` was not
            given).

    Returns:
        The approximate solution, a tree shaped like ``b``.

    Example:
        >>> A = torch.tensor([[1.0, 2.0], [2.0, -1.0]])  # symmetric, indefinite
        >>> minres(A, torch.tensor([3.0, 1.0]))
        tensor([1.0000, 1.0000])
    """
    x, _ = minres_with_status(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, warn=warn)
    return x


def _symmetry_gap(
    cross: Scalar, beta: Scalar, alpha_first: Scalar, t: torch.Tensor, batched: bool
) -> Scalar:
    """Whether ``v1^H A v2`` (``cross``) differs from ``v2^H A v1 = beta_2`` beyond round-off."""
    norm_t = torch.linalg.vector_norm(t)
    if not batched:
        norm_t = host_float(norm_t)
    scale = _sqrt(alpha_first * alpha_first + beta * beta) + norm_t
    return abs(cross - beta) > 64 * torch.finfo(t.real.dtype).eps * scale


def minres_with_status(
    A: MatvecLike,  # noqa: N803
    b: TensorTree,
    x0: TensorTree | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: MatvecLike | str | None = None,  # noqa: N803
    warn: bool | None = None,
    stagnation_window: int | None = None,
    check_symmetry: bool = False,
    check_residual: bool = False,
) -> tuple[TensorTree, str]:
    r""":func:`minres`, also returning why it stopped.

    The status is ``'converged'`` (the residual tolerance was met, by every problem of a
    ``vmap`` batch), ``'maxiter'``, ``'lstsq'``, ``'asymmetric'`` or ``'inaccurate'``. With
    ``check_residual=True`` a converged run is confirmed on the true residual
    :math:`b - A x` (one more product); ``'inaccurate'`` means the recurrence's estimate met the
    tolerance but the true residual did not.

    ``'lstsq'`` means MINRES stopped, without a preconditioner, at a
    least-squares solution of an inconsistent system (e.g. a singular :math:`A` with :math:`b`
    outside its range): :math:`\|A r_k\| \le \text{rtol} \cdot \|A\| \cdot \|r_k\|` while
    :math:`\|r_k\|` is still above the tolerance. From the recurrences, with no extra product,
    :math:`\|A r_k\| = |\bar\phi_k| \sqrt{\bar\gamma_{k+1}^2 + c_k^2 \beta_{k+2}^2}` and
    :math:`\|A\| \ge \max_j \|T e_j\|` (a lower bound, so that a consistent system stops this
    way only if its condition number exceeds ``1 / rtol``).

    In finite precision MINRES can miss that test on an inconsistent system with a tight
    ``rtol`` and then drift. With ``stagnation_window=W`` it also gives up (``'lstsq'``) once the
    residual norm fell by less than 0.1% over the last ``W`` iterations; meant for callers with
    a fallback (:func:`~torchopt_implicit.linear_solve.solve_normal_cg`), since a consistent
    system can plateau too.

    With ``check_symmetry=True`` (ignored with a preconditioner) the second product doubles as
    a symmetry test at no extra cost: for a symmetric ``A``,
    :math:`v_1^\top A v_2 = v_2^\top A v_1 = \beta_2`; a larger gap than round-off stops MINRES
    with ``'asymmetric'``.
    """
    system = FlatSystem(A, b, x0, M, maxiter, rtol=rtol, atol=atol, warn=warn)
    matvec, precond = system.matvec, system.precond
    dot = vdot_real if system.b.is_complex() else torch.dot
    tiny = torch.finfo(system.b.real.dtype).tiny ** 0.5
    check_lstsq = precond is None

    x = system.x0
    q = system.initial_residual()  # residual-space Lanczos vector beta_k * M^{-1} v_k
    z = q if precond is None else precond(q)
    beta: Scalar = _sqrt(dot(q, z))
    tol_sq: Scalar
    try:  # plain Python scalars for the recurrences unless running under vmap
        beta, tol_sq = host_float(beta), host_float(system.tol_sq)
        batched = False
    except RuntimeError:
        tol_sq, batched = system.tol_sq, True
    phibar: Scalar = beta
    q_prev = torch.zeros_like(q)
    w = w_prev = torch.zeros_like(x)
    beta_prev: Scalar = 1.0
    c1 = c2 = 1.0  # the last two rotations (identity at the start)
    s1 = s2 = 0.0
    res_sq: Scalar = phibar * phibar
    lstsq: Scalar = False if not batched else torch.zeros_like(system.tol_sq, dtype=torch.bool)
    anorm_sq: Scalar = 0.0  # max_j ||T e_j||^2 <= ||A||^2
    history: list[Scalar] = []  # residual norms^2 of the last `stagnation_window` iterations
    check_symmetry = check_symmetry and precond is None
    full_dot = torch.vdot if system.b.is_complex() else torch.dot
    asymmetric = False
    alpha: Scalar = 0.0
    k = 0
    for k in range(system.maxiter):
        if batched:
            done = (res_sq <= tol_sq) | lstsq
            if all_true(done):
                break
        elif res_sq <= tol_sq or lstsq:
            break
        if stagnation_window:
            history.append(res_sq)
            if len(history) > stagnation_window:
                stalled = res_sq > 0.998 * history.pop(0)  # < 0.1% decrease of the norm
                if batched:
                    lstsq = lstsq | (stalled & (res_sq > tol_sq))
                    done = done | lstsq
                    if all_true(done):
                        break
                elif stalled:
                    lstsq = True
                    break
        v = z / _nonzero(beta, tiny)
        t = matvec(v)
        if check_symmetry and k == 1:  # t = A v2, q_prev = beta_1 v1, beta = beta_2
            cross: Scalar = full_dot(q_prev, t)
            if not batched:
                cross = complex(cross.detach()) if cross.is_complex() else host_float(cross)
            gap = _symmetry_gap(cross / beta_prev, beta, alpha, t, batched)
            if gap if not batched else not all_true(~gap):
                asymmetric = True
                break
        if k > 0:
            t = axpy(t, q_prev, -beta / beta_prev)
        alpha = dot(v, t)
        if not batched:
            alpha = host_float(alpha)
        t = axpy(t, q, -alpha / _nonzero(beta, tiny))
        z_next = t if precond is None else precond(t)
        tz = dot(t, z_next)
        beta_next = _sqrt(tz if batched else host_float(tz))
        # Rotate the new column (beta_k above the diagonal, alpha_k on it, beta_{k+1} below).
        above = beta if k > 0 else 0.0 * beta
        eps = s2 * above
        dbar = c2 * above
        delta = c1 * dbar + s1 * alpha
        gbar = c1 * alpha - s1 * dbar
        if check_lstsq:  # ||A r|| / (||A|| ||r||) of the current iterate (before this update)
            col_sq = alpha * alpha + above * above + beta_next * beta_next
            cb = c1 * beta_next
            ratio_sq = gbar * gbar + cb * cb  # = ||A r||^2 / ||r||^2
            if batched:
                anorm_sq = torch.maximum(torch.as_tensor(anorm_sq).to(col_sq), col_sq)
                lstsq = lstsq | ((ratio_sq <= rtol * rtol * anorm_sq) & (res_sq > tol_sq))
                done = done | lstsq
            else:
                anorm_sq = max(anorm_sq, col_sq)
                if ratio_sq <= rtol * rtol * anorm_sq:
                    lstsq = True
                    break
        gamma = _nonzero(_sqrt(gbar * gbar + beta_next * beta_next), tiny)
        c, s = gbar / gamma, beta_next / gamma
        tau = c * phibar
        phibar = -s * phibar
        w, w_prev = axpy(axpy(v, w, -delta), w_prev, -eps).div_(gamma), w  # a fresh tensor
        x_next = axpy(x, w, tau)
        x = torch.where(done, x, x_next) if batched else x_next
        q_prev, q, z = q, t, z_next
        beta_prev, beta = beta, beta_next
        c2, s2, c1, s1 = c1, s1, c, s
        # under vmap a converged problem keeps its (passing) residual, so it stays converged
        res_sq = torch.where(done, res_sq, phibar * phibar) if batched else phibar * phibar
    if asymmetric:
        return system.result(x), 'asymmetric'
    if not isinstance(res_sq, torch.Tensor):
        res_sq = torch.tensor(res_sq, dtype=system.tol_sq.dtype, device=system.tol_sq.device)
    if all_true(res_sq <= system.tol_sq):
        if check_residual:
            true_r = system.b - matvec(x)
            if not all_true(vdot_real(true_r, true_r) <= system.tol_sq):
                return system.result(x), 'inaccurate'
        return system.result(x), 'converged'
    if not all_true(lstsq | (res_sq <= system.tol_sq)):
        return system.finish('minres', x, res_sq), 'maxiter'
    if system.warn:
        warnings.warn(
            f'minres stopped at a least-squares solution (inconsistent system?) after {k} '
            f'iterations: residual norm {math.sqrt(max(max_value(res_sq), 0.0)):.3e} > tolerance '
            f'{math.sqrt(max(max_value(system.tol_sq), 0.0)):.3e}',
            ConvergenceWarning,
            stacklevel=3,
        )
    return system.result(x), 'lstsq'
