r"""Distributed autograd with the local ergonomics of :func:`torch.autograd.backward` / ``grad``.

Inside ``with context() as context_id:``, RPCs that carry tensors requiring grad are recorded;
:func:`backward` runs the backward pass across every worker involved, then accumulates this
worker's gradients into ``.grad`` (:math:`p.\mathrm{grad} \leftarrow p.\mathrm{grad} +
\partial L / \partial p`), and :func:`grad` returns them instead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import torch.distributed.autograd as _dist_autograd

__all__ = ['context', 'is_available', 'DistAutogradContext', 'backward', 'get_gradients', 'grad']

_LOCK = threading.Lock()


def is_available() -> bool:
    """Whether distributed autograd is available in this build of torch."""
    return bool(_dist_autograd.is_available())


if is_available():
    from torch.distributed.autograd import DistAutogradContext, context, get_gradients
else:  # pragma: no cover  # builds without torch.distributed

    def _unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError('torch.distributed.autograd is not available in this build of torch')

    DistAutogradContext = None  # type: ignore[assignment,misc]
    context = get_gradients = _unavailable  # type: ignore[assignment,misc]


def _as_tensors(
    tensors: torch.Tensor | Sequence[torch.Tensor], name: str
) -> tuple[torch.Tensor, ...]:
    if isinstance(tensors, torch.Tensor):
        return (tensors,)
    tensors = tuple(tensors)
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f'{name} must be tensors, got {type(tensor).__name__}')
    return tensors


def _roots(tensors: tuple[torch.Tensor, ...], name: str) -> list[torch.Tensor]:
    if not tensors:
        raise RuntimeError(f'{name} must hold at least one tensor')
    roots: list[torch.Tensor] = []
    for tensor in tensors:
        if not tensor.requires_grad:
            raise RuntimeError(
                f'element {len(roots)} of {name} does not require grad and does not have a grad_fn'
            )
        # Distributed autograd needs scalar roots; a non-scalar output contributes its sum,
        # as ``torch.autograd.backward(t, torch.ones_like(t))`` would.
        roots.append(tensor if tensor.dim() == 0 else tensor.sum())
    return roots


def backward(
    autograd_ctx_id: int,
    tensors: torch.Tensor | Sequence[torch.Tensor],
    retain_graph: bool = False,
    inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> None:
    """Run the distributed backward from ``tensors`` and accumulate local gradients into ``.grad``.

    Args:
        autograd_ctx_id: The id given by ``with context() as autograd_ctx_id``.
        tensors: Output tensor(s) whose sum is differentiated (distributed autograd needs scalar
            roots; a non-scalar tensor is summed first).
        retain_graph: Keep the graph for another backward pass.
        inputs: Only these tensors get gradients accumulated (default: every local leaf reached).

    Raises:
        RuntimeError: if ``inputs`` is empty or an output does not require grad.
    """
    if inputs is not None:
        inputs = _as_tensors(inputs, 'inputs')
        if not inputs:
            raise RuntimeError("'inputs' argument to backward() cannot be empty.")
        wanted = {id(t) for t in inputs}
    roots = _roots(_as_tensors(tensors, 'tensors'), 'tensors')
    _dist_autograd.backward(autograd_ctx_id, roots, retain_graph=retain_graph)
    local_grads = get_gradients(autograd_ctx_id)
    with _LOCK:
        for param, grad_ in local_grads.items():
            if inputs is not None and id(param) not in wanted:
                continue
            if param.grad is None:
                param.grad = grad_.detach().clone()
            else:
                param.grad = param.grad + grad_


def grad(
    autograd_ctx_id: int,
    outputs: torch.Tensor | Sequence[torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    retain_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[torch.Tensor | None, ...]:
    """Return the gradients of the sum of ``outputs`` with respect to the local ``inputs``.

    Args:
        autograd_ctx_id: The id given by ``with context() as autograd_ctx_id``.
        outputs: Output tensor(s) to differentiate (summed when not scalar).
        inputs: Local tensors to differentiate with respect to.
        retain_graph: Keep the graph for another backward pass.
        allow_unused: Return ``None`` for an input the outputs do not depend on (else raise).

    Returns:
        One gradient per input (``.grad`` is left untouched).
    """
    inputs = _as_tensors(inputs, 'inputs')
    if not inputs:
        raise RuntimeError("grad requires at least one input ('inputs' is empty).")
    roots = _roots(_as_tensors(outputs, 'outputs'), 'outputs')
    _dist_autograd.backward(autograd_ctx_id, roots, retain_graph=retain_graph)
    local_grads = get_gradients(autograd_ctx_id)
    grads: list[torch.Tensor | None] = []
    for index, tensor in enumerate(inputs):
        found = local_grads.get(tensor)
        if found is None and not allow_unused:
            raise RuntimeError(
                f'input {index} of grad() was not used in the graph of the outputs; '
                'set allow_unused=True if this is the desired behaviour.'
            )
        grads.append(found)
    return tuple(grads)
