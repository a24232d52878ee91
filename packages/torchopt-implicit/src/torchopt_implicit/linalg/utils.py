"""Utilities shared by the iterative linear-algebra routines (upstream ``torchopt.linalg.utils``).

Public helpers: :func:`normalize_matvec` (turn a tree of square matrices into a matvec),
:func:`cat_shapes`, :func:`jacobi_preconditioner` and the :class:`ConvergenceWarning` category.

Internally every solver works on **one flat vector**: the leaves of the right-hand side tree are
raveled and concatenated once (:class:`TreeRaveler`), so that the inner loops are single-tensor
operations (no per-leaf Python loops, batchable by :func:`torch.func.vmap`).
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from typing import Any, Callable, Union

import torch

from torchopt import pytree
from torchopt.typing import TensorTree

__all__ = [
    'ConvergenceWarning',
    'FlatSystem',
    'MatvecLike',
    'TreeRaveler',
    'all_true',
    'cat_shapes',
    'host_float',
    'jacobi_preconditioner',
    'max_value',
    'normalize_matvec',
    'vdot_real',
    'warn_not_converged',
]

#: A linear operator: a callable ``x -> A @ x`` over tensor trees or a tree of square matrices.
MatvecLike = Union[Callable[[TensorTree], TensorTree], TensorTree]


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at ``maxiter`` before reaching its tolerance."""


def cat_shapes(tree: TensorTree) -> tuple[int, ...]:
    """Concatenate the shapes of all leaves of ``tree`` into one tuple.

    Example:
        >>> cat_shapes((torch.zeros(2, 3), torch.zeros(4)))
        (2, 3, 4)
    """
    return functools.reduce(operator.add, (tuple(t.shape) for t in pytree.tree_leaves(tree)), ())


def normalize_matvec(matvec: MatvecLike) -> Callable[[TensorTree], TensorTree]:
    """Return ``matvec`` as a callable.

    A callable passes through unchanged. A tensor tree of square matrices becomes the function
    that multiplies each leaf of its argument by the matching matrix (``torch.matmul``).

    Raises:
        TypeError: if a leaf is not a square matrix (2-D tensor with equal dimensions).
        ValueError: (when called) if the argument has a different number of leaves.
    """
    if callable(matvec):
        return matvec

    mat_flat, treespec = pytree.tree_flatten(matvec)
    for mat in mat_flat:
        if not isinstance(mat, torch.Tensor) or mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
            shape = tuple(mat.shape) if isinstance(mat, torch.Tensor) else type(mat).__name__
            raise TypeError(f'Linear operator must be a square matrix, but has shape: {shape}')

    def _matvec(x: TensorTree) -> TensorTree:
        x_flat = pytree.tree_leaves(x)
        if len(x_flat) != len(mat_flat):
            raise ValueError(
                f'`x` must have the same number of leaves as `matvec`, '
                f'but {len(x_flat)} != {len(mat_flat)}'
            )
        return pytree.tree_unflatten(treespec, list(map(torch.matmul, mat_flat, x_flat)))

    return _matvec


class TreeRaveler:
    """Maps a tensor tree to one 1-D vector (the leaves raveled and concatenated) and back.

    The vector uses the promoted dtype of all leaves; :meth:`unravel` casts each leaf back.

    Args:
        example: a tensor tree whose structure, shapes and dtypes define the mapping.
        name: the argument name used in error messages.
    """

    def __init__(self, example: TensorTree, name: str = 'b') -> None:
        leaves, self.treespec = pytree.tree_flatten(example)
        if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
            raise TypeError(f'`{name}` must be a non-empty tree of tensors, got {example!r}')
        self.name = name
        self.shapes = [t.shape for t in leaves]
        self.numels = [t.numel() for t in leaves]
        self.dtypes = [t.dtype for t in leaves]
        self.dtype = functools.reduce(torch.promote_types, self.dtypes)
        self.size = sum(self.numels)
        self.num_leaves = len(leaves)
        # A bare 1-D tensor of the working dtype is its own flat vector (no reshape, no copy).
        self.trivial = (
            self.treespec.is_leaf() and len(self.shapes[0]) == 1 and self.dtypes[0] == self.dtype
        )

    def ravel(self, tree: TensorTree) -> torch.Tensor:
        """Concatenate the raveled leaves of ``tree`` (same structure as the example)."""
        if (
            self.trivial
            and isinstance(tree, torch.Tensor)
            and tree.dtype == self.dtype
            and tree.dim() == 1
            and tree.numel() == self.size
        ):
            return tree
        leaves = pytree.tree_leaves(tree)
        if len(leaves) != self.num_leaves:
            raise ValueError(
                f'expected a tree with {self.num_leaves} leaves like `{self.name}`, '
                f'got {len(leaves)} leaves'
            )
        if self.num_leaves == 1:
            return leaves[0].reshape(-1).to(self.dtype)
        return torch.cat([t.reshape(-1).to(self.dtype) for t in leaves])

    def unravel(self, vec: torch.Tensor) -> TensorTree:
        """Split ``vec`` back into a tree shaped like the example."""
        if self.trivial:
            return vec
        if self.num_leaves == 1:
            return pytree.tree_unflatten(
                self.treespec, [vec.reshape(self.shapes[0]).to(self.dtypes[0])]
            )
        parts = torch.split(vec, self.numels)
        leaves = [p.reshape(s).to(d) for p, s, d in zip(parts, self.shapes, self.dtypes)]
        return pytree.tree_unflatten(self.treespec, leaves)

    def flat_matvec(self, matvec: Callable[[TensorTree], TensorTree]) -> Callable[..., Any]:
        """Wrap a tree matvec into a function on flat vectors."""
        return lambda v: self.ravel(matvec(self.unravel(v)))


class FlatSystem:
    """A linear system ``A x = b`` over tensor trees, recast on flat vectors for the solvers.

    Args:
        A: the operator (callable or tree of square matrices).
        b: the right-hand side tree.
        x0: the initial guess (zeros when ``None``); must have ``b``'s structure and shapes.
        M: the preconditioner: ``None``, ``'jacobi'``, a callable or a tree of matrices.
        maxiter: the iteration cap; ``None`` gives ``default_factor`` times the number of
            elements of ``b`` (at least 1).
        rtol, atol: the stopping tolerances (see :meth:`tolerance_sq`).
        warn: warn with the residual when not converged (``None``: only if ``maxiter`` was not
            given).
    """

    def __init__(
        self,
        A: MatvecLike,  # noqa: N803
        b: TensorTree,
        x0: TensorTree | None,
        M: MatvecLike | str | None,  # noqa: N803
        maxiter: int | None,
        default_factor: int = 10,
        *,
        rtol: float = 1e-5,
        atol: float = 0.0,
        warn: bool | None = None,
    ) -> None:
        self.warn = maxiter is None if warn is None else warn
        self.x0_given = x0 is not None
        self.raveler = TreeRaveler(b, 'b')
        self.b = self.raveler.ravel(b)
        if x0 is None:
            self.x0 = torch.zeros_like(self.b)
        else:
            x0_leaves, x0_spec = pytree.tree_flatten(x0)
            if (
                x0_spec != self.raveler.treespec
                or [t.shape for t in x0_leaves] != self.raveler.shapes
            ):
                raise ValueError(
                    f'`x0` must have the same structure and shapes as `b`, got '
                    f'{x0_spec} with shapes {[tuple(t.shape) for t in x0_leaves]} for `x0` and '
                    f'{self.raveler.treespec} with shapes {[tuple(s) for s in self.raveler.shapes]} for `b`'
                )
            self.x0 = self.raveler.ravel(x0)
        matvec = normalize_matvec(A)
        self.matvec = self.raveler.flat_matvec(matvec)
        if M is None:
            self.precond = None
        elif isinstance(M, str):
            if M != 'jacobi':
                raise ValueError(f"`M` must be None, 'jacobi', a callable or matrices, got {M!r}")
            self.precond = self.raveler.flat_matvec(jacobi_preconditioner(matvec, b))
        else:
            self.precond = self.raveler.flat_matvec(normalize_matvec(M))
        if maxiter is None:
            maxiter = max(default_factor * self.raveler.size, 1)
        elif not isinstance(maxiter, int) or isinstance(maxiter, bool) or maxiter < 0:
            raise ValueError(f'`maxiter` must be a non-negative integer or None, got {maxiter!r}')
        self.maxiter = maxiter
        self.tol_sq = self.tolerance_sq(rtol, atol)

    def initial_residual(self) -> torch.Tensor:
        """``b - A x0`` (``b`` itself when no initial guess was given)."""
        return self.b - self.matvec(self.x0) if self.x0_given else self.b

    def finish(self, name: str, x: torch.Tensor, rr: torch.Tensor) -> TensorTree:
        """Warn (if asked) when ``||r||^2 = rr`` missed the tolerance; return ``x`` as a tree."""
        if self.warn and not all_true(rr <= self.tol_sq):
            warn_not_converged(name, self.maxiter, rr, self.tol_sq)
        return self.result(x)

    def apply_precond(self, v: torch.Tensor) -> torch.Tensor:
        """``M v`` (identity without a preconditioner)."""
        return v if self.precond is None else self.precond(v)

    def tolerance_sq(self, rtol: float, atol: float) -> torch.Tensor:
        """Squared stopping threshold ``max(rtol**2 * ||b||**2, atol**2)`` (a tensor)."""
        if rtol < 0 or atol < 0:
            raise ValueError(
                f'`rtol` and `atol` must be non-negative, got rtol={rtol}, atol={atol}'
            )
        bb = vdot_real(self.b, self.b)
        return torch.clamp(bb * (rtol * rtol), min=atol * atol)

    def result(self, x: torch.Tensor) -> TensorTree:
        """Unravel the flat solution into ``b``'s structure."""
        return self.raveler.unravel(x)


def vdot_real(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Real part of ``sum(conj(x) * y)`` for flat vectors, as a 0-d tensor (no sync)."""
    if x.is_complex():
        return torch.vdot(x, y).real
    return torch.dot(x, y)


def axpy(y: torch.Tensor, x: torch.Tensor, a: float | complex | torch.Tensor) -> torch.Tensor:
    """``y + a * x`` for a Python number or a 0-d tensor ``a`` (one kernel either way)."""
    if isinstance(a, torch.Tensor):
        return torch.addcmul(y, x, a)
    return torch.add(y, x, alpha=a)


def scalar_div(num: Any, den: Any) -> Any:
    """``num / den`` for Python numbers (0 when ``den == 0``) or tensors (:func:`safe_div`)."""
    if isinstance(num, torch.Tensor) or isinstance(den, torch.Tensor):
        return safe_div(torch.as_tensor(num), torch.as_tensor(den))
    return num / den if den != 0 else 0.0


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den != 0``, else 0 (no ``.item()``, so it stays vmap-able)."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), 0.0)


def _unwrap_functorch(t: torch.Tensor) -> torch.Tensor:
    """Peel the :mod:`torch.func` wrappers (vmap batching, grad levels) off a tensor."""
    functorch_c = torch._C._functorch  # pylint: disable=protected-access
    while functorch_c.is_functorch_wrapped_tensor(t):
        t = functorch_c.get_unwrapped(t)
    return t


def all_true(flag: torch.Tensor) -> bool:
    """Whether every element of a boolean tensor is true, also under :func:`torch.func.vmap`.

    Under ``vmap`` a tensor cannot be used in Python control flow; the convergence test of the
    iterative solvers then looks at the whole batch at once (every problem of the batch must have
    converged). This is only a stopping test: the per-problem iterates are masked, so each
    problem of a batch gets exactly the iterates it would get alone.
    """
    try:
        return bool(flag.all())
    except RuntimeError:
        return bool(_unwrap_functorch(flag).all())


def host_float(t: torch.Tensor) -> float:
    """``float(t)`` of a one-element tensor, read off the graph on purpose.

    The solvers read scalars to the host for stopping tests and their scalar recurrences; those
    values are never differentiated through. Detaching first keeps torch from warning
    "Converting a tensor with requires_grad=True to a scalar" (under :func:`torch.func.grad` or
    with a recorded graph). Under :func:`torch.func.vmap` this raises ``RuntimeError`` like
    ``float(t)``, which the solvers use to detect a batch.
    """
    return float(t.detach())


def max_value(t: torch.Tensor) -> float:
    """The largest element of ``t`` as a Python float (whole batch under ``vmap``)."""
    try:
        return host_float(t.max())
    except RuntimeError:
        return host_float(_unwrap_functorch(t).max())


def warn_not_converged(
    name: str, maxiter: int, resid_sq: torch.Tensor, tol_sq: torch.Tensor
) -> None:
    """Emit a :class:`ConvergenceWarning` with the reached residual norm."""
    warnings.warn(
        f'{name} did not converge within maxiter={maxiter} iterations: residual norm '
        f'{math.sqrt(max(max_value(resid_sq), 0.0)):.3e} > tolerance '
        f'{math.sqrt(max(max_value(tol_sq), 0.0)):.3e}',
        ConvergenceWarning,
        stacklevel=3,
    )


def _basis_images(
    flat_mv: Callable[[torch.Tensor], torch.Tensor], size: int, like: torch.Tensor
) -> torch.Tensor:
    """``out[i] = flat_mv(e_i)`` for all unit vectors, batched by ``vmap``."""
    eye = torch.eye(size, dtype=like.dtype, device=like.device)
    return torch.func.vmap(flat_mv)(eye)


def jacobi_preconditioner(
    A: MatvecLike,  # noqa: N803
    example: TensorTree,
    *,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    eps: float = 0.0,
) -> Callable[[TensorTree], TensorTree]:
    r"""Build the Jacobi (diagonal) preconditioner :math:`M = \operatorname{diag}(A)^{-1}`.

    For a tree of matrices the diagonal is read off directly. For a callable ``A`` it is computed
    exactly from the images of the unit vectors (one batched matvec over ``N`` vectors), or, with
    ``num_samples``, estimated by Hutchinson's method
    :math:`\operatorname{diag}(A) \approx \frac1S\sum_s z_s \odot A z_s` with Rademacher :math:`z_s`.

    Args:
        A: the linear operator (callable or tree of square matrices).
        example: a tree shaped like the vectors ``A`` acts on.
        num_samples: number of probe vectors for the stochastic estimate (``None``: exact).
        generator: random generator for the probes.
        eps: floor on ``|diag|`` (entries with smaller magnitude are left unscaled).

    Returns:
        The preconditioner as a callable over tensor trees.
    """
    raveler = TreeRaveler(example, 'example')
    ex = raveler.ravel(example)
    if not callable(A):
        diag = torch.cat(
            [m.diagonal().reshape(-1).to(raveler.dtype) for m in pytree.tree_leaves(A)]
        )
    else:
        flat_mv = raveler.flat_matvec(A)
        if num_samples is None:
            diag = _basis_images(flat_mv, raveler.size, ex).diagonal()
        else:
            if num_samples < 1:
                raise ValueError(f'`num_samples` must be a positive integer, got {num_samples}')
            z = (
                torch.randint(
                    0, 2, (num_samples, raveler.size), generator=generator, device=ex.device
                )
                .to(ex.dtype)
                .mul_(2)
                .sub_(1)
            )
            diag = (z * torch.func.vmap(flat_mv)(z)).mean(0)
    small = diag.abs() <= eps
    inv_diag = torch.where(small, torch.ones_like(diag), 1.0 / torch.where(small, 1.0, diag))

    def precond(x: TensorTree) -> TensorTree:
        return raveler.unravel(inv_diag * raveler.ravel(x))

    return precond
