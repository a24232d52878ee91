"""Pytree utilities over :mod:`optree` (upstream ``torchopt.pytree``).

Re-exports optree's public API and adds tensor-tree arithmetic. ``None`` is an empty subtree
(optree's default), as upstream relies on.
"""

from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING, Any, Callable

import optree
import optree.typing as typing  # noqa: F401  (re-exported as upstream)
import torch
from optree import *  # noqa: F403

from torchopt.typing import _HAS_RPC, Future, PyTree, Scalar, TensorTree

if TYPE_CHECKING:
    # optree's names come in through `*`. The project's mypy configuration checks against optree
    # as untyped (its tree annotations reject dicts and lists), so `*` brings no names there:
    # the re-exports read as Any.
    def __getattr__(name: str) -> Any: ...


__all__ = [
    *optree.__all__,
    'tree_flatten_as_tuple',
    'tree_pos',
    'tree_neg',
    'tree_add',
    'tree_add_scalar_mul',
    'tree_sub',
    'tree_sub_scalar_mul',
    'tree_mul',
    'tree_matmul',
    'tree_scalar_mul',
    'tree_truediv',
    'tree_vdot_real',
    'tree_wait',
]


def tree_flatten_as_tuple(
    tree: PyTree[Any],
    is_leaf: Callable[[Any], bool] | None = None,
    *,
    none_is_leaf: bool = False,
    namespace: str = '',
) -> tuple[tuple[Any, ...], optree.PyTreeSpec]:
    """Flatten ``tree`` into a tuple of leaves and its treespec."""
    leaves, treespec = optree.tree_flatten(
        tree, is_leaf, none_is_leaf=none_is_leaf, namespace=namespace
    )
    return tuple(leaves), treespec


def acc_add(*args: Any) -> Any:
    """``args[0] + args[1] + ...`` (upstream's helper, outside ``__all__`` as there)."""
    return functools.reduce(operator.add, args)


def acc_mul(*args: Any) -> Any:
    """``args[0] * args[1] * ...``."""
    return functools.reduce(operator.mul, args)


def acc_matmul(*args: Any) -> Any:
    """``args[0] @ args[1] @ ...``."""
    return functools.reduce(operator.matmul, args)


def tree_pos(tree: PyTree[Any]) -> PyTree[Any]:
    """Apply unary ``+`` to every leaf."""
    return optree.tree_map(operator.pos, tree)


def tree_neg(tree: PyTree[Any]) -> PyTree[Any]:
    """Apply unary ``-`` to every leaf."""
    return optree.tree_map(operator.neg, tree)


def tree_add(*trees: PyTree[Any]) -> PyTree[Any]:
    """Leaf-wise sum of trees of the same structure."""
    return optree.tree_map(acc_add, *trees)


def tree_add_scalar_mul(
    tree_x: TensorTree, tree_y: TensorTree, alpha: Scalar | None = None
) -> TensorTree:
    """Leaf-wise ``x + alpha * y`` (``alpha`` defaults to 1)."""
    if alpha is None:
        return optree.tree_map(lambda x, y: x.add(y), tree_x, tree_y)
    return optree.tree_map(lambda x, y: x.add(y, alpha=alpha), tree_x, tree_y)


def tree_sub(minuend_tree: PyTree[Any], subtrahend_tree: PyTree[Any]) -> PyTree[Any]:
    """Leaf-wise difference."""
    return optree.tree_map(operator.sub, minuend_tree, subtrahend_tree)


def tree_sub_scalar_mul(
    tree_x: TensorTree, tree_y: TensorTree, alpha: Scalar | None = None
) -> TensorTree:
    """Leaf-wise ``x - alpha * y`` (``alpha`` defaults to 1)."""
    if alpha is None:
        return optree.tree_map(lambda x, y: x.sub(y), tree_x, tree_y)
    return optree.tree_map(lambda x, y: x.sub(y, alpha=alpha), tree_x, tree_y)


def tree_mul(*trees: PyTree[Any]) -> PyTree[Any]:
    """Leaf-wise product of trees of the same structure."""
    return optree.tree_map(acc_mul, *trees)


def tree_matmul(*trees: PyTree[Any]) -> PyTree[Any]:
    """Leaf-wise matrix product of trees of the same structure."""
    return optree.tree_map(acc_matmul, *trees)


def tree_scalar_mul(scalar: Scalar, multiplicand_tree: PyTree[Any]) -> PyTree[Any]:
    """Multiply every leaf by ``scalar``."""
    return optree.tree_map(lambda x: scalar * x, multiplicand_tree)


def tree_truediv(dividend_tree: PyTree[Any], divisor_tree: PyTree[Any]) -> PyTree[Any]:
    """Leaf-wise true division."""
    return optree.tree_map(operator.truediv, dividend_tree, divisor_tree)


def _vdot_real_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.contiguous().view(-1)
    y = y.contiguous().view(-1)
    vdot = torch.dot(x.real, y.real)
    if x.is_complex() and y.is_complex():
        vdot += torch.dot(x.imag, y.imag)
    return vdot


def tree_vdot_real(tree_x: TensorTree, tree_y: TensorTree) -> float:
    """Real part of ``sum(conj(x) * y)`` over all leaves, as a Python float."""
    leaves_x, treespec = optree.tree_flatten(tree_x)
    leaves_y = treespec.flatten_up_to(tree_y)
    return sum(map(_vdot_real_kernel, leaves_x, leaves_y)).item()  # type: ignore[union-attr]


def tree_wait(future_tree: PyTree[Future]) -> PyTree[Any]:
    """Wait for every future in the tree and return the tree of results."""
    flat_futures, treespec = optree.tree_flatten(future_tree)
    results = torch.futures.wait_all(flat_futures)
    return optree.tree_unflatten(treespec, results)


if _HAS_RPC:  # as upstream; torch.distributed.rpc is imported on first use only

    def tree_as_rref(tree: PyTree[Any]) -> PyTree[Any]:
        """Wrap every leaf in a local :class:`torch.distributed.rpc.RRef`."""
        from torch.distributed.rpc import RRef  # noqa: PLC0415

        return optree.tree_map(RRef, tree)

    def tree_to_here(rref_tree: PyTree[Any], timeout: float | None = None) -> PyTree[Any]:
        """Fetch the value of every :class:`~torch.distributed.rpc.RRef` leaf (``to_here``).

        ``timeout`` ``None``: the RPC agent's default, as upstream's ``UNSET_RPC_TIMEOUT``.
        """
        if timeout is None:
            return optree.tree_map(lambda x: x.to_here(), rref_tree)
        return optree.tree_map(lambda x: x.to_here(timeout=timeout), rref_tree)

    def tree_local_value(rref_tree: PyTree[Any]) -> PyTree[Any]:
        """The local value of every :class:`~torch.distributed.rpc.RRef` leaf (owner only)."""
        return optree.tree_map(lambda x: x.local_value(), rref_tree)

    __all__ += ['tree_as_rref', 'tree_to_here', 'tree_local_value']
