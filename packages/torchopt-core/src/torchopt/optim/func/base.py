"""``FuncOptimizer``: a stateful helper for ``torch.func``-style (functional) models."""

from __future__ import annotations

from typing import Any

import optree
import torch

from torchopt.base import GradientTransformation, UninitializedState
from torchopt.update import apply_updates

__all__ = ['FuncOptimizer']


class FuncOptimizer:
    """Keep the optimizer state for functional parameters and return new parameters per step.

    Example:
        >>> import torch, torchopt
        >>> w = torch.ones(3, requires_grad=True)
        >>> opt = torchopt.FuncOptimizer(torchopt.sgd(lr=0.1))
        >>> params = {'w': w}
        >>> loss = (params['w'] ** 2).sum()
        >>> params = opt.step(loss, params)  # differentiable w.r.t. w
        >>> params['w']
        tensor([0.8000, 0.8000, 0.8000], grad_fn=<...>)

    Args:
        impl: the transformation.
        inplace: default of :meth:`step`'s ``inplace`` (``False``: differentiable updates).
    """

    def __init__(self, impl: GradientTransformation, *, inplace: bool = False) -> None:
        if not isinstance(impl, GradientTransformation):
            raise TypeError(f'{impl} (type {type(impl).__name__}) is not a GradientTransformation')
        self.impl = impl
        self.optim_state: Any = UninitializedState()
        self.inplace = bool(inplace)

    def step(self, loss: torch.Tensor, params: Any, inplace: bool | None = None) -> Any:
        """Differentiate ``loss`` w.r.t. ``params`` (any pytree of tensors) and return new params."""
        if inplace is None:
            inplace = self.inplace
        leaves, treespec = optree.tree_flatten(params)
        if not leaves:
            raise ValueError('`params` holds no tensor')
        for leaf in leaves:
            if not isinstance(leaf, torch.Tensor):
                raise TypeError(f'`params` must be a tree of tensors, found {type(leaf).__name__}')
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError('`loss` must be a scalar tensor')
        if isinstance(self.optim_state, UninitializedState):
            self.optim_state = self.impl.init(params)
        elif self.__dict__.pop('_loaded', False):  # a state saved by TorchOpt 0.7 too
            from torchopt.optim._upstream_states import adopt

            with torch.no_grad():
                template = self.impl.init(optree.tree_map(torch.Tensor.detach, params))
            self.optim_state = adopt(template, self.optim_state)
        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        grads = treespec.unflatten(list(grads))
        updates, self.optim_state = self.impl.update(
            grads, self.optim_state, params=params, inplace=inplace
        )
        return apply_updates(params, updates, inplace=inplace)

    def state_dict(self) -> Any:
        """The optimizer state (a reference)."""
        return self.optim_state

    def load_state_dict(self, state_dict: Any) -> None:
        """Replace the optimizer state.

        A state saved by TorchOpt 0.7 (int64 step counts, one ``t`` for all leaves) is brought
        to this library's layout at the next :meth:`step`, when the parameters are known.
        """
        self.optim_state = state_dict
        self._loaded = True
