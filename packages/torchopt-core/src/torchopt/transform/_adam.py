"""Adam and its relatives: Adam, Adamax, RAdam, NAdam.

Step counts are per parameter (one 0-dim float32 CPU tensor each, ``torch.optim``'s ``step``): a
parameter whose gradient is ``None`` is skipped and its count does not advance. Bias corrections
are computed from them in double precision, so float64 results match ``torch.optim`` to
round-off (upstream TorchOpt evaluated them in float32, upstream issue #235). Which kernel runs
is decided by :func:`torchopt._dispatch.adam_path`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from torchopt import _checks, _dispatch, _kernels
from torchopt import _foreach as _fe
from torchopt.transform._adam_autograd import adam_update_diff
from torchopt.transform._adam_kernels import adam_direction, adam_step_untracked
from torchopt.transform._flat import FlatTransformation, stateful
from torchopt.transform.utils import (
    advance,
    bias_correction,
    count_scalars,
    counts_like,
    ema,
    ema_sq,
    smap,
    write_,
    zeros_like,
)

__all__ = [
    'ScaleByAdamState',
    'scale_by_adam',
    'scale_by_accelerated_adam',
    'ScaleByAdamaxState',
    'scale_by_adamax',
    'ScaleByRAdamState',
    'scale_by_radam',
    'ScaleByNAdamState',
    'scale_by_nadam',
]


def check_moment_args(*betas: Any, eps: float, eps_root: float | None = None) -> None:
    """Validate the betas (each in ``[0, 1)``) and epsilons of an Adam-like scaler."""
    for i, b in enumerate(betas):
        _checks.check_beta(f'beta parameter at index {i}', b)
    _checks.check_nonnegative('epsilon value', eps)
    if eps_root is not None:
        _checks.check_nonnegative('eps_root value', eps_root)


def moment_pair(
    params: list, moment_requires_grad: bool, *, fill: float = 0.0, start: float = 0.0
) -> tuple[list, list, list]:
    """``(mu, nu, counts)`` of an Adam-like state.

    Two moment buffers shaped like ``params`` (filled with ``fill``) and the per-parameter step
    counts (starting at ``start``); the scalers of ``_adaptive.py`` share them.
    """
    return (
        zeros_like(params, moment_requires_grad, fill=fill),
        zeros_like(params, moment_requires_grad, fill=fill),
        counts_like(params, start),
    )


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`: first and second moments and step counts, per leaf.

    Flat lists inside the optimizers (``chain.flat``); shaped like the params when
    ``scale_by_adam()`` is used on its own or in :func:`~torchopt.chain`.
    """

    mu: list
    nu: list
    count: list  # type: ignore[assignment]  # shadows tuple.count


def _adam(
    name: str,
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    moment_requires_grad: bool,
    accel: bool,
) -> FlatTransformation:
    check_moment_args(b1, b2, eps=eps, eps_root=eps_root)
    # Learnable betas (tensors that require grad, e.g. from ``inject_hyperparams``): the fused
    # kernels and the autograd node take the betas as constants, so only the op-by-op path
    # differentiates through them. Plain numbers keep every fast path.
    learned = any(isinstance(b, torch.Tensor) and b.requires_grad for b in (b1, b2))

    def init_fn(params: list, treespec: Any) -> ScaleByAdamState:
        return ScaleByAdamState(*moment_pair(params, moment_requires_grad))

    def step(g: list, s: ScaleByAdamState, p: Any, inplace: bool) -> tuple[list, ScaleByAdamState]:
        path = (
            'foreach' if learned else _dispatch.adam_path(inplace, eps_root, accel, g, s.mu, s.nu)
        )
        counts = advance(s.count, inplace)
        if path == 'accel':
            return _accel_step(g, s.mu, s.nu, counts, inplace, (b1, b2, eps, eps_root))
        if path == 'fused':
            _kernels.adam_direction_(g, s.mu, s.nu, counts, b1, b2, eps)
            return g, s
        t = count_scalars(counts)
        bc1, bc2 = bias_correction(t, b1), bias_correction(t, b2)
        if path == 'node':  # recorded: one autograd node with a hand-written backward
            u, mu, nu = adam_update_diff(g, s.mu, s.nu, counts, bc1, bc2, b1, b2, eps, eps_root)
        elif path == 'untracked':
            u, mu, nu = adam_step_untracked(g, s.mu, s.nu, counts, bc1, bc2, b1, b2, eps, eps_root)
        else:
            mu = ema(s.mu, g, b1, inplace=inplace)
            nu = ema_sq(s.nu, g, b2, inplace=inplace)
            u = adam_direction(mu, nu, bc1, bc2, eps, eps_root, recorded=not inplace)
            u = write_(g, u, inplace=inplace)
        return u, ScaleByAdamState(mu=mu, nu=nu, count=counts)

    return stateful(name, init_fn, step, scalars=('count',))


def _accel_step(
    g: list, mu: list, nu: list, counts: list, inplace: bool, hyper: tuple
) -> tuple[list, ScaleByAdamState]:
    """``torchopt_accel``'s kernels, one call per group of equal step counts."""
    kernels: Any = _dispatch.accel_kernels(g)  # not None: the dispatcher chose this path
    values = count_scalars(counts)
    groups: dict[float, list[int]] = {}
    for i, v in enumerate(values if isinstance(values, list) else [values] * len(g)):
        groups.setdefault(float(v), []).append(i)
    u, new_mu, new_nu = list(g), list(mu), list(nu)
    for value, members in groups.items():
        sub = [[x[i] for i in members] for x in (g, mu, nu)]
        if inplace:
            kernels.adam_step_(*sub, *hyper, int(value))
            continue
        out = kernels.adam_forward(*sub, *hyper, int(value))
        for lst, new in zip((u, new_mu, new_nu), out):
            for i, x in zip(members, new):
                lst[i] = x
    return u, ScaleByAdamState(mu=new_mu, nu=new_nu, count=counts)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
) -> FlatTransformation:
    r"""Rescale updates by Adam's bias-corrected moment estimates.

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    Args:
        b1: decay rate of the first moment, in ``[0, 1)``.
        b2: decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root; use ``> 0`` when differentiating through the
            update so that the meta-gradient stays finite where ``v = 0``.
        moment_requires_grad: create the moments with ``requires_grad=True`` (meta-learning).

    Reference: Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
    """
    return _adam('scale_by_adam', b1, b2, eps, eps_root, moment_requires_grad, accel=False)


def scale_by_accelerated_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
) -> FlatTransformation:
    """:func:`scale_by_adam` computed by the fused kernels of ``torchopt-accel``.

    Without the plugin (or without kernels for a device of the step) this warns once and runs
    :func:`scale_by_adam`'s code (never silently). The state is the same
    :class:`ScaleByAdamState`, so the two are interchangeable.
    """
    return _adam(
        'scale_by_accelerated_adam', b1, b2, eps, eps_root, moment_requires_grad, accel=True
    )


class ScaleByAdamaxState(NamedTuple):
    """State of :func:`scale_by_adamax`: first moment, infinity norm, next step index ``t``."""

    mu: list
    nu: list
    t: list


def scale_by_adamax(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, moment_requires_grad: bool = False
) -> FlatTransformation:
    r"""Adamax: Adam with the infinity norm.

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \quad
        \Delta_t = \frac{m_t}{(1-\beta_1^t)\, u_t}

    Reference: Kingma & Ba, ICLR 2015, section 7.
    """
    check_moment_args(b1, b2, eps=eps)

    def init_fn(params: list, treespec: Any) -> ScaleByAdamaxState:
        return ScaleByAdamaxState(*moment_pair(params, moment_requires_grad, start=1.0))

    def step(
        g: list, s: ScaleByAdamaxState, p: Any, inplace: bool
    ) -> tuple[list, ScaleByAdamaxState]:
        factor = smap(lambda c: 1.0 / c, bias_correction(count_scalars(s.t), b1))
        new_mu = ema(s.mu, g, b1, inplace=inplace)
        abs_g = _fe.abs(g)
        _fe.add_(abs_g, eps)
        if inplace:
            _fe.mul_(s.nu, b2)
            _fe.maximum_(s.nu, abs_g)
            new_nu = s.nu
            u = _fe.div(new_mu, new_nu)
            _fe.mul_(u, factor)
            u = write_(g, u, inplace=True)
        else:
            new_nu = _fe.maximum(_fe.mul(s.nu, b2), abs_g)
            u = _fe.mul(_fe.div(new_mu, new_nu), factor)
        return u, ScaleByAdamaxState(mu=new_mu, nu=new_nu, t=advance(s.t, inplace))

    return stateful('scale_by_adamax', init_fn, step, scalars=('t',))


class ScaleByRAdamState(NamedTuple):
    """State of :func:`scale_by_radam`: moments and the next step index ``t``."""

    mu: list
    nu: list
    t: list


def scale_by_radam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, moment_requires_grad: bool = False
) -> FlatTransformation:
    r"""Rectified Adam (as ``torch.optim.RAdam``).

    With :math:`\rho_\infty = 2/(1-\beta_2) - 1` and
    :math:`\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)`: if :math:`\rho_t > 5` the update is
    :math:`\hat m_t \, r_t \sqrt{1-\beta_2^t} / (\sqrt{v_t} + \epsilon)` with the rectification
    :math:`r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}`,
    otherwise :math:`\hat m_t`.

    Reference: Liu et al., *On the Variance of the Adaptive Learning Rate and Beyond*, ICLR 2020.
    """
    check_moment_args(b1, b2, eps=eps)
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def init_fn(params: list, treespec: Any) -> ScaleByRAdamState:
        return ScaleByRAdamState(*moment_pair(params, moment_requires_grad, start=1.0))

    def factors(t: Any) -> tuple[Any, Any]:
        """(the factor on ``m / (sqrt(v) + eps)``, the factor on ``m``): one of them is 0."""
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
        rho_t = rho_inf - 2.0 * t * b2**t / bc2
        ratio = (
            (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
        )
        if isinstance(t, torch.Tensor):  # under a transform: select without a host read
            rect = rho_t > 5.0
            return (torch.where(rect, ratio.clamp(min=0.0).sqrt() * bc2.sqrt() / bc1, 0.0),
                    torch.where(rect, 0.0, 1.0 / bc1))  # fmt: skip
        if rho_t > 5.0:
            return math.sqrt(ratio) * math.sqrt(bc2) / bc1, 0.0
        return 0.0, 1.0 / bc1

    def step(
        g: list, s: ScaleByRAdamState, p: Any, inplace: bool
    ) -> tuple[list, ScaleByRAdamState]:
        t = count_scalars(s.t)
        pairs = smap(factors, t)
        rect, plain = (
            ([a for a, _ in pairs], [b for _, b in pairs]) if isinstance(pairs, list) else pairs
        )
        new_mu = ema(s.mu, g, b1, inplace=inplace)
        new_nu = ema_sq(s.nu, g, b2, inplace=inplace)
        if rect == 0.0:
            u = _fe.mul(new_mu, plain)
        else:
            u = _fe.div(new_mu, _fe.add(_fe.sqrt(new_nu), eps))
            u = (
                _fe.mul(u, rect)
                if plain == 0.0
                else _fe.add(_fe.mul(u, rect), _fe.mul(new_mu, plain))
            )
        u = write_(g, u, inplace=inplace)
        return u, ScaleByRAdamState(mu=new_mu, nu=new_nu, t=advance(s.t, inplace))

    return stateful('scale_by_radam', init_fn, step, scalars=('t',))


class ScaleByNAdamState(NamedTuple):
    """State of :func:`scale_by_nadam`: moments, step counts and the running momentum products."""

    mu: list
    nu: list
    count: list  # type: ignore[assignment]  # shadows tuple.count
    mu_product: list


def scale_by_nadam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    moment_requires_grad: bool = False,
) -> FlatTransformation:
    r"""NAdam: Adam with Nesterov momentum and momentum decay (as ``torch.optim.NAdam``).

    With :math:`\mu_t = \beta_1 (1 - 0.5 \cdot 0.96^{t\psi})` (:math:`\psi` the momentum decay):

    .. math::

        u_t = \frac{1-\mu_t}{1-\prod_{i\le t}\mu_i}\frac{g_t}{d_t}
            + \frac{\mu_{t+1}}{1-\prod_{i\le t+1}\mu_i}\frac{m_t}{d_t},\quad
        d_t = \sqrt{v_t / (1-\beta_2^t)} + \epsilon

    Reference: Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR 2016 workshop.
    """
    check_moment_args(b1, b2, eps=eps)
    _checks.check_nonnegative('momentum_decay', momentum_decay)

    def init_fn(params: list, treespec: Any) -> ScaleByNAdamState:
        return ScaleByNAdamState(
            *moment_pair(params, moment_requires_grad),
            mu_product=[  # (``new_ones``: under ``vmap(init)`` one per member)
                None if x is None else x.new_ones((), dtype=torch.float64, device='cpu')
                for x in params
            ],
        )

    def coefficients(t: Any, prod: Any) -> tuple:
        mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        new_prod = prod * mu_t
        c_g = (1.0 - mu_t) / (1.0 - new_prod)
        return mu_t, c_g, mu_next / (1.0 - new_prod * mu_next), 1.0 - b2**t

    def step(
        g: list, s: ScaleByNAdamState, p: Any, inplace: bool
    ) -> tuple[list, ScaleByNAdamState]:
        counts = advance(s.count, inplace)
        t = count_scalars(counts)
        prod = count_scalars(s.mu_product)
        coef = smap(coefficients, t, prod)
        mu_t, c_g, c_m, bc2 = [list(x) for x in zip(*coef)] if isinstance(coef, list) else coef
        new_prod = _fe.mul(s.mu_product, mu_t)
        if inplace:
            _fe.copy_(s.mu_product, new_prod)
            new_prod = s.mu_product
        new_mu = ema(s.mu, g, b1, inplace=inplace)
        new_nu = ema_sq(s.nu, g, b2, inplace=inplace)
        denom = _fe.add(_fe.sqrt(_fe.div(new_nu, bc2)), eps)
        u = _fe.add(_fe.mul(g, c_g), _fe.mul(new_mu, c_m))
        u = write_(g, _fe.div(u, denom), inplace=inplace)
        return u, ScaleByNAdamState(mu=new_mu, nu=new_nu, count=counts, mu_product=new_prod)

    return stateful('scale_by_nadam', init_fn, step, scalars=('count', 'mu_product'))
