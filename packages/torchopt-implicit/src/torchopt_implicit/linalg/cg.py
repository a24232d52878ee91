"""Preconditioned conjugate gradient over tensor trees (upstream ``torchopt.linalg.cg``)."""

from __future__ import annotations

import torch

from torchopt.typing import TensorTree
from torchopt_implicit.linalg.utils import FlatSystem, MatvecLike, all_true, host_float, vdot_real

__all__ = ['cg']


def cg(
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
    r"""Solve :math:`A x = b` for a symmetric (Hermitian) positive definite :math:`A` by CG.

    With residual :math:`r_k = b - A x_k`, preconditioned residual :math:`z_k = M r_k` and
    search direction :math:`p_0 = z_0`:

    .. math::

        \alpha_k = \frac{r_k^\top z_k}{p_k^\top A p_k}, \quad
        x_{k+1} = x_k + \alpha_k p_k, \quad
        r_{k+1} = r_k - \alpha_k A p_k, \quad
        p_{k+1} = z_{k+1} + \frac{r_{k+1}^\top z_{k+1}}{r_k^\top z_k} p_k .

    Iteration stops when :math:`\|r_k\|^2 \le \max(\text{rtol}^2 \|b\|^2, \text{atol}^2)` (SciPy's
    tolerance) or after ``maxiter`` iterations. The tree is flattened once into one vector, so
    each iteration is a handful of single-tensor operations. The loop uses no ``.item()`` on
    its iterates and works under :func:`torch.func.vmap` (each problem of a batch stops updating
    once it has converged; the loop ends when all have).

    Args:
        A: the operator: a callable ``x -> A @ x`` over trees like ``b``, or a tree of square
            matrices applied leaf-wise.
        b: the right-hand side (a tensor or a tree of tensors).
        x0: the initial guess, shaped like ``b`` (zeros by default).
        rtol: relative tolerance on the residual norm.
        atol: absolute tolerance on the residual norm.
        maxiter: iteration cap; defaults to 10 times the number of elements of ``b`` (at least
            one, so scalar systems are solved; upstream used the sum of the dimension sizes).
        M: preconditioner approximating :math:`A^{-1}`: a callable, a tree of matrices,
            ``'jacobi'`` (inverse diagonal of ``A``) or ``None``.
        warn: emit a :class:`~torchopt_implicit.linalg.utils.ConvergenceWarning` with the
            residual when the tolerance is not reached. ``None`` (default) warns only when
            ``maxiter`` was not given (an explicit cap is taken as a deliberate truncation).

    Returns:
        The approximate solution, a tree shaped like ``b``.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> cg(A, torch.tensor([1.0, 2.0]))
        tensor([0.0909, 0.6364])
    """
    system = FlatSystem(A, b, x0, M, maxiter, rtol=rtol, atol=atol, warn=warn)
    tol_sq, matvec, precond = system.tol_sq, system.matvec, system.precond
    dot = vdot_real if system.b.is_complex() else torch.dot

    x = system.x0
    r = system.initial_residual()
    z = r if precond is None else precond(r)
    p = z
    rz = dot(r, z)
    rr = rz if precond is None else dot(r, r)
    try:  # one host sync per iteration (the stopping test); none of the iterates leave the device
        tol = host_float(tol_sq)
        batched = False
    except RuntimeError:  # under vmap: mask converged problems, stop when all have converged
        tol, batched = 0.0, True
    for _ in range(system.maxiter):
        if batched:
            done = rr <= tol_sq
            if all_true(done):
                break
        elif host_float(rr) <= tol:
            break
        ap = matvec(p)
        pap = dot(p, ap)
        if batched:  # converged problems of the batch keep their iterates
            alpha = torch.where(done, 0.0, rz / torch.where(done, 1.0, pap))
        else:
            alpha = rz / pap
        x = torch.addcmul(x, p, alpha)
        r = torch.addcmul(r, ap, alpha, value=-1)
        z = r if precond is None else precond(r)
        rz_new = dot(r, z)
        if batched:
            beta = torch.where(done, 0.0, rz_new / torch.where(done, 1.0, rz))
        else:
            beta = rz_new / rz
        p = torch.addcmul(z, p, beta)
        rz = rz_new
        rr = rz if precond is None else dot(r, r)
    return system.finish('cg', x, rr)
