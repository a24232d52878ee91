"""Per-parameter step counts: 0-dim float32 CPU tensors, packed as views of one vector.

Each parameter has its own count (``torch.optim``'s ``step``), but a fresh state makes them
views of one 1-D tensor, so that the common step — every parameter has a gradient — advances
them all with one ``add_`` instead of a multi-tensor op over many 0-dim tensors (which costs
about as much as a small fused Adam step). A subset, a loaded state, or a step under a
``torch.func`` transform or ``torch.compile`` advances them one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from torchopt import _dispatch

__all__ = ['advance_', 'new_counts', 'packed']


def new_counts(params: Sequence[Any], start: float = 0.0) -> list:
    """One count per parameter (``None`` stays ``None``), packed as views of one vector.

    Under a ``torch.func`` transform each count is made from its parameter (``new_full``), so
    that ``vmap(init)`` returns one count per member with its own memory: a count made apart
    from the parameters would come back expanded (stride 0), and an in-place update under
    ``vmap`` could not advance it.
    """
    if _dispatch.functorch_active():
        return [
            None if p is None else p.new_full((), start, dtype=torch.float32, device='cpu')
            for p in params
        ]
    n = sum(p is not None for p in params)
    views = iter(torch.full((n,), start, dtype=torch.float32).unbind()) if n else iter(())
    return [None if p is None else next(views) for p in params]


def packed(counts: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The vector ``counts`` are the consecutive views of, if they cover all of it."""
    base = counts[0]._base
    if base is None or base.dim() != 1 or base.numel() != len(counts):
        return None
    for i, c in enumerate(counts):
        if c._base is not base or c.storage_offset() != i:
            return None
    return base


def advance_(counts: list) -> None:
    """``counts += 1`` in place: one ``add_`` when they are the packed views of a fresh state."""
    if not counts:
        return
    if not (_dispatch.functorch_active() or _dispatch.compiling()):
        base = packed(counts)
        if base is not None:
            base.add_(1.0)
            return
    from torchopt import _foreach as _fe

    _fe.add_(counts, 1.0)
