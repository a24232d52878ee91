"""Runners for the fused kernels that :mod:`torchopt._dispatch` selects.

Nothing here chooses a path: each runner is called by the dispatcher, checks shapes before any
kernel writes (torch's CPU fused kernels do not), and returns ``None`` when the tensors are not
eligible so that the composed transformations run instead.

Step counts are 0-dim float32 CPU tensors, one per parameter (``torch.optim``'s ``step``). The
fused kernels read them directly; on CUDA they get device copies.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from torchopt import _counts, _dispatch, _exact_steps
from torchopt.transform._flat import present_indices, take
from torchopt.transform._trace import DampenedTraceState, TraceState

__all__ = ['adam_direction_', 'fused_update', 'run_fused', 'steps_for']

_ACCEL_CHECKED = False
# The per-leaf buffers each fused kind reads and writes, in the kernels' argument order.
_BUFFERS = {
    'sgd': ('trace',),
    'adam': ('mu', 'nu'),
    'adamw': ('mu', 'nu'),
    'amsgrad': ('mu', 'nu', 'nu_max'),
    'adamw-amsgrad': ('mu', 'nu', 'nu_max'),
}
_AMSGRAD = frozenset({'amsgrad', 'adamw-amsgrad'})  # kinds with the running maximum of nu
_DECOUPLED = frozenset({'adamw', 'adamw-amsgrad'})  # kinds with AdamW's decoupled decay
_EXACT = frozenset({'rmsprop', 'adagrad'})  # no kernel: torch.optim's op sequence (_exact_steps)


def steps_for(counts: list, device: torch.device) -> list:
    """The step tensors a fused kernel on ``device`` reads: the counts themselves on the CPU."""
    if device.type == 'cpu':
        return counts
    return [c.to(device, non_blocking=True) for c in counts]


def _groups(counts: list) -> dict[float, list[int]]:
    """Indices grouped by their (host) step count, in first-seen order."""
    values = _dispatch.host_values(counts)
    groups: dict[float, list[int]] = {}
    for i, v in enumerate(values or ()):
        groups.setdefault(v, []).append(i)
    return groups


def run_fused(fused: Any, params: tuple, grads: tuple, state: tuple, treespec: Any) -> Any:
    """Run the declared fused step on the chain state ``state``; ``None`` when not eligible."""
    if fused.kind in _EXACT:
        return _exact_steps.run(fused, params, grads, state, treespec)
    plain_sgd = fused.kind == 'sgd' and fused.hyper['momentum'] == 0.0
    if not isinstance(state, tuple) or not (plain_sgd or 0 <= fused.at < len(state)):
        return None
    sub: Any = None if plain_sgd else state[fused.at]
    if fused.kind == 'sgd':
        if not (sub is None or isinstance(sub, (TraceState, DampenedTraceState))):
            return None
    elif not isinstance(sub, _adam_state_type(fused.kind)):
        return None
    idx = present_indices(grads)
    g = take(grads, idx)
    if not g:
        return state
    where = f'torchopt {fused.kind}'
    if len(params) != len(grads):  # raises, naming the lengths
        _dispatch.check_like(where, 'params', grads, params, treespec=treespec)
    p = take(params, idx)
    named: list[tuple[str, list]] = [('params', p)]
    if sub is not None:
        for f in sub._fields:  # lengths first: ``take`` indexes by the gradients' positions
            if len(getattr(sub, f)) != len(grads):
                _dispatch.check_like(where, f'state.{f}', grads, getattr(sub, f), treespec=treespec)
        if fused.kind != 'sgd' or isinstance(sub, DampenedTraceState):  # before any write
            _dispatch.check_counts(where, 'count', sub.count)
        named += [(f'state.{f}', take(getattr(sub, f), idx)) for f in _BUFFERS[fused.kind]]
    eligible = _dispatch.fused_ready(where, g, named, treespec=treespec, idx=idx)
    lists = [v for _, v in named[1:]]
    if fused.kind == 'sgd':
        return _sgd(fused, p, g, lists, sub, idx, state, eligible)
    return _adam(fused, p, g, lists, sub, idx, state, eligible)


def _adam_state_type(kind: str) -> type:
    from torchopt.transform._adam import ScaleByAdamState
    from torchopt.transform._adaptive import ScaleByAmsgradState

    return ScaleByAmsgradState if kind in _AMSGRAD else ScaleByAdamState


def _adam(
    fused: Any, p: list, g: list, lists: list, sub: Any, idx: Any, state: tuple, eligible: bool
) -> Any:
    amsgrad = fused.kind in _AMSGRAD
    mu, nu = lists[0], lists[1]
    maxes = lists[2] if amsgrad else []
    counts = take(sub.count, idx)
    h = fused.hyper
    # Compiled: no accel kernel (it takes the step as a Python int, one call per count value);
    # the traced fused math below runs instead.
    if fused.accel and not _dispatch.functorch_active() and not _dispatch.compiling():
        kernels = _dispatch.accel_kernels(p)
        if kernels is not None and hasattr(kernels, 'adam_apply_') and _accel_ok(p, g, mu, nu):
            _counts.advance_(counts)
            for value, members in _groups(counts).items():
                kernels.adam_apply_(
                    take(p, members),
                    take(g, members),
                    take(mu, members),
                    take(nu, members),
                    _dispatch.resolve(h['lr']),
                    h['b1'],
                    h['b2'],
                    h['eps'],
                    h['eps_root'],
                    int(value),
                    weight_decay=h['weight_decay'],
                    decoupled=fused.kind in _DECOUPLED,
                    maximize=h['maximize'],
                )
            return state
    if h['eps_root'] != 0.0 or not eligible:
        return None
    _counts.advance_(counts)
    _adam_kernel(
        fused.kind in _DECOUPLED,
        p,
        g,
        mu,
        nu,
        maxes,
        steps_for(counts, p[0].device),
        lr=_dispatch.resolve(h['lr']),
        beta1=h['b1'],
        beta2=h['b2'],
        weight_decay=h['weight_decay'],
        eps=h['eps'],
        amsgrad=amsgrad,
        maximize=h['maximize'],
    )
    return state


def _accel_ok(p: list, g: list, mu: list, nu: list) -> bool:
    """Dense strided floating tensors, each gradient/moment of its parameter's dtype and device."""
    ts = [*p, *g, *mu, *nu]
    dtypes = {t.dtype for t in ts} if _dispatch.compiling() else set(map(_dispatch._DTYPE, ts))
    if len(dtypes) == 1 and len(set(map(_dispatch._GET_DEVICE, ts))) == 1:  # the common case
        return dtypes <= _dispatch.FUSED_DTYPES and {t.layout for t in ts} == {torch.strided}
    for tensors in zip(p, g, mu, nu):
        first = tensors[0]
        if first.dtype not in _dispatch.FUSED_DTYPES:
            return False
        for t in tensors:
            if t.layout != torch.strided or t.dtype != first.dtype or t.device != first.device:
                return False
    return True


def _sgd(
    fused: Any, p: list, g: list, lists: list, sub: Any, idx: Any, state: tuple, eligible: bool
) -> Any:
    if not eligible:
        return None
    h = fused.hyper
    kwargs = dict(
        weight_decay=h['weight_decay'],
        momentum=h['momentum'],
        lr=_dispatch.resolve(h['lr']),
        dampening=h['dampening'],
        nesterov=h['nesterov'],
        maximize=h['maximize'],
    )
    if sub is None or type(sub) is TraceState:
        # Zero-initialised buffers make the first step b = g exactly (no dampening).
        _sgd_kernel(p, g, lists[0] if lists else [], is_first_step=False, **kwargs)
        return state
    if _dispatch.compiling():  # the first step is told apart by host step counts: composed ops
        return None
    bufs, counts = lists[0], take(sub.count, idx)
    for value, members in _groups(counts).items():
        torch._fused_sgd_(
            take(p, members),
            take(g, members),
            take(bufs, members),
            is_first_step=value == 0,
            **kwargs,
        )
    _counts.advance_(counts)
    return state


def _sgd_kernel(p: list, g: list, bufs: list, **hyper: Any) -> None:
    """Run torch's fused SGD kernel; when compiling, the same math as tensor ops.

    (Compiled, the composed transformations would write the update into ``g``: the gradients
    would not survive the step, unlike eagerly and in ``torch.optim``.)
    """
    if not _dispatch.compiling():
        torch._fused_sgd_(p, g, bufs, **hyper)
        return
    is_first_step, momentum = hyper['is_first_step'], hyper['momentum']
    wd, lr, dampening = hyper['weight_decay'], hyper['lr'], hyper['dampening']
    for i, (pi, gi) in enumerate(zip(p, g)):
        grad = -gi if hyper['maximize'] else gi
        if wd != 0.0:
            grad = grad + wd * pi
        if momentum != 0.0:
            buf = bufs[i]
            if is_first_step:
                buf.copy_(grad)
            else:
                buf.mul_(momentum).add_(grad, alpha=1.0 - dampening)
            grad = grad + momentum * buf if hyper['nesterov'] else buf
        pi.add_(grad, alpha=-lr)


def adam_direction_(
    g: list, mu: list, nu: list, counts: list, b1: float, b2: float, eps: float
) -> None:
    """One pass of torch's fused AdamW kernel that leaves the Adam direction in ``g``.

    The kernel computes ``p = p * (1 - lr * wd) - lr * direction`` element by element, reading
    the gradient before writing the parameter. With ``p`` aliased to ``g``, ``lr = -1`` and
    ``wd = -1`` the first factor is exactly zero, so ``g`` becomes the direction while ``mu`` and
    ``nu`` get their usual moving averages: 6 memory passes instead of ~19 for the foreach ops.
    ``counts`` are the already incremented step counts.
    """
    with torch.no_grad():
        _adam_kernel(
            True,
            g,
            g,
            mu,
            nu,
            [],
            steps_for(counts, g[0].device),
            lr=-1.0,
            beta1=b1,
            beta2=b2,
            weight_decay=-1.0,
            eps=eps,
            amsgrad=False,
            maximize=False,
        )


def _adam_kernel(adamw: bool, *lists: list, **hyper: Any) -> None:
    """Run torch's fused Adam (or AdamW) kernel; its traced equivalent when compiling."""
    if _dispatch.compiling():
        _traced_adam_(adamw, *lists, **hyper)
    elif adamw:
        torch._fused_adamw_(*lists, **hyper)
    else:
        torch._fused_adam_(*lists, **hyper)


def _log(x: float) -> float:
    return math.log(x) if x > 0.0 else -math.inf


def _traced_adam_(
    adamw: bool,
    p: list,
    g: list,
    mu: list,
    nu: list,
    maxes: list,
    steps: list,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
) -> None:
    r"""The math of ``torch._fused_adam(w)_`` as tensor ops, for ``torch.compile``.

    Inductor inlines scalar math on 0-dim tensors into the element loops that use it: bias
    corrections computed from the 0-dim step counts (as the composed ops and torch.optim's
    compiled step do) cost two ``pow`` per vector of 16 elements, about 4x the eager step on
    CPU (20 tensors / 101k, 1 thread). Here the per-leaf coefficients
    :math:`s = c_1 / \sqrt{c_2}` and :math:`\epsilon c_1` (:math:`c_i = 1 - \beta_i^t`) are one
    ``(n, 2)`` tensor whose last op is ``exp``; inductor computes a reused tensor of heavy ops
    once (its CPU realization heuristic), so the element loops only load two numbers. The step
    is then ``p = p (1 - lr wd) - lr m / (\sqrt{v} s + \epsilon c_1)``, the kernel's
    ``p - (lr / c_1) m / (\sqrt{v} / \sqrt{c_2} + \epsilon)`` rearranged. ``p`` may alias
    ``g`` (the callers' update-in-the-gradient trick): every read of ``g`` comes first.
    """
    t = torch.stack([s.to(torch.float64) for s in steps])
    log_c1 = torch.log(-torch.expm1(t * _log(beta1)))
    log_c2 = torch.log(-torch.expm1(t * _log(beta2)))
    coef = torch.exp(torch.stack([log_c1 - 0.5 * log_c2, log_c1 + _log(eps)], dim=1))
    decay = 1.0 - lr * weight_decay if adamw else 1.0
    for i, (pi, gi, mi, vi) in enumerate(zip(p, g, mu, nu)):
        grad = -gi if maximize else gi
        if weight_decay != 0.0 and not adamw:
            grad = grad + weight_decay * pi
        mi.lerp_(grad, 1.0 - beta1)
        vi.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        if amsgrad:
            maxes[i].copy_(torch.maximum(maxes[i], vi))
            vi = maxes[i]
        scale, shift = coef[i, 0].to(pi.dtype), coef[i, 1].to(pi.dtype)
        pi.copy_(pi * decay - lr * (mi / (vi.sqrt() * scale + shift)))


def _unit_weight_decay(lr: float) -> float:
    """A weight decay ``wd`` with ``lr * wd == 1.0`` exactly, so ``1 - lr * wd`` is exactly 0."""
    wd = 1.0 / lr
    for candidate in (wd, math.nextafter(wd, math.inf), math.nextafter(wd, -math.inf)):
        if lr * candidate == 1.0:
            return candidate
    return wd


def fused_update(
    fused: Any, updates: list, state: tuple, params: list | None, treespec: Any
) -> tuple[list, tuple] | None:
    """The whole in-place ``update`` of an Adam chain in one fused kernel pass, or ``None``.

    With ``p`` aliased to ``g``, ``lr`` and a weight decay ``wd = 1 / lr`` the AdamW kernel's
    first factor ``1 - lr * wd`` is exactly 0, so it leaves ``-lr * direction`` (the final
    update, learning rate included) in ``g``: read g, m, v and write g, m, v — with
    :func:`~torchopt.apply_updates` 36 bytes per float32 parameter against the fused step's 28.
    Weight decay, when set, costs one more pass over the parameters.
    """
    if not 0 <= fused.at < len(state):
        return None
    if fused.kind in _EXACT:
        return _exact_steps.update(fused, updates, state, params, treespec)
    if fused.kind == 'sgd':
        return _sgd_update(fused, updates, state, params, treespec)
    if fused.hyper['eps_root'] != 0.0:
        return None
    if fused.accel:
        # Measured on CPU (1 thread): this one pass beats accel's adam_step_ plus the -lr
        # scaling (121 tensors / 10M: 11.5 vs 15.1 ms; 20 / 101k: 0.10 vs 0.20 ms), so it is
        # taken there; on CUDA the accel kernels keep the step. Still warn if accel is missing.
        present = [u for u in updates if u is not None]
        if any(u.is_cuda for u in present):
            return None
        global _ACCEL_CHECKED
        if _dispatch.compiling():  # checked while tracing (no guard on the flag below)
            _dispatch.accel_kernels(present)
        elif not _ACCEL_CHECKED:  # once: the warning when the plugin is missing
            _dispatch.accel_kernels(present)
            _ACCEL_CHECKED = True
    h = fused.hyper
    wd, lr = h['weight_decay'], _dispatch.resolve(h['lr'])
    if lr == 0.0 or (wd != 0.0 and params is None):
        return None
    where = f'torchopt {fused.kind}'
    sub = state[fused.at]
    _dispatch.check_state(where, updates, sub, ('count',), treespec)
    if params is not None:
        _dispatch.check_like(where, 'params', updates, params, treespec=treespec)
    idx = present_indices(updates)
    g = take(updates, idx)
    if not g:
        return updates, state
    mu, nu, counts = take(sub.mu, idx), take(sub.nu, idx), take(sub.count, idx)
    amsgrad = fused.kind in _AMSGRAD
    maxes = take(sub.nu_max, idx) if amsgrad else []
    p = take(params, idx) if wd != 0.0 and params is not None else []
    lists = (g, mu, nu, *([p] if p else []), *([maxes] * amsgrad))
    if not (_dispatch.kernel_eligible(*lists) or _dispatch.traced_eligible(*lists)):
        return None
    maximize = h['maximize']
    with torch.no_grad():
        if wd != 0.0 and fused.kind not in _DECOUPLED:  # L2: g' = -g + wd p (maximize) or g + wd p
            if maximize:
                torch._foreach_neg_(g)
                maximize = False
            torch._foreach_add_(g, p, alpha=wd)
        _counts.advance_(counts)
        _adam_kernel(
            True,
            g,
            g,
            mu,
            nu,
            maxes,
            steps_for(counts, g[0].device),
            lr=lr,
            beta1=h['b1'],
            beta2=h['b2'],
            weight_decay=_unit_weight_decay(lr),
            eps=h['eps'],
            amsgrad=amsgrad,
            maximize=maximize,
        )
        if wd != 0.0 and fused.kind in _DECOUPLED:  # decoupled: u = -lr (direction + wd p)
            torch._foreach_add_(g, p, alpha=-lr * wd)
    return updates, state


# Tensors from this size on are updated with two ``out=`` ops each (memory-bound: fewer passes
# win); smaller ones with multi-tensor ops (per-call overhead wins). Measured on CPU, 1 thread.
_PER_TENSOR_NUMEL = 1 << 16


def _sgd_update(
    fused: Any, updates: list, state: tuple, params: list | None, treespec: Any
) -> tuple[list, tuple] | None:
    """The in-place ``update`` of an SGD chain with (heavy-ball) momentum, or ``None``.

    ``b = g + momentum * b`` and ``u = -lr * b`` take two passes per tensor, ``torch.add(...,
    out=b)`` and ``torch.mul(b, -lr, out=g)``: read g, b, write b, read b, write g (20 bytes per
    float32 parameter, 32 with :func:`~torchopt.apply_updates`, against the fused step's 20 and
    the composed transformations' 40). No torch op writes ``b`` and ``g`` in one pass; with
    ``use_accelerated_op`` ``torchopt_accel.sgd_update_`` does (16 bytes). Dampened and Nesterov
    momentum run the composed transformations. The second pass writes ``g`` without reading it,
    and a CPU store to memory the pass did not read costs a read too (write-allocate): measured
    at 10M float32 elements, 1 thread, ``torch.mul(b, s, out=g)`` takes 3.5 ms against 1.7 ms
    for ``g.mul_(s)``, so this path's floor is about 1.8x the fused step, not 1.6x.
    """
    from torchopt.transform._trace import TraceState

    h = fused.hyper
    lr, momentum, wd = _dispatch.resolve(h['lr']), h['momentum'], h['weight_decay']
    sub = state[fused.at]
    if momentum == 0.0 or h['nesterov'] or not isinstance(sub, TraceState):
        return None
    if wd != 0.0 and params is None:
        return None  # the composed transformations raise their error
    where = 'torchopt sgd'
    _dispatch.check_state(where, updates, sub, (), treespec)
    if wd != 0.0 and params is not None:  # not None: returned above otherwise
        _dispatch.check_like(where, 'params', updates, params, treespec=treespec)
    idx = present_indices(updates)
    g = take(updates, idx)
    if not g:
        return updates, state
    bufs = take(sub.trace, idx)
    p = take(params, idx) if wd != 0.0 and params is not None else []
    if not _dispatch.kernel_eligible(g, bufs, *([p] if p else [])):
        return None
    if fused.accel:
        kernels = _dispatch.accel_kernels(g)  # warns once without the plugin
        if kernels is not None and hasattr(kernels, 'sgd_update_'):
            with torch.no_grad():  # zero-initialised buffers: the first step gives b = g' exactly
                kernels.sgd_update_(g, bufs, p, lr=lr, momentum=momentum, weight_decay=wd,
                                    maximize=h['maximize'])  # fmt: skip
            return updates, state
    with torch.no_grad():
        if h['maximize']:
            torch._foreach_neg_(g)
        if wd != 0.0:
            torch._foreach_add_(g, p, alpha=wd)
        small = [i for i, t in enumerate(g) if t.numel() < _PER_TENSOR_NUMEL]
        if len(small) < len(g):
            for gi, bi in zip(g, bufs):
                if gi.numel() >= _PER_TENSOR_NUMEL:
                    torch.add(gi, bi, alpha=momentum, out=bi)
                    torch.mul(bi, -lr, out=gi)
            g, bufs = take(g, small), take(bufs, small)
        if g:
            torch._foreach_add_(g, bufs, alpha=momentum)
            torch._foreach_copy_(bufs, g)
            torch._foreach_mul_(g, -lr)
    return updates, state
