"""Linear solvers ``solver(matvec, b) -> x`` built from the routines of :mod:`torchopt_implicit.linalg`.

Every public function here is a factory: ``solve_x(**kwargs)`` returns
``functools.partial(_solve_x, **kwargs)``, a solver with the call signature
``solver(matvec, b, **overrides)``; keywords given at call time override the bound ones.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from torchopt import pytree
from torchopt.typing import TensorTree
from torchopt_implicit import linalg
from torchopt_implicit.linalg.minres import minres_with_status
from torchopt_implicit.linalg.utils import TreeRaveler, all_true
from torchopt_implicit.linear_solve.utils import (
    FallbackTranspose,
    LinearOperator,
    make_ridge_matvec,
    make_rmatvec,
    materialize_matvec,
)

__all__ = ['solve_bicgstab', 'solve_cg', 'solve_gmres', 'solve_inv', 'solve_normal_cg']

Matvec = Callable[[TensorTree], TensorTree]
_ITERATIVE_KWARGS = frozenset(
    {'matvec', 'b', 'ridge', 'init', 'rtol', 'atol', 'maxiter', 'M', 'warn'}
)


def _factory(fn: Callable[..., TensorTree], allowed: frozenset[str], kwargs: dict[str, Any]) -> Any:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f'{fn.__name__.lstrip("_")}() got unexpected keyword argument(s) {unknown}; '
            f'accepted: {sorted(allowed)}'
        )
    return functools.partial(fn, **kwargs)


def _with_ridge(matvec: Matvec, ridge: float | None) -> Matvec:
    return matvec if ridge is None else make_ridge_matvec(matvec, ridge)


def _solve_cg(
    matvec: Matvec,
    b: TensorTree,
    ridge: float | None = None,
    init: TensorTree | None = None,
    **kwargs: Any,
) -> TensorTree:
    return linalg.cg(_with_ridge(matvec, ridge), b, x0=init, **kwargs)


def solve_cg(**kwargs: Any) -> Callable[..., TensorTree]:
    r"""Solver factory: conjugate gradient on :math:`(A + \text{ridge}\, I)\, x = b`.

    ``A`` (given by ``matvec``) must be symmetric positive definite, e.g. the Hessian of a
    strictly convex inner objective.

    Args:
        **kwargs: ``ridge`` (float, default ``None``), ``init`` (initial guess), and the keywords
            of :func:`torchopt_implicit.linalg.cg`: ``rtol``, ``atol``, ``maxiter``, ``M``
            (callable, matrices or ``'jacobi'``), ``warn``.

    Returns:
        ``solver(matvec, b, **overrides) -> x``.

    Example:
        >>> solver = solve_cg(ridge=1e-3, maxiter=50)
        >>> x = solver(lambda v: 2.0 * v, torch.ones(3))
    """
    return _factory(_solve_cg, _ITERATIVE_KWARGS, kwargs)


def _is_symmetric(matvec: Matvec, example: TensorTree) -> bool:
    """Probe ``q^T A p == p^T A q`` with two fixed quasi-random vectors (2 matvecs).

    The probes are deterministic (no random number generator, so this also runs under
    :func:`torch.func.vmap`); for a non-symmetric ``A`` equality within round-off is a
    measure-zero coincidence.
    """
    raveler = TreeRaveler(example, 'b')
    ref = raveler.ravel(example)
    if ref.is_complex():
        return False
    idx = torch.arange(raveler.size, device=ref.device, dtype=ref.dtype)
    probes = torch.stack([torch.sin(idx * 12.9898 + 1.0), torch.cos(idx * 78.233 + 0.5)])
    flat_mv = raveler.flat_matvec(matvec)
    p, q = probes.unbind(0)
    ap, aq = flat_mv(p), flat_mv(q)
    gap = (torch.dot(q, ap) - torch.dot(p, aq)).abs()
    scale = torch.linalg.vector_norm(ap) * torch.linalg.vector_norm(q)
    scale = scale + torch.linalg.vector_norm(aq) * torch.linalg.vector_norm(p)
    return all_true(gap <= 64 * torch.finfo(ref.dtype).eps * scale)


def _solve_symmetric(
    matvec: Matvec, b: TensorTree, init: TensorTree | None, kwargs: dict[str, Any]
) -> tuple[TensorTree | None, bool]:
    """MINRES on ``A`` itself, if ``A`` turns out symmetric: ``(solution or None, symmetric)``.

    The normal equations square the condition number (CG on them needs about ``kappa`` instead
    of ``sqrt(kappa)`` iterations, each with two matvecs). For a symmetric ``A``, MINRES reaches
    the same solution in far fewer products and, indefinite or not, needs no definiteness. Its
    second product doubles as the symmetry test; the solution is returned only if the true
    residual meets the tolerance.
    """
    options = {key: kwargs[key] for key in ('rtol', 'atol', 'maxiter') if key in kwargs}
    x, status = minres_with_status(
        matvec, b, x0=init, warn=False, stagnation_window=10, check_symmetry=True,
        check_residual=True, **options,
    )  # fmt: skip
    # otherwise: asymmetric, or maxiter / least-squares / inaccurate (e.g. a singular A)
    return (x if status == 'converged' else None), status != 'asymmetric'


def _solve_normal_cg(
    matvec: Matvec,
    b: TensorTree,
    ridge: float | None = None,
    init: TensorTree | None = None,
    **kwargs: Any,
) -> TensorTree:
    example_x = b if init is None else init
    real = not any(leaf.is_complex() for leaf in pytree.tree_leaves(b))
    if (  # a FallbackTranspose's rmatvec is costly: probe its symmetry first (below)
        isinstance(matvec, LinearOperator)
        and not isinstance(matvec, FallbackTranspose)
        and matvec.rmatvec is not None
    ):
        rmatvec = matvec.rmatvec
    elif ridge is None and kwargs.get('M') is None and real:
        solution, symmetric = _solve_symmetric(matvec, b, init, kwargs)
        if solution is not None:
            return solution
        # MINRES found A non-symmetric, or could not meet the tolerance (e.g. a singular A)
        rmatvec = matvec if symmetric else make_rmatvec(matvec, example_x)
    elif _is_symmetric(matvec, example_x):
        rmatvec = matvec  # A^T = A: no VJP-of-VJP needed
    else:
        rmatvec = make_rmatvec(matvec, example_x)

    def normal_matvec(x: TensorTree) -> TensorTree:
        return rmatvec(matvec(x))

    rhs = rmatvec(b)
    return linalg.cg(_with_ridge(normal_matvec, ridge), rhs, x0=init, **kwargs)


def solve_normal_cg(**kwargs: Any) -> Callable[..., TensorTree]:
    r"""Solver factory: CG on the normal equations :math:`(A^\top A + \text{ridge}\, I)\, x = A^\top b`.

    Works for any non-singular ``A`` (squares its condition number). :math:`A^\top` comes from
    ``matvec.rmatvec`` when ``matvec`` is a
    :class:`~torchopt_implicit.linear_solve.utils.LinearOperator` that has one; otherwise two
    probe products test whether ``A`` is symmetric (then :math:`A^\top = A`, e.g. the Hessian
    of an inner objective, and no VJP of a VJP is needed), and if not, :math:`A^\top` is the VJP
    of ``matvec`` at ``init`` (or ``b``).

    **Symmetric shortcut.** When neither ``ridge`` nor ``M`` is given (and ``b`` is real), the
    normal equations are tried last: :func:`torchopt_implicit.linalg.minres` first solves
    :math:`A x = b` directly (condition number :math:`\kappa` instead of :math:`\kappa^2`, one
    product per iteration instead of two; definite or not), its second product doubling as the
    symmetry test (a non-symmetric ``A`` stops it there), to ``rtol``/``atol`` on the residual
    :math:`\|b - A x\|`, which bounds the error at least as tightly as the normal-equation
    residual would. The true residual is checked with one more product. If MINRES misses the
    tolerance (an inconsistent system such as a singular ``A`` with ``b`` outside its range, which
    MINRES detects as a least-squares stop, or ``maxiter``), CG on the normal equations runs as
    without the shortcut and returns its minimum-norm least-squares solution, as upstream.

    Args:
        **kwargs: ``ridge``, ``init`` and the keywords of :func:`torchopt_implicit.linalg.cg`.

    Returns:
        ``solver(matvec, b, **overrides) -> x``.
    """
    return _factory(_solve_normal_cg, _ITERATIVE_KWARGS, kwargs)


def _solve_gmres(
    matvec: Matvec,
    b: TensorTree,
    ridge: float | None = None,
    init: TensorTree | None = None,
    **kwargs: Any,
) -> TensorTree:
    return linalg.gmres(_with_ridge(matvec, ridge), b, x0=init, **kwargs)


def solve_gmres(**kwargs: Any) -> Callable[..., TensorTree]:
    r"""Solver factory: restarted GMRES on :math:`(A + \text{ridge}\, I)\, x = b` (any square ``A``).

    Args:
        **kwargs: ``ridge``, ``init`` and the keywords of :func:`torchopt_implicit.linalg.gmres`
            (``rtol``, ``atol``, ``restart``, ``maxiter``, ``M``, ``warn``).

    Returns:
        ``solver(matvec, b, **overrides) -> x``.
    """
    return _factory(_solve_gmres, _ITERATIVE_KWARGS | {'restart'}, kwargs)


def _solve_bicgstab(
    matvec: Matvec,
    b: TensorTree,
    ridge: float | None = None,
    init: TensorTree | None = None,
    **kwargs: Any,
) -> TensorTree:
    return linalg.bicgstab(_with_ridge(matvec, ridge), b, x0=init, **kwargs)


def solve_bicgstab(**kwargs: Any) -> Callable[..., TensorTree]:
    r"""Solver factory: BiCGSTAB on :math:`(A + \text{ridge}\, I)\, x = b` (any square ``A``).

    Args:
        **kwargs: ``ridge``, ``init`` and the keywords of
            :func:`torchopt_implicit.linalg.bicgstab`.

    Returns:
        ``solver(matvec, b, **overrides) -> x``.
    """
    return _factory(_solve_bicgstab, _ITERATIVE_KWARGS, kwargs)


def _solve_inv(
    matvec: Matvec, b: TensorTree, ridge: float | None = None, ns: bool = False, **kwargs: Any
) -> TensorTree:
    matvec = _with_ridge(matvec, ridge)
    if ns:
        return linalg.ns(matvec, b, **kwargs)
    if kwargs:
        raise TypeError(f'solve_inv() without ns=True takes no keyword(s) {sorted(kwargs)}')
    leaves = pytree.tree_leaves(b)
    if len(leaves) == 1 and leaves[0].ndim == 0:
        return pytree.tree_map(lambda v, a: v / a, b, matvec(pytree.tree_map(torch.ones_like, b)))
    matrix, _, _, unravel = materialize_matvec(matvec, b)
    raveler = TreeRaveler(b, 'b')
    return unravel(torch.linalg.solve(matrix, raveler.ravel(b)))


def solve_inv(**kwargs: Any) -> Callable[..., TensorTree]:
    r"""Solver factory: direct solve of :math:`(A + \text{ridge}\, I)\, x = b`.

    * scalar ``b``: :math:`x = b / A`;
    * ``ns=True``: Neumann series :func:`torchopt_implicit.linalg.ns` (keywords ``maxiter``,
      ``alpha``);
    * otherwise the full :math:`N \times N` matrix over all leaves of ``b`` is materialized
      (batched matvecs on the unit vectors) and solved with :func:`torch.linalg.solve`. Unlike
      upstream, couplings between different leaves are kept.

    Args:
        **kwargs: ``ridge``, ``ns`` and, with ``ns=True``, ``maxiter`` and ``alpha``.

    Returns:
        ``solver(matvec, b, **overrides) -> x``.
    """
    return _factory(
        _solve_inv, frozenset({'matvec', 'b', 'ridge', 'ns', 'maxiter', 'alpha'}), kwargs
    )
