"""``MetaOptimizer``: differentiable optimizer steps on an ``nn.Module`` (unrolled bilevel)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from torchopt.base import GradientTransformation, UninitializedState
from torchopt.update import apply_updates

__all__ = ['MetaOptimizer']


class MetaOptimizer:
    """Differentiable optimizer over a module's parameters.

    :meth:`step` replaces each parameter by its updated, non-leaf value
    (``module.weight`` becomes a tensor with a ``grad_fn``), so a loss computed afterwards can be
    differentiated back through the inner updates to meta-parameters.

    Memory: every step keeps its graph alive, so ``K`` unrolled steps hold ``O(K)`` activations
    and optimizer states. Cut the graph with :meth:`detach_` (or ``torchopt.stop_gradient``)
    at the end of each outer iteration.

    Parameters with ``requires_grad=False`` are left alone. Under ``torch.no_grad()`` the step is
    a plain, non-differentiable step unless ``create_graph=True`` is passed to :meth:`step`.

    Args:
        module: the module whose parameters are optimized.
        impl: the transformation, e.g. ``torchopt.adam(1e-3, moment_requires_grad=True)``.
    """

    def __init__(self, module: nn.Module, impl: GradientTransformation) -> None:
        if not isinstance(impl, GradientTransformation):
            raise TypeError(f'{impl} (type {type(impl).__name__}) is not a GradientTransformation')
        self.impl: GradientTransformation = impl
        self.param_containers_groups: list[tuple[dict[str, torch.Tensor | None], ...]] = []
        self.state_groups: list[Any] = []
        self.add_param_group(module)

    def add_param_group(self, module: nn.Module) -> None:
        """Add the parameters of ``module`` (and its submodules) as a new group."""
        from torchopt.utils import extract_module_containers

        if not isinstance(module, nn.Module):
            raise TypeError(f'`module` must be an nn.Module, got {type(module).__name__}')
        params_containers = extract_module_containers(module, with_buffers=False)[0]
        if not any(v is not None for c in params_containers for v in c.values()):
            raise ValueError(f'`module` ({type(module).__name__}) has no parameters to optimize')
        self.param_containers_groups.append(params_containers)
        self.state_groups.append(UninitializedState())

    @staticmethod
    def _trainable(containers: Sequence[dict[str, Any]]) -> list[tuple[dict, str, torch.Tensor]]:
        """The trainable ``(container, name, tensor)`` slots, in TorchOpt 0.7's order.

        That is module order, and within a module the names sorted (optree's order for a
        dict): ``bias`` before ``weight``. The states hold one entry per slot in this order,
        so a state saved by TorchOpt 0.7 loads onto the right parameters.
        """
        return [
            (c, k, c[k])
            for c in containers
            for k in sorted(c)
            if c[k] is not None and c[k].requires_grad
        ]

    def step(self, loss: torch.Tensor, *, create_graph: bool | None = None) -> None:
        """Take one differentiable step on ``loss``.

        Args:
            loss: a scalar tensor that depends on the module's parameters.
            create_graph: record the step for differentiation. ``None`` (default) follows the
                ambient grad mode: under ``torch.no_grad()`` the step is plain and detached.
                ``True`` records it even under ``no_grad``.
        """
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f'`loss` must be a tensor, got {type(loss).__name__}')
        if loss.numel() != 1:
            raise ValueError(f'`loss` must be a scalar tensor, got shape {tuple(loss.shape)}')
        if not loss.requires_grad:
            raise ValueError(
                '`loss` does not require grad: it does not depend on the optimized parameters'
            )
        if create_graph is None:
            create_graph = torch.is_grad_enabled()
        with torch.set_grad_enabled(create_graph):
            for i, containers in enumerate(self.param_containers_groups):
                slots = self._trainable(containers)
                if not slots:
                    continue
                params = tuple(v for _, _, v in slots)
                state = self.state_groups[i]
                if isinstance(state, UninitializedState):
                    state = self.impl.init(params)
                grads = torch.autograd.grad(
                    loss, params, create_graph=create_graph, allow_unused=True, retain_graph=True
                )
                if all(g is None for g in grads):
                    raise ValueError('`loss` does not depend on the parameters of this optimizer')
                updates, self.state_groups[i] = self.impl.update(
                    grads, state, params=params, inplace=False
                )
                new_params: Any = apply_updates(params, updates, inplace=False)  # a tuple
                if not create_graph:
                    new_params = tuple(
                        p.detach().requires_grad_(True)
                        for p in new_params  # keep trainable
                    )
                for (container, key, _), new in zip(slots, new_params):
                    container[key] = new

    def detach_(self) -> MetaOptimizer:
        """Cut the graph: detach the module's current parameters and the optimizer state in place.

        Call it at the end of an outer iteration (truncated back-propagation) to keep memory
        bounded; the values are kept, only their history is dropped.
        """
        from torchopt.utils import stop_gradient

        stop_gradient(cast(Any, (self.param_containers_groups, self.state_groups)))
        return self

    def state_dict(self) -> tuple[Any, ...]:
        """The optimizer states, one per group (references, so they stay differentiable)."""
        return tuple(self.state_groups)

    def load_state_dict(self, state_dict: Sequence[Any]) -> None:
        """Replace the states by ``state_dict`` (as returned by :meth:`state_dict`).

        Validated first: the number of groups, and each state's structure and tensor shapes
        against a fresh state of this optimizer's parameters; a ``ValueError`` names the group
        and the entry, and a failed load leaves the optimizer unchanged.
        """
        from torchopt.optim._state_dict import check_tree
        from torchopt.optim._upstream_states import adopt

        states = list(state_dict)
        if len(states) != len(self.state_groups):
            raise ValueError(
                f'load_state_dict: the state holds {len(states)} groups, the optimizer has '
                f'{len(self.state_groups)}'
            )
        for i, (containers, state) in enumerate(zip(self.param_containers_groups, states)):
            if isinstance(state, UninitializedState):
                continue
            params = tuple(v for _, _, v in self._trainable(containers))
            with torch.no_grad():
                template = self.impl.init(tuple(p.detach() for p in params))
            states[i] = check_tree(i, template, adopt(template, state))  # TorchOpt 0.7's too
        self.state_groups[:] = states
