"""Gradient hooks as transformations (upstream ``torchopt.hook``)."""

from __future__ import annotations

from typing import Any, Callable

import optree
import torch

from torchopt.base import EmptyState, GradientTransformation

__all__ = ['nan_to_num_hook', 'register_hook', 'zero_nan_hook']


def zero_nan_hook(g: torch.Tensor) -> torch.Tensor:
    """Replace NaN by zero."""
    return g.nan_to_num(nan=0.0)


def nan_to_num_hook(
    nan: float = 0.0, posinf: float | None = None, neginf: float | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return a hook applying ``torch.nan_to_num`` with the given replacements."""

    def hook(g: torch.Tensor) -> torch.Tensor:
        return g.nan_to_num(nan=nan, posinf=posinf, neginf=neginf)

    return hook


def register_hook(hook: Callable[[torch.Tensor], torch.Tensor | None]) -> GradientTransformation:
    """A transformation that registers ``hook`` on every update tensor (for their backward)."""

    def init_fn(params: Any) -> EmptyState:
        return EmptyState()

    def update_fn(
        updates: Any, state: Any, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, Any]:
        for g in optree.tree_leaves(updates):
            if isinstance(g, torch.Tensor) and g.requires_grad:
                g.register_hook(hook)
        return updates, state

    return GradientTransformation(init_fn, update_fn)
