"""Evaluating a scalar function at a batch of inputs: :func:`torch.func.vmap` at a low fixed cost.

:func:`torch.func.vmap` spends about 30 us per call in Python (argument checks, pytree
flattening of inputs and outputs, lazy set-up) before and after the function runs; for the cheap
objectives zero-order estimation is often used on, that is more than the batched evaluation
itself. :func:`vmap_call` does the same thing as ``torch.func.vmap(fn, randomness=...)(*inputs)``
with every input batched along dimension 0 and a 0-dim output, by entering the vmap level
directly with the functorch primitives ``torch.func.vmap`` is built on (the same four calls it
makes). It falls back to the public API where those primitives are missing (another torch
version), while :mod:`torch.compile` traces, and for the first call of each function
(``first=True``), so that torch's lazy vmap set-up has run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ['FAST_VMAP', 'check_scalar', 'is_compiling', 'vmap_call', 'vmap_one']

try:  # the primitives of torch/_functorch/vmap.py (_flat_vmap), stable since torch 2.0
    from torch._C._functorch import (
        _add_batch_dim,
        _remove_batch_dim,
        _vmap_decrement_nesting,
        _vmap_increment_nesting,
    )
except ImportError:  # pragma: no cover - depends on the torch build
    FAST_VMAP = False
else:
    FAST_VMAP = True

is_compiling = _is_compiling = getattr(
    getattr(torch, 'compiler', None), 'is_compiling', lambda: False
)


def check_scalar(value: object) -> Tensor:
    """Return ``value`` if it is a 0-dim tensor, else raise the reference's errors."""
    if not isinstance(value, Tensor):
        raise TypeError('`output` must be a tensor.')
    if value.ndim != 0:
        raise RuntimeError('`output` must be a scalar tensor.')
    return value


def vmap_call(
    fn: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    randomness: str,
    first: bool = False,
) -> Tensor:
    """``fn`` at each row of ``inputs`` (batched along dim 0), stacked: shape ``(batch,)``.

    Args:
        fn: Called once, with one batched tensor per input; it must return a 0-dim tensor
            (checked on the logical, per-sample shape).
        inputs: Tensors with the same leading batch size.
        randomness: ``'error'``, ``'different'`` or ``'same'`` (as :func:`torch.func.vmap`).
        first: Use the public :func:`torch.func.vmap` (its first call sets torch up).

    Returns:
        The function's values.
    """
    size = inputs[0].shape[0]
    if first or not FAST_VMAP or _is_compiling():

        def checked(*rows: Tensor) -> Tensor:
            return check_scalar(fn(*rows))

        return torch.func.vmap(checked, randomness=randomness)(*inputs)
    level = _vmap_increment_nesting(size, randomness)
    try:
        output = check_scalar(fn(*[_add_batch_dim(value, 0, level) for value in inputs]))
        return _remove_batch_dim(output, level, size, 0)
    finally:
        _vmap_decrement_nesting()


def vmap_one(fn: Callable[[Tensor], Tensor], rows: Tensor, randomness: str) -> Tensor:
    """:func:`vmap_call` for a function of one tensor, after its first call (the common case)."""
    if not FAST_VMAP or _is_compiling():
        return vmap_call(fn, (rows,), randomness)
    size = rows.shape[0]
    level = _vmap_increment_nesting(size, randomness)
    try:
        output = fn(_add_batch_dim(rows, 0, level))
        if not isinstance(output, Tensor) or output.ndim != 0:
            check_scalar(output)  # raises
        return _remove_batch_dim(output, level, size, 0)
    finally:
        _vmap_decrement_nesting()
