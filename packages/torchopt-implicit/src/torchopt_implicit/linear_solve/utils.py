"""Helpers to build linear operators for the solvers (upstream ``torchopt.linear_solve.utils``)."""

from __future__ import annotations

from typing import Callable

import torch

from torchopt import pytree
from torchopt.typing import TensorTree
from torchopt_implicit.linalg.utils import TreeRaveler

__all__ = [
    'LinearOperator',
    'make_normal_matvec',
    'make_ridge_matvec',
    'make_rmatvec',
    'materialize_matvec',
]

Matvec = Callable[[TensorTree], TensorTree]


class LinearOperator:
    r"""A callable linear map ``x -> A @ x`` that may also know its transpose ``y -> A^T @ y``.

    The solvers accept any callable as ``matvec``; passing a :class:`LinearOperator` with
    ``rmatvec`` lets :func:`make_rmatvec` (and so :func:`~torchopt_implicit.linear_solve.solve_normal_cg`)
    use it instead of differentiating ``matvec``.

    Args:
        matvec: the map ``x -> A @ x``.
        rmatvec: the map ``y -> A^T @ y`` (optional).
    """

    __slots__ = ('matvec', 'rmatvec')

    def __init__(self, matvec: Matvec, rmatvec: Matvec | None = None) -> None:
        self.matvec = matvec
        self.rmatvec = rmatvec

    def __call__(self, x: TensorTree) -> TensorTree:
        """Apply the operator."""
        return self.matvec(x)


class FallbackTranspose(LinearOperator):
    r"""A :class:`LinearOperator` whose ``rmatvec`` is to be used only where a transpose is needed.

    For a ``matvec`` that cannot itself be differentiated (the implicit backward's products on a
    recorded graph), so that :func:`make_rmatvec` cannot take its VJP. Unlike a plain
    :class:`LinearOperator`, the solvers still probe such an operator for symmetry first and
    call ``rmatvec`` only for a non-symmetric ``A``.
    """

    __slots__ = ()


def make_rmatvec(matvec: Matvec, example_x: TensorTree) -> Matvec:
    r"""Return ``rmatvec(y) = A^T @ y`` from ``matvec(x) = A @ x``.

    Uses ``matvec.rmatvec`` for a :class:`LinearOperator` that has one; otherwise the transpose
    is the VJP of the linear map ``matvec`` (taken once, at ``example_x``).
    """
    if isinstance(matvec, LinearOperator) and matvec.rmatvec is not None:
        return matvec.rmatvec
    _, vjp_fn = torch.func.vjp(matvec, example_x)  # type: ignore[misc]  # stub: 3-tuple
    return lambda y: vjp_fn(y)[0]


def make_normal_matvec(matvec: Matvec) -> Matvec:
    r"""Return ``normal_matvec(y) = A^T @ A @ y`` from ``matvec(x) = A @ x``."""
    if isinstance(matvec, LinearOperator) and matvec.rmatvec is not None:
        rmatvec = matvec.rmatvec
        return lambda y: rmatvec(matvec(y))

    def normal_matvec(y: TensorTree) -> TensorTree:
        matvec_y, vjp_fn = torch.func.vjp(matvec, y)  # type: ignore[misc]  # stub: 3-tuple
        return vjp_fn(matvec_y)[0]

    return normal_matvec


def make_ridge_matvec(matvec: Matvec, ridge: float = 0.0) -> Matvec:
    r"""Return ``ridge_matvec(y) = A @ y + ridge * y`` from ``matvec(x) = A @ x``."""

    def ridge_matvec(y: TensorTree) -> TensorTree:
        return pytree.tree_map(lambda a, v: a + ridge * v, matvec(y), y)

    return ridge_matvec


def materialize_matvec(
    matvec: Matvec, x: TensorTree
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], Callable, Callable]:
    r"""Materialize the **full** matrix of ``matvec`` over the raveled tree ``x``.

    The leaves of ``x`` are raveled and concatenated into one vector of size :math:`N`; the
    returned matrix is the :math:`N \times N` matrix of ``matvec`` in that basis, cross-leaf
    couplings included (upstream kept only the per-leaf diagonal blocks). Its columns are the
    images of the unit vectors, computed in one :func:`torch.func.vmap`-batched call.

    Returns:
        ``(matrix, matvec_ravel, tree_ravel, tree_unravel)``: the matrix, ``matvec`` on flat
        vectors, and the maps from trees to flat vectors and back.
    """
    raveler = TreeRaveler(x, 'x')
    flat_mv = raveler.flat_matvec(matvec)
    ref = raveler.ravel(x)
    eye = torch.eye(raveler.size, dtype=ref.dtype, device=ref.device)
    try:
        images = torch.func.vmap(flat_mv)(eye)
    except RuntimeError:  # matvec not batchable (e.g. data-dependent control flow): column loop
        images = torch.stack([flat_mv(e) for e in eye.unbind(0)])
    return images.transpose(0, 1), flat_mv, raveler.ravel, raveler.unravel
