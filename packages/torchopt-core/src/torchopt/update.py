"""Applying updates to parameters (upstream ``torchopt.update``)."""

from __future__ import annotations

import optree
import torch

from torchopt import _foreach as _fe
from torchopt.typing import Params, Updates

__all__ = ['apply_updates']


def apply_updates(params: Params, updates: Updates, *, inplace: bool = True) -> Params:
    """Return ``params + updates`` leaf-wise; ``None`` updates leave the parameter as is.

    Args:
        params: a tree of tensors.
        updates: a tree of the same structure (``None`` leaves allowed).
        inplace: add in place, bypassing autograd (like ``p.data.add_(u)``), and return the
            same tensor objects; ``False`` returns new, differentiable tensors.
    """
    leaves, treespec = optree.tree_flatten(params, none_is_leaf=True)
    try:
        deltas = treespec.flatten_up_to(updates)
    except ValueError as ex:
        raise ValueError(
            f'`updates` must have the structure of `params` ({treespec}): {ex}'
        ) from ex
    idx = [i for i, (p, u) in enumerate(zip(leaves, deltas)) if p is not None and u is not None]
    ps = [leaves[i] for i in idx]
    us = [deltas[i] for i in idx]
    if inplace:
        if ps:
            with torch.no_grad():
                _fe.add_(ps, us)
        return params
    new = _fe.add(ps, us) if ps else []
    out = list(leaves)
    for i, v in zip(idx, new):
        out[i] = v
    return treespec.unflatten(out)
