"""Neumann-series approximations of ``A^{-1} b`` and ``A^{-1}`` (upstream ``torchopt.linalg.ns``)."""

from __future__ import annotations

from typing import Callable

import torch

from torchopt import pytree
from torchopt.typing import TensorTree
from torchopt_implicit.linalg.utils import MatvecLike

__all__ = ['ns', 'ns_inv']


def _check_iters(maxiter: int | None) -> int:
    if maxiter is None:
        return 10
    if not isinstance(maxiter, int) or isinstance(maxiter, bool) or maxiter < 0:
        raise ValueError(f'`maxiter` must be a non-negative integer or None, got {maxiter!r}')
    return maxiter


def _check_square(mat: torch.Tensor) -> None:
    if not isinstance(mat, torch.Tensor) or mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        shape = tuple(mat.shape) if isinstance(mat, torch.Tensor) else type(mat).__name__
        raise ValueError(f'`A` must be a square matrix, but has shape: {shape}')


def _ns_series(
    matvec: Callable[[TensorTree], TensorTree], b: TensorTree, maxiter: int, alpha: float | None
) -> TensorTree:
    term = b
    total = b
    for _ in range(maxiter):
        image = matvec(term)
        if alpha is None:
            term = pytree.tree_map(torch.sub, term, image)
        else:
            term = pytree.tree_map(lambda t, a: t - alpha * a, term, image)
        total = pytree.tree_map(torch.add, total, term)
    if alpha is not None:
        total = pytree.tree_map(lambda t: alpha * t, total)
    return total


def ns(
    A: MatvecLike,  # noqa: N803
    b: TensorTree,
    maxiter: int | None = None,
    *,
    alpha: float | None = None,
) -> TensorTree:
    r"""Approximate :math:`A^{-1} b` by a truncated Neumann series.

    .. math::

        A^{-1} b \approx \alpha \sum_{k=0}^{K} (I - \alpha A)^k b ,

    with :math:`K` = ``maxiter`` and :math:`\alpha = 1` when ``alpha`` is ``None``. The series
    converges when the spectral radius of :math:`I - \alpha A` is below one.

    Args:
        A: a callable ``x -> A @ x`` over trees like ``b``, or a tree of square matrices (then
            each leaf of ``b`` is solved against its own matrix).
        b: the right-hand side tree.
        maxiter: the number of series terms after the first (default 10).
        alpha: the step scaling :math:`\alpha` (default 1).

    Returns:
        The approximation of :math:`A^{-1} b`, shaped like ``b``.

    Raises:
        ValueError: if a matrix of ``A`` is not square or ``maxiter`` is negative.
    """
    maxiter = _check_iters(maxiter)
    if callable(A):
        return _ns_series(A, b, maxiter, alpha)
    mats, treespec = pytree.tree_flatten(A)
    for mat in mats:
        _check_square(mat)
    b_leaves = treespec.flatten_up_to(b)
    out = [_ns_series(m.__matmul__, v, maxiter, alpha) for m, v in zip(mats, b_leaves)]
    return pytree.tree_unflatten(treespec, out)


def _ns_inv_matrix(mat: torch.Tensor, maxiter: int, alpha: float | None) -> torch.Tensor:
    _check_square(mat)
    eye = torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device)
    step = eye - (mat if alpha is None else alpha * mat)
    if maxiter == 0:
        return torch.zeros_like(mat)
    power = eye
    total = eye
    for _ in range(maxiter - 1):
        power = power @ step
        total = total + power
    return total if alpha is None else alpha * total


def ns_inv(
    A: TensorTree,  # noqa: N803
    maxiter: int | None = None,
    *,
    alpha: float | None = None,
) -> TensorTree:
    r"""Approximate the inverse of each square matrix of ``A`` by a truncated Neumann series.

    .. math::

        A^{-1} \approx \alpha \sum_{k=0}^{K-1} (I - \alpha A)^k ,

    with :math:`K` = ``maxiter`` terms (one fewer than :func:`ns` uses, as upstream).

    Args:
        A: a square matrix or a tree of square matrices.
        maxiter: the number of series terms (default 10).
        alpha: the step scaling :math:`\alpha` (default 1).

    Returns:
        A tree of matrices shaped like ``A``.

    Raises:
        TypeError: if ``A`` is a callable (an explicit inverse needs matrices).
        ValueError: if a matrix is not square or ``maxiter`` is negative.
    """
    if callable(A):
        raise TypeError('`A` must be a square matrix or a tree of square matrices, not a callable')
    maxiter = _check_iters(maxiter)
    return pytree.tree_map(lambda m: _ns_inv_matrix(m, maxiter, alpha), A)
