"""Transformations of the ``torch.optim`` optimizers Rprop, ASGD and Adafactor (Muon: ``_muon``).

Each follows ``torch.optim``'s update rule and defaults (``torch >= 2.5`` for Adafactor) so that
the optimizer aliases match ``torch.optim`` to round-off in float64. Their scalar coefficients
are computed from per-parameter step counts in double precision.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from torchopt import _checks, _dispatch, _leaf_kinds
from torchopt import _foreach as _fe
from torchopt.transform._flat import (
    FlatTransformation,
    stateful,
    take,
)
from torchopt.transform.utils import (
    advance,
    count_scalars,
    counts_like,
    smap,
    zeros_like,
)

__all__ = [
    'ScaleByAdafactorState',
    'ScaleByASGDState',
    'ScaleByRpropState',
    'scale_by_adafactor',
    'scale_by_asgd',
    'scale_by_rprop',
]


# --- Rprop ----------------------------------------------------------------------------------------


class ScaleByRpropState(NamedTuple):
    """State of :func:`scale_by_rprop`: the previous (masked) gradient, step sizes, step counts.

    The update never reads the counts; they are ``torch.optim.Rprop``'s ``step``, so that a
    checkpoint holds what torch's holds.
    """

    prev: list
    step_size: list
    count: list  # type: ignore[assignment]  # shadows tuple.count


def scale_by_rprop(
    learning_rate: float = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50.0),
) -> FlatTransformation:
    r"""Resilient backpropagation (as ``torch.optim.Rprop``); returns the final (descent) update.

    Per element, with :math:`s = \operatorname{sign}(g_t\, g_{t-1})` and step sizes :math:`\delta`
    starting at the learning rate,

    .. math::

        \delta_t = \operatorname{clip}(\delta_{t-1} \cdot \eta_{s}, \delta_{min}, \delta_{max}),
        \quad g_t \leftarrow 0 \text{ where } s < 0,
        \quad u_t = -\operatorname{sign}(g_t)\,\delta_t

    with :math:`\eta_{+}` for :math:`s > 0`, :math:`\eta_{-}` for :math:`s < 0` and 1 otherwise;
    the (masked) :math:`g_t` is kept as :math:`g_{t-1}` of the next step.

    Args:
        learning_rate: the initial step size.
        etas: :math:`(\eta_-, \eta_+)`, with :math:`0 < \eta_- < 1 < \eta_+`.
        step_sizes: :math:`(\delta_{min}, \delta_{max})`.

    Reference: Riedmiller & Braun, *A Direct Adaptive Method for Faster Backpropagation
    Learning: The RPROP Algorithm*, ICNN 1993.
    """
    _checks.check_nonnegative('learning rate', learning_rate)
    eta_minus, eta_plus = etas
    if not 0.0 < eta_minus < 1.0 < eta_plus:
        raise ValueError(f'Invalid eta values: {eta_minus}, {eta_plus}')
    lo, hi = step_sizes

    def init_fn(params: list, treespec: Any) -> ScaleByRpropState:
        return ScaleByRpropState(
            prev=zeros_like(params),
            step_size=zeros_like(params, fill=learning_rate),
            count=counts_like(params),
        )

    def step(
        g: list, s: ScaleByRpropState, p: Any, inplace: bool
    ) -> tuple[list, ScaleByRpropState]:
        inplace = inplace and not _dispatch.functorch_active()
        counts = advance(s.count, inplace)
        prod = _fe.mul(g, s.prev)
        out, prev, sizes = [], [], []
        for x, pr, size, sg in zip(g, s.prev, s.step_size, prod):
            neg = sg < 0
            factor = torch.where(neg, eta_minus, torch.where(sg > 0, eta_plus, 1.0))
            if inplace:
                size.mul_(factor).clamp_(lo, hi)
                x.masked_fill_(neg, 0.0)
                pr.copy_(x)
                out.append(x)
            else:
                size = (size * factor).clamp(lo, hi)
                x = x.masked_fill(neg, 0.0)
                out.append(x)
                prev.append(x)
            sizes.append(size)
        if inplace:
            torch._foreach_sign_(out)
            torch._foreach_mul_(out, sizes)
            torch._foreach_neg_(out)
            return out, s
        u = [-(torch.sign(x) * size) for x, size in zip(out, sizes)]
        return u, ScaleByRpropState(prev=prev, step_size=sizes, count=counts)

    return stateful('scale_by_rprop', init_fn, step, scalars=('count',))


# --- ASGD -----------------------------------------------------------------------------------------


class ScaleByASGDState(NamedTuple):
    """State of :func:`scale_by_asgd`: the averaged parameters ``ax`` and per-leaf step counts."""

    ax: list
    count: list  # type: ignore[assignment]  # shadows tuple.count


def scale_by_asgd(
    lr: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75, t0: float = 1e6
) -> FlatTransformation:
    r"""Averaged SGD (as ``torch.optim.ASGD``); returns the final update and averages the iterates.

    At step :math:`t` (from 1), with
    :math:`\eta_t = \text{lr} / (1 + \lambda\,\text{lr}\,(t-1))^\alpha`
    and :math:`\mu_t = 1 / \max(1, t - 1 - t_0)` (1 at the first step),

    .. math::

        u_t = -\eta_t (g_t + \lambda \theta_{t-1}),\quad
        \bar\theta_t = \bar\theta_{t-1} + \mu_t (\theta_{t-1} + u_t - \bar\theta_{t-1})

    The average :math:`\bar\theta` is ``state.ax`` (the evaluation weights). Needs ``params``.

    Args:
        lr: the initial step size.
        lambd: the decay term :math:`\lambda`.
        alpha: the power of the step-size decay.
        t0: the step at which averaging starts.

    Reference: Polyak & Juditsky, *Acceleration of Stochastic Approximation by Averaging*, 1992.
    """
    _checks.check_nonnegative('learning rate', lr)

    def init_fn(params: list, treespec: Any) -> ScaleByASGDState:
        return ScaleByASGDState(ax=zeros_like(params), count=counts_like(params))

    def coefficients(t: Any) -> tuple[Any, Any]:
        """``(eta, mu)`` at the new count ``t``."""
        eta = lr / (1.0 + lambd * lr * (t - 1.0)) ** alpha
        if isinstance(t, torch.Tensor):
            mu = torch.where(t == 1, 1.0, 1.0 / torch.clamp(t - 1.0 - t0, min=1.0))
            return eta, mu
        return eta, 1.0 if t == 1 else 1.0 / max(1.0, t - 1.0 - t0)

    def step(g: list, s: ScaleByASGDState, p: list | None, inplace: bool) -> tuple[list, Any]:
        if p is None:
            raise ValueError('scale_by_asgd needs `params`: call update(..., params=params)')
        counts = advance(s.count, inplace)
        coef = smap(coefficients, count_scalars(counts))
        eta, mu = [list(x) for x in zip(*coef)] if isinstance(coef, list) else coef
        neg_eta = smap(lambda e: -e, eta)
        decay = smap(lambda e: -lambd * e, eta)
        if inplace:
            with torch.no_grad():
                _fe.mul_(g, neg_eta)
                if lambd != 0.0:
                    if isinstance(decay, list):
                        _fe.add_(g, _fe.mul(p, decay))
                    else:
                        _fe.add_(g, p, alpha=decay)
                new_params = _fe.add(p, g)
                if not isinstance(mu, list) and mu == 1.0:
                    _fe.copy_(s.ax, new_params)
                else:
                    _lerp_(s.ax, new_params, mu)
            return g, s._replace(count=counts)
        u = _fe.mul(g, neg_eta)
        if lambd != 0.0:
            u = _fe.add(u, _fe.mul(p, decay))
        new_params = _fe.add(p, u)
        if isinstance(mu, list):
            ax = [torch.lerp(a, x, m) for a, x, m in zip(s.ax, new_params, mu)]
        else:
            ax = new_params if mu == 1.0 else _fe.lerp(s.ax, new_params, mu)
        return u, ScaleByASGDState(ax=ax, count=counts)

    return stateful('scale_by_asgd', init_fn, step, scalars=('count',))


def _lerp_(a: list, b: list, w: Any) -> None:
    if isinstance(w, list):
        batched = _dispatch.functorch_active()  # lerp_ has no batching rule: copy instead
        for x, y, v in zip(a, b, w):
            if batched:
                x.copy_(torch.lerp(x, y, v))
            else:
                x.lerp_(y, v)
    else:
        _fe.lerp_(a, b, w)


# --- Adafactor ------------------------------------------------------------------------------------


class ScaleByAdafactorState(NamedTuple):
    """State of :func:`scale_by_adafactor`, per leaf.

    A leaf of rank >= 2 keeps the factored second moment: ``row_var`` (its shape with the last
    dimension 1) and ``col_var`` (the second-to-last dimension 1); a leaf of rank <= 1 keeps the
    full ``variance``. The unused fields hold empty tensors (shape ``(0,)``), so the state is a
    pure tree of tensors (``vmap`` over ``init`` works).
    """

    row_var: list
    col_var: list
    variance: list
    count: list  # type: ignore[assignment]  # shadows tuple.count


def _host_norms(xs: list) -> list[float]:
    """The 2-norms of CPU tensors as Python floats (``x.norm().item()`` of each).

    One multi-tensor norm and one copy to the host instead of a norm and an ``item()`` per
    tensor: the same values, in a fraction of the per-tensor overhead of a small tree.
    """
    with torch.no_grad():
        norms = torch._foreach_norm(xs)
    if len({x.dtype for x in norms}) == 1 and _dispatch.plain(norms):  # (DTensor: no tolist)
        return torch.stack(norms).tolist()
    return [x.item() for x in norms]


def _factored_shapes(shape: torch.Size) -> tuple[tuple, tuple]:
    row = (*shape[:-1], 1)
    col = (*shape[:-2], 1, shape[-1])
    return row, col


def scale_by_adafactor(
    lr: float = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
) -> FlatTransformation:
    r"""Adafactor (as ``torch.optim.Adafactor``); returns the final (descent) update.

    At step :math:`t`, with :math:`\hat\beta_{2,t} = 1 - t^{\tau}` (:math:`\tau` =
    ``beta2_decay``), :math:`\rho_t = \min(\text{lr}, 1/\sqrt t)` and
    :math:`\alpha_t = \max(\epsilon_2, \operatorname{RMS}(\theta_{t-1}))\,\rho_t`: for a matrix
    (the last two dimensions) the second moment is factored into row and column means,

    .. math::

        R_t = \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\operatorname{mean}_{-1}(g_t^2),\quad
        C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\operatorname{mean}_{-2}(g_t^2),\quad
        \hat V_t = \frac{R_t C_t}{\max(\operatorname{mean}(R_t), \epsilon_1)}

    (a vector keeps :math:`\hat V_t` itself); then :math:`U_t = g_t / \sqrt{\max(\hat V_t,
    \epsilon_1^2)}` and

    .. math::

        u_t = -\text{lr}\,\lambda\,\theta_{t-1}
              - \frac{\alpha_t}{\max(1, \operatorname{RMS}(U_t)/d)} U_t

    Needs ``params``. :math:`\epsilon_1` ``None`` is the machine epsilon of the parameter's dtype.

    Args:
        lr: the learning rate (caps the relative step size, and scales the weight decay).
        beta2_decay: :math:`\tau`, the decay exponent of :math:`\hat\beta_2`.
        eps: :math:`(\epsilon_1, \epsilon_2)`.
        d: the update clipping threshold.
        weight_decay: decoupled weight decay :math:`\lambda`.

    Reference: Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*,
    ICML 2018.
    """
    _checks.check_nonnegative('learning rate', lr)
    _checks.check_nonnegative('weight_decay value', weight_decay)
    eps1, eps2 = eps
    if beta2_decay > 0:
        raise ValueError(f'beta2_decay should be <= 0 but is: {beta2_decay}')
    if eps1 is not None:
        _checks.check_nonnegative('epsilon1 value', eps1)
    _checks.check_nonnegative('epsilon2 value', eps2)
    if not d >= 1.0:
        raise ValueError(f'Clipping threshold d should be >= 1 but is: {d}')
    name = 'scale_by_adafactor'

    def init_fn(params: list, treespec: Any) -> ScaleByAdafactorState:
        _leaf_kinds.check_real(name, params, treespec)
        rows: list = []
        cols: list = []
        variances: list = []
        for x in params:
            if x is None:
                rows.append(None)
                cols.append(None)
                variances.append(None)
            elif x.dim() <= 1:
                rows.append(x.new_zeros(0))
                cols.append(x.new_zeros(0))
                variances.append(torch.zeros_like(x))
            else:
                row, col = _factored_shapes(x.shape)
                rows.append(x.new_zeros(row))
                cols.append(x.new_zeros(col))
                variances.append(x.new_zeros(0))
        return ScaleByAdafactorState(rows, cols, variances, counts_like(params))

    def check(updates: list, state: Any, treespec: Any) -> None:
        for f in state._fields:
            if len(getattr(state, f)) != len(updates):
                raise ValueError(
                    f'{name}: state.{f} holds {len(getattr(state, f))} entries but there are '
                    f'{len(updates)} gradients; was the state initialised (or loaded) for these '
                    'parameters?'
                )
        _dispatch.check_counts(name, 'count', state.count)
        rows, cols, variances = state.row_var, state.col_var, state.variance
        for i, u in enumerate(updates):
            if u is None:
                continue
            shape = u.shape  # a torch.Size: compares with tuples (this runs at every step)
            if len(shape) > 1:
                want = ((*shape[:-1], 1), (*shape[:-2], 1, shape[-1]), (0,))
            else:
                want = ((0,), (0,), tuple(shape))
            for f, have, expected in zip(state._fields, (rows[i], cols[i], variances[i]), want):
                if not isinstance(have, torch.Tensor) or have.shape != expected:
                    raise ValueError(
                        f'{name}: {_dispatch._leaf(i, treespec)}: the gradient has shape '
                        f'{tuple(shape)}, so state.{f} must have shape {expected}, but it has '
                        f'{None if have is None else tuple(have.shape)}; the state was probably '
                        'initialised (or loaded) for parameters of other shapes'
                    )

    def leaf(g: torch.Tensor, p: torch.Tensor, row: Any, col: Any, var: Any, t: Any,
             inplace: bool) -> tuple:  # fmt: skip
        e1 = torch.finfo(p.dtype).eps if eps1 is None else eps1
        w = t**beta2_decay
        if isinstance(t, torch.Tensor):
            rho = torch.clamp(1.0 / torch.sqrt(t), max=lr)
        else:
            rho = min(lr, 1.0 / t**0.5)
        # In place on the CPU the per-leaf scalars are host floats, as torch.optim computes
        # them (fewer 0-dim tensor ops); elsewhere they stay tensors (no host synchronisation,
        # differentiable with respect to the parameters).
        host = inplace and p.device.type == 'cpu' and not isinstance(t, torch.Tensor)
        if host:
            alpha: Any = max(eps2, p.detach().norm().item() / math.sqrt(p.numel())) * rho
        else:
            rms_p = torch.linalg.vector_norm(p) / math.sqrt(p.numel())
            alpha = torch.clamp(rms_p, min=eps2) * rho
        if g.dim() > 1:
            row_mean = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
            col_mean = torch.linalg.vector_norm(g, dim=-2, keepdim=True)
            if inplace:
                row.lerp_(row_mean.square_().div_(g.size(-1)), w)
                col.lerp_(col_mean.square_().div_(g.size(-2)), w)
                estimate = torch.matmul(row, col)
                estimate.div_(row.mean(dim=-2, keepdim=True).clamp_(min=e1))
            else:
                row = torch.lerp(row, row_mean.square() / g.size(-1), w)
                col = torch.lerp(col, col_mean.square() / g.size(-2), w)
                estimate = (row @ col) / row.mean(dim=-2, keepdim=True).clamp(min=e1)
        elif inplace:
            var.lerp_(g * g, w)
            estimate = var.clone()
        else:
            var = torch.lerp(var, g * g, w)
            estimate = var
        if inplace:
            update = estimate.clamp_(min=e1 * e1).rsqrt_().mul_(g)
        else:
            update = estimate.clamp(min=e1 * e1).rsqrt() * g
        if host:
            rms = update.norm().item() / (math.sqrt(update.numel()) * d)
            scale: Any = -alpha / max(1.0, rms)
        else:
            rms_u = torch.linalg.vector_norm(update) / (math.sqrt(update.numel()) * d)
            scale = -alpha / torch.clamp(rms_u, min=1.0)
        if inplace:
            torch.mul(update, scale, out=g)
            if weight_decay != 0.0:
                g.add_(p.detach(), alpha=-lr * weight_decay)
            return g, row, col, var
        u = update * scale
        if weight_decay != 0.0:
            u = u - (lr * weight_decay) * p
        return u, row, col, var

    def _inplace_cpu(g: list, p: list, rows: list, cols: list, variances: list, ts: list) -> list:
        """The in-place step on CPU tensors: multi-tensor ops, per-leaf scalars as host floats.

        The same operations as :func:`leaf` (and as ``torch.optim``'s foreach Adafactor), with
        the gradients overwritten by the updates.
        """
        n = len(g)
        w = [t**beta2_decay for t in ts]
        alpha = [max(eps2, norm / math.sqrt(x.numel())) * min(lr, t**-0.5)
                 for x, norm, t in zip(p, _host_norms(p), ts)]  # fmt: skip
        e1 = [torch.finfo(x.dtype).eps if eps1 is None else eps1 for x in g]
        mats = [i for i in range(n) if g[i].dim() > 1]
        vecs = [i for i in range(n) if g[i].dim() <= 1]
        estimates: list = [None] * n
        if mats:
            gm = take(g, mats)
            for r_or_c, dim in ((take(rows, mats), -1), (take(cols, mats), -2)):
                means = [torch.linalg.vector_norm(x, dim=dim, keepdim=True) for x in gm]
                torch._foreach_mul_(means, means)
                torch._foreach_div_(means, [float(x.size(dim)) for x in gm])
                torch._foreach_lerp_(r_or_c, means, take(w, mats))
            ests = [torch.matmul(r, c) for r, c in zip(take(rows, mats), take(cols, mats))]
            row_means = [r.mean(dim=-2, keepdim=True) for r in take(rows, mats)]
            torch._foreach_clamp_min_(row_means, take(e1, mats))
            torch._foreach_div_(ests, row_means)
            for i, e in zip(mats, ests):
                estimates[i] = e
        if vecs:
            gv, vv = take(g, vecs), take(variances, vecs)
            torch._foreach_lerp_(vv, torch._foreach_mul(gv, gv), take(w, vecs))
            for i, v in zip(vecs, vv):
                estimates[i] = v.clone()
        torch._foreach_clamp_min_(estimates, [e * e for e in e1])
        torch._foreach_rsqrt_(estimates)
        torch._foreach_mul_(g, estimates)  # g is now the unscaled update
        del estimates
        scales = [-a / max(1.0, norm / (math.sqrt(x.numel()) * d))
                  for a, x, norm in zip(alpha, g, _host_norms(g))]  # fmt: skip
        torch._foreach_mul_(g, scales)
        if weight_decay != 0.0:
            torch._foreach_add_(g, [x.detach() for x in p], alpha=-lr * weight_decay)
        return g

    def step(
        g: list, s: ScaleByAdafactorState, p: list | None, inplace: bool
    ) -> tuple[list, ScaleByAdafactorState]:
        if p is None:
            raise ValueError('scale_by_adafactor needs `params`: call update(..., params=params)')
        inplace = inplace and not _dispatch.functorch_active()
        counts = advance(s.count, inplace)
        t = count_scalars(counts)
        rows, cols, variances = s.row_var, s.col_var, s.variance
        ts = t if isinstance(t, list) else [t] * len(g)
        if (
            inplace
            and not isinstance(ts[0], torch.Tensor)
            and all(x.device.type == 'cpu' for x in g)
        ):
            u = _inplace_cpu(g, p, rows, cols, variances, ts)
        else:
            outs = [
                leaf(*args, inplace)  # type: ignore[call-arg]  # mypy: zip(6 lists) -> tuple[Any, ...]
                for args in zip(g, p, rows, cols, variances, ts)
            ]
            u, rows, cols, variances = ([o[k] for o in outs] for k in range(4))
        return u, ScaleByAdafactorState(rows, cols, variances, counts)

    return stateful(name, init_fn, step, check=check)
