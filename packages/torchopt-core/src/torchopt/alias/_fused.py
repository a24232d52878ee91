"""Fused in-place steps for the torch-like optimizers (torch's ``_fused_*`` kernels).

``Optimizer.step`` dispatches to these when the alias set one and the tensors are eligible
(same device and floating dtype, dense, contiguous, every gradient present); otherwise the
composed transformations run. The kernels keep the very state layout of the composed chain,
so the two paths can alternate freely. Each function returns the new chain state or ``None``.

:func:`accel_adam` is the same for ``use_accelerated_op=True``: one pass of
``torchopt_accel.adam_apply_`` (moments, direction and parameter update) per (device, dtype).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from torchopt import _foreach as _fe
from torchopt.transform import ScaleByAdamState, TraceState

__all__ = ['fused_sgd', 'fused_adam', 'accel_adam']

FusedApply = Callable[[tuple, tuple, tuple], 'tuple | None']


_ACCEL_DTYPES = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16})


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


def _accel_eligible(params: tuple, grads: tuple, mu: list, nu: list) -> bool:
    """Dense strided floating tensors, each gradient/moment like its parameter, no transform."""
    if _fe.functorch_active() or len(mu) != len(params) or len(nu) != len(params):
        return False
    for p, g, m, v in zip(params, grads, mu, nu):
        if p.layout != torch.strided or p.dtype not in _ACCEL_DTYPES:
            return False
        for t in (g, m, v):
            if t.layout != torch.strided or t.dtype != p.dtype or t.device != p.device:
                return False
    return True


def accel_adam(
    lr: float, b1: float, b2: float, eps: float, eps_root: float, weight_decay: float,
    maximize: bool, *, decoupled: bool,
) -> FusedApply:
    r"""``torchopt_accel.adam_apply_`` over an ``adam()``/``adamw()`` chain state.

    One pass per (device, dtype) group reads :math:`\theta, g, m, v` and writes
    :math:`\theta, m, v` (``eps_root`` supported); the math is the composed chain's. Returns
    ``None`` (the composed transformations run) when a gradient is missing, a tensor is not
    eligible, the plugin or a device's kernels are unavailable, or the installed
    ``torchopt_accel`` predates ``adam_apply_``.
    """
    from torchopt import accelerated_op  # local: the facade is light, the plugin is lazy

    def apply(params: tuple, grads: tuple, state: tuple) -> tuple | None:
        if not params or any(g is None for g in grads):
            return None
        i = _find(state, ScaleByAdamState)
        if i < 0:
            return None
        s = state[i]
        if not _accel_eligible(params, grads, s.mu, s.nu):
            return None
        kernels = accelerated_op.kernels({p.device for p in params})
        if kernels is None or not hasattr(kernels, 'adam_apply_'):
            return None
        count = s.count + 1
        kernels.adam_apply_(
            list(params), list(grads), s.mu, s.nu, lr, b1, b2, eps, eps_root, count,
            weight_decay=weight_decay, decoupled=decoupled, maximize=maximize,
        )
        return (*state[:i], ScaleByAdamState(mu=s.mu, nu=s.nu, count=count), *state[i + 1 :])

    return apply
