"""The torch-like, in-place :class:`Optimizer` (upstream ``torchopt.optim.Optimizer``)."""

from __future__ import annotations

import types
from typing import Any, Callable, Iterable, Sequence

import optree
import torch

from torchopt import _dispatch
from torchopt.base import GradientTransformation, UninitializedState

__all__ = ['Optimizer', 'flatten_params']


def flatten_params(params: Any, name: str = 'params') -> tuple[tuple[torch.Tensor, ...], Any]:
    """Flatten a pytree (or an iterator, e.g. ``model.parameters()``) of tensors."""
    if isinstance(params, (types.GeneratorType, map, filter)) or (
        isinstance(params, Iterable) and not isinstance(params, (Sequence, dict, torch.Tensor))
        and not optree.is_namedtuple(params)
    ):
        params = tuple(params)
    leaves, treespec = optree.tree_flatten(params)
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f'`{name}` must be a tree of tensors, but it contains a {type(leaf).__name__}'
            )
    return tuple(leaves), treespec


class Optimizer:
    """A PyTorch-style optimizer over a :class:`~torchopt.base.GradientTransformation`.

    ``step()`` reads ``p.grad``, runs ``impl.update(..., inplace=True)`` and adds the updates to
    the parameters in place (no autograd). There are no per-group hyper-parameters: a group is a
    flat tuple of tensors.

    Args:
        params: tensors to optimize (any pytree, or an iterator such as ``model.parameters()``).
        impl: the transformation, e.g. ``torchopt.adam(1e-3)``.
    """

    def __init__(self, params: Any, impl: GradientTransformation) -> None:
        if not isinstance(impl, GradientTransformation):
            raise TypeError(f'{impl} (type {type(impl).__name__}) is not a GradientTransformation')
        self.impl: GradientTransformation = impl
        self.param_groups: list[tuple[torch.Tensor, ...]] = []
        self.param_treespecs: list[Any] = []
        self.state_groups: list[Any] = []
        self.add_param_group(params)

    def add_param_group(self, params: Any) -> None:
        """Add a group of parameters (any pytree of tensors); its state starts uninitialised."""
        flat, treespec = flatten_params(params)
        self.param_groups.append(flat)
        self.param_treespecs.append(treespec)
        self.state_groups.append(UninitializedState())

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Reset the gradients: to ``None`` if ``set_to_none`` else to zeros (detached)."""
        for group in self.param_groups:
            for p in group:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Update every parameter with a gradient; return ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for i, params in enumerate(self.param_groups):
                state = self.state_groups[i]
                if isinstance(state, UninitializedState):
                    state = self.impl.init(params)
                grads = tuple(p.grad for p in params)
                self.state_groups[i] = _dispatch.inplace_step(
                    self.impl, params, grads, state, self.param_treespecs[i]
                )
        return loss

    def state_dict(self) -> tuple[Any, ...]:
        """The optimizer states, one per group (references; ``torch.save`` accepts them)."""
        return tuple(self.state_groups)

    def load_state_dict(self, state_dict: Sequence[Any]) -> None:
        """Replace the states by ``state_dict`` (as returned by :meth:`state_dict`)."""
        state_dict = tuple(state_dict)
        if len(state_dict) != len(self.param_groups):
            raise ValueError(
                f'`state_dict` has {len(state_dict)} groups, the optimizer has '
                f'{len(self.param_groups)}'
            )
        self.state_groups[:] = list(state_dict)
