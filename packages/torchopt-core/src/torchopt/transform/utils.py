"""Helpers shared by the transformations (upstream ``torchopt.transform.utils``).

The private ``ema``/``ema_sq``/``scale_`` functions run one ``torch._foreach_*`` op per call on
flat lists; with ``inplace=False`` they use the out-of-place foreach ops, which carry autograd
(double backward included), so the same code serves the differentiable path.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import optree
import torch

from torchopt._foreach import functorch_active

from torchopt import _foreach as _fe

__all__ = ['inc_count', 'tree_map_flat', 'tree_map_flat_', 'update_moment']

TensorList = list[torch.Tensor]


def tree_map_flat(
    func: Callable[..., Any], flat_arg: Sequence[Any], *flat_args: Sequence[Any],
    none_is_leaf: bool = False,
) -> list[Any]:
    """Map ``func`` over flat lists; ``None`` entries of ``flat_arg`` map to ``None``."""
    if none_is_leaf:
        return [func(*xs) for xs in zip(flat_arg, *flat_args)]
    return [None if x is None else func(x, *xs) for x, *xs in zip(flat_arg, *flat_args)]


def tree_map_flat_(
    func: Callable[..., Any], flat_arg: Sequence[Any], *flat_args: Sequence[Any],
    none_is_leaf: bool = False,
) -> Sequence[Any]:
    """In-place variant of :func:`tree_map_flat`: call ``func`` for its effect, return ``flat_arg``."""
    tree_map_flat(func, flat_arg, *flat_args, none_is_leaf=none_is_leaf)
    return flat_arg


def inc_count(updates: Any, count: int) -> int:
    """Return ``count + 1`` when ``updates`` holds at least one tensor, else ``count``."""
    if any(leaf is not None for leaf in optree.tree_leaves(updates, none_is_leaf=True)):
        return count + 1
    return count


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
    """``m = decay * m + (1 - decay) * g`` (``decay == 1``: ``m + g``)."""
    if not m:
        return m
    if decay == 1:
        if inplace:
            _fe.add_(m, g)
            return m
        return _fe.add(m, g)
    if inplace:
        _fe.lerp_(m, g, 1 - decay)
        return m
    return _fe.lerp(m, g, 1 - decay)


def ema_sq(v: TensorList, g: TensorList, decay: Any, *, inplace: bool) -> TensorList:
    """``v = decay * v + (1 - decay) * g * g`` (``decay == 1``: ``v + g * g``)."""
    if not v:
        return v
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
    transforms (where ``requires_grad_`` is not allowed) plain buffers are returned.
    """
    requires_grad = requires_grad and not functorch_active()
    return [
        None
        if p is None
        else torch.full_like(p, fill, memory_format=torch.preserve_format, requires_grad=requires_grad)
        for p in params
    ]
