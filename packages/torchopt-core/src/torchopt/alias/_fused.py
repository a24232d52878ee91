"""Fused in-place steps for the torch-like optimizers (torch's ``_fused_*`` kernels).

``Optimizer.step`` dispatches to these when the alias set one and the tensors are eligible
(same device and floating dtype, dense, contiguous, every gradient present); otherwise the
composed transformations run. The kernels keep the very state layout of the composed chain,
so the two paths can alternate freely. Each function returns the new chain state or ``None``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from torchopt import _foreach as _fe
from torchopt.transform import ScaleByAdamState, TraceState

__all__ = ['fused_sgd', 'fused_adam']

FusedApply = Callable[[tuple, tuple, tuple], 'tuple | None']


def _find(state: tuple, kind: type) -> int:
    for i, s in enumerate(state):
        if isinstance(s, kind):
            return i
    return -1


def fused_sgd(
    lr: float, momentum: float, dampening: float, weight_decay: float, nesterov: bool,
    maximize: bool,
) -> FusedApply:
    """``torch._fused_sgd_`` over a ``sgd()`` chain state."""

    def apply(params: tuple, grads: tuple, state: tuple) -> tuple | None:
        if any(g is None for g in grads):
            return None
        i = _find(state, TraceState)
        bufs = state[i].trace if i >= 0 else []
        if not _fe.fusable(params, grads, *([bufs] if bufs else [])):
            return None
        torch._fused_sgd_(
            list(params), list(grads), bufs, weight_decay=weight_decay, momentum=momentum,
            lr=lr, dampening=dampening, nesterov=nesterov, maximize=maximize,
            is_first_step=i >= 0 and not state[i].started,
        )
        if i < 0:
            return state
        return (*state[:i], TraceState(trace=bufs, started=True), *state[i + 1 :])

    return apply


def fused_adam(
    lr: float, b1: float, b2: float, eps: float, weight_decay: float, maximize: bool,
    *, decoupled: bool,
) -> FusedApply:
    """``torch._fused_adam_`` (L2 decay) or ``torch._fused_adamw_`` (decoupled) over a chain state."""
    kernel: Any = torch._fused_adamw_ if decoupled else torch._fused_adam_

    def apply(params: tuple, grads: tuple, state: tuple) -> tuple | None:
        if any(g is None for g in grads):
            return None
        i = _find(state, ScaleByAdamState)
        s = state[i]
        if not _fe.fusable(params, grads, s.mu, s.nu):
            return None
        count = s.count + 1
        step = torch.tensor(float(count), device=params[0].device)
        kernel(
            list(params), list(grads), s.mu, s.nu, [], [step] * len(params), lr=lr, beta1=b1,
            beta2=b2, weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=maximize,
        )
        return (*state[:i], ScaleByAdamState(mu=s.mu, nu=s.nu, count=count), *state[i + 1 :])

    return apply
