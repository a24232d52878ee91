"""Helpers shared by the transformations (upstream ``torchopt.transform.utils``).

The private ``ema``/``ema_sq``/``scale_`` functions run one multi-tensor op per call on flat
lists (:mod:`torchopt._foreach`): a ``torch._foreach_*`` call when nothing is recorded, and per
tensor ops when autograd records an out-of-place op (foreach backward formulas save every input)
or inside ``torch.func`` transforms. So the differentiable path runs per tensor; the in-place
path runs foreach.

Step counts are one 0-dim float32 CPU tensor per parameter (``torch.optim``'s ``step``);
:func:`bias_correction` turns them into double-precision scalars (upstream issue #235).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import optree
import torch

from torchopt import _counts, _dispatch
from torchopt import _foreach as _fe
from torchopt._dispatch import functorch_active

__all__ = ['inc_count', 'tree_map_flat', 'tree_map_flat_', 'update_moment']

TensorList = list[torch.Tensor]


def tree_map_flat(
    func: Callable[..., Any],
    flat_arg: Sequence[Any],
    *flat_args: Sequence[Any],
    none_is_leaf: bool = False,
) -> list[Any]:
    """Map ``func`` over flat lists; ``None`` entries of ``flat_arg`` map to ``None``."""
    if none_is_leaf:
        return [func(*xs) for xs in zip(flat_arg, *flat_args)]
    return [None if x is None else func(x, *xs) for x, *xs in zip(flat_arg, *flat_args)]


def tree_map_flat_(
    func: Callable[..., Any],
    flat_arg: Sequence[Any],
    *flat_args: Sequence[Any],
    none_is_leaf: bool = False,
) -> Sequence[Any]:
    """In-place variant of :func:`tree_map_flat`: call ``func`` for its effect, return ``flat_arg``."""
    tree_map_flat(func, flat_arg, *flat_args, none_is_leaf=none_is_leaf)
    return flat_arg


def inc_count(updates: Any, count: Any) -> Any:
    """Advance the per-leaf step counts where ``updates`` has a tensor (upstream semantics).

    ``count`` is a tree (or list) of 0-dim tensors shaped like ``updates``; a leaf whose update is
    ``None`` keeps its count. A plain number is advanced when any update is present.
    """
    leaves, treespec = optree.tree_flatten(updates, none_is_leaf=True)
    if not isinstance(count, (list, tuple, dict)) and not optree.is_namedtuple(count):
        return count + 1 if any(u is not None for u in leaves) else count
    counts = treespec.flatten_up_to(count)
    new = [c if u is None else c + 1 for u, c in zip(leaves, counts)]
    return treespec.unflatten(new)


def update_moment(
    updates: Any, moments: Any, decay: float, *, order: int, inplace: bool = True
) -> Any:
    """Exponential moving average of the ``order``-th power of ``updates``.

    ``m = decay * m + (1 - decay) * g**order``; ``decay == 1`` accumulates ``m + g**order``.
    """
    if order not in (1, 2):
        raise ValueError(f'`order` must be 1 or 2, got {order!r}')
    g, treespec = optree.tree_flatten(updates, none_is_leaf=True)
    m = treespec.flatten_up_to(moments)
    idx = [i for i, x in enumerate(g) if x is not None]
    gs, ms = [g[i] for i in idx], [m[i] for i in idx]
    new = (ema if order == 1 else ema_sq)(ms, gs, decay, inplace=inplace)
    out = list(m)
    for i, v in zip(idx, new):
        out[i] = v
    return treespec.unflatten(out)


# --- flat foreach kernels (private) -------------------------------------------------------------


def ema(m: TensorList, g: TensorList, decay: Any, *, inplace: bool) -> TensorList:
    """``m = decay * m + (1 - decay) * g`` (``decay == 1``: ``m + g``).

    ``decay`` is a number or a 0-dim tensor (differentiable through the lerp weight).
    """
    if not m:
        return m
    if not isinstance(decay, torch.Tensor) and decay == 1:
        if inplace:
            _fe.add_(m, g)
            return m
        return _fe.add(m, g)
    if inplace:
        _fe.lerp_(m, g, 1 - decay)
        return m
    return _fe.lerp(m, g, 1 - decay)


def ema_sq(v: TensorList, g: TensorList, decay: Any, *, inplace: bool) -> TensorList:
    """``v = decay * v + (1 - decay) * g * g`` (``decay == 1``: ``v + g * g``).

    A tensor ``decay`` (an injected, possibly learnable hyper-parameter) runs as a lerp towards
    ``g * g``, which is differentiable with respect to it (``addcmul`` takes numbers only).
    """
    if not v:
        return v
    if isinstance(decay, torch.Tensor):
        return ema(v, _fe.mul(g, g), decay, inplace=inplace)
    w = 1 if decay == 1 else 1 - decay
    if inplace:
        if decay != 1:
            _fe.mul_(v, decay)
        _fe.addcmul_(v, g, g, value=w)
        return v
    if decay != 1:
        v = _fe.mul(v, decay)
    return _fe.addcmul(v, g, g, value=w)


def scale_(u: TensorList, factor: Any, *, inplace: bool) -> TensorList:
    """``u * factor`` for a number or a (possibly grad-requiring) scalar tensor."""
    if not u:
        return u
    if isinstance(factor, torch.Tensor) and factor.requires_grad:
        return [x * factor for x in u]  # differentiable w.r.t. a learnable hyper-parameter
    if inplace:
        _fe.mul_(u, factor)
        return u
    return _fe.mul(u, factor)


def write_(dst: TensorList, src: TensorList, *, inplace: bool) -> TensorList:
    """Return ``src`` as the updates: copied into ``dst`` in place, else ``src`` itself."""
    if inplace and dst:
        _fe.copy_(dst, src)
        return dst
    return src


def zeros_like(params: Sequence[Any], requires_grad: bool = False, fill: float = 0.0) -> list:
    """Moment buffers for ``params`` (``None`` stays ``None``).

    ``requires_grad=True`` makes them leaves of the meta-graph; inside ``torch.func``
    transforms (where ``requires_grad_`` is not allowed) plain buffers are returned. A complex
    parameter's buffer starts at ``fill + fill·i``: its real and imaginary parts are two real
    parameters to the math (:mod:`torchopt._leaf_kinds`), as in ``torch.optim``.
    """
    requires_grad = requires_grad and not functorch_active()
    return [
        None
        if p is None
        else torch.full_like(
            p,
            complex(fill, fill) if fill and p.is_complex() else fill,
            memory_format=torch.preserve_format,
            requires_grad=requires_grad,
        )
        for p in params
    ]


# --- step counts and the scalars derived from them ----------------------------------------------

Scalars = Any  # a float, a list of floats, or a list of 0-dim tensors (one per leaf)


def counts_like(params: Sequence[Any], start: float = 0.0) -> list:
    """One 0-dim float32 CPU step count per parameter (``None`` stays ``None``).

    They are views of one vector (:mod:`torchopt._counts`), so a step advances them in one op.
    """
    return _counts.new_counts(params, start)


def advance(counts: list, inplace: bool) -> list:
    """``counts + 1``: in place, or as new tensors."""
    if inplace:
        _counts.advance_(counts)
        return counts
    return _fe.add(counts, 1.0)


def count_scalars(counts: list) -> Scalars:
    """The counts as one float (all equal), a list of floats, or the tensors (under transforms)."""
    values = _dispatch.host_values(counts)
    if values is None:
        return [c.to(torch.float64) for c in counts]
    return _dispatch.uniform(values)


def smap(fn: Callable[..., Any], *xs: Scalars) -> Scalars:
    """Apply ``fn`` to scalars or, leaf by leaf, to lists of scalars (scalars broadcast)."""
    n = next((len(x) for x in xs if isinstance(x, list)), None)
    if n is None:
        return fn(*xs)
    return [fn(*(x[i] if isinstance(x, list) else x for x in xs)) for i in range(n)]


def bias_correction(t: Scalars, decay: float) -> Scalars:
    """``1 - decay ** t`` in double precision, for scalars from :func:`count_scalars`."""
    return smap(lambda c: 1.0 - decay**c, t)
