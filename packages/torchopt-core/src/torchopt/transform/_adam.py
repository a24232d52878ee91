"""Adam and its relatives: Adam, Adamax, RAdam, NAdam.

Bias corrections are computed in Python floats (double precision) from an integer step count,
so float64 results match ``torch.optim`` to round-off (upstream TorchOpt evaluated them in
float32, upstream issue #235) and ``torch.compile`` sees no tensor-valued ``pow``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from torchopt import _foreach as _fe

from torchopt import _checks
from torchopt.transform._adam_autograd import adam_update_diff
from torchopt.transform._adam_kernels import (
    adam_direction,
    adam_direction_diff,
    adam_step_untracked,
    fused_adam_direction_,
)
from torchopt.transform._flat import FlatTransformation, present_indices, put, take
from torchopt.transform.utils import ema, ema_sq, write_, zeros_like

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


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`: first and second moments (flat lists) and step count."""

    mu: list
    nu: list
    count: int


def _check_state(name: str, updates: list, *moments: list) -> None:
    for m in moments:
        if len(m) != len(updates):
            raise ValueError(
                f'{name}: the state holds {len(m)} moment tensors but `updates` has '
                f'{len(updates)} leaves; was the state initialised with these params?'
            )


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
    _checks.check_beta('beta parameter at index 0', b1)
    _checks.check_beta('beta parameter at index 1', b2)
    _checks.check_nonnegative('epsilon value', eps)
    _checks.check_nonnegative('eps_root value', eps_root)

    def init_fn(params: list, treespec: Any) -> ScaleByAdamState:
        return ScaleByAdamState(
            mu=zeros_like(params, moment_requires_grad),
            nu=zeros_like(params, moment_requires_grad),
            count=0,
        )

    def update_fn(
        updates: list, state: ScaleByAdamState, *, params: Any = None, inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, ScaleByAdamState]:
        _check_state('scale_by_adam', updates, state.mu, state.nu)
        idx = present_indices(updates)
        g, mu, nu = take(updates, idx), take(state.mu, idx), take(state.nu, idx)
        if not g:
            return updates, state
        count = state.count + 1
        if inplace and eps_root == 0.0 and _fe.fusable(g, mu, nu):
            fused_adam_direction_(g, mu, nu, count, b1, b2, eps)
            return updates, ScaleByAdamState(mu=state.mu, nu=state.nu, count=count)
        if not inplace and not _fe.functorch_active():
            # Recorded: one autograd node with a hand-written backward; else no graph at all.
            step = adam_update_diff if torch.is_grad_enabled() else adam_step_untracked
            u, new_mu, new_nu = step(g, mu, nu, count, b1, b2, eps, eps_root)
            return put(updates, idx, u), ScaleByAdamState(
                mu=put(state.mu, idx, new_mu), nu=put(state.nu, idx, new_nu), count=count
            )
        new_mu = ema(mu, g, b1, inplace=inplace)
        new_nu = ema_sq(nu, g, b2, inplace=inplace)
        if inplace:
            u = write_(g, adam_direction(new_mu, new_nu, count, b1, b2, eps, eps_root), inplace=True)
        else:
            u = adam_direction_diff(new_mu, new_nu, count, b1, b2, eps, eps_root)
        return put(updates, idx, u), ScaleByAdamState(
            mu=put(state.mu, idx, new_mu), nu=put(state.nu, idx, new_nu), count=count
        )

    return FlatTransformation(init_fn, update_fn, 'scale_by_adam')


def scale_by_accelerated_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
) -> FlatTransformation:
    """:func:`scale_by_adam` computed by the fused kernels of ``torchopt-accel``.

    Without the plugin this warns once and runs :func:`scale_by_adam`'s code (never silently).
    The state is the same :class:`ScaleByAdamState`, so the two are interchangeable.
    """
    from torchopt import accelerated_op  # local: the facade is light, the plugin is lazy

    plain = scale_by_adam(b1, b2, eps, eps_root, moment_requires_grad)

    def update_fn(
        updates: list, state: ScaleByAdamState, *, params: Any = None, inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, ScaleByAdamState]:
        kernels = accelerated_op.kernels()
        if kernels is None:
            return plain.flat_update(
                updates, state, params=params, inplace=inplace, treespec=treespec
            )
        _check_state('scale_by_accelerated_adam', updates, state.mu, state.nu)
        idx = present_indices(updates)
        g, mu, nu = take(updates, idx), take(state.mu, idx), take(state.nu, idx)
        if not g:
            return updates, state
        count = state.count + 1
        if inplace:
            kernels.adam_step_(g, mu, nu, b1, b2, eps, eps_root, count)
            new_mu, new_nu, u = mu, nu, g
        else:
            u, new_mu, new_nu = kernels.adam_forward(g, mu, nu, b1, b2, eps, eps_root, count)
        return put(updates, idx, list(u)), ScaleByAdamState(
            mu=put(state.mu, idx, list(new_mu)), nu=put(state.nu, idx, list(new_nu)), count=count
        )

    return FlatTransformation(plain.flat_init, update_fn, 'scale_by_accelerated_adam')


class ScaleByAdamaxState(NamedTuple):
    """State of :func:`scale_by_adamax`: first moment, infinity norm, next step index ``t``."""

    mu: list
    nu: list
    t: int


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
    _checks.check_beta('beta parameter at index 0', b1)
    _checks.check_beta('beta parameter at index 1', b2)
    _checks.check_nonnegative('epsilon value', eps)

    def init_fn(params: list, treespec: Any) -> ScaleByAdamaxState:
        return ScaleByAdamaxState(
            mu=zeros_like(params, moment_requires_grad),
            nu=zeros_like(params, moment_requires_grad),
            t=1,
        )

    def update_fn(
        updates: list, state: ScaleByAdamaxState, *, params: Any = None, inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, ScaleByAdamaxState]:
        _check_state('scale_by_adamax', updates, state.mu, state.nu)
        idx = present_indices(updates)
        g, mu, nu = take(updates, idx), take(state.mu, idx), take(state.nu, idx)
        if not g:
            return updates, state
        new_mu = ema(mu, g, b1, inplace=inplace)
        abs_g = _fe.abs(g)
        _fe.add_(abs_g, eps)
        if inplace:
            _fe.mul_(nu, b2)
            _fe.maximum_(nu, abs_g)
            new_nu = nu
            u = _fe.div(new_mu, new_nu)
            _fe.mul_(u, 1.0 / (1.0 - b1**state.t))
            u = write_(g, u, inplace=True)
        else:
            new_nu = _fe.maximum(_fe.mul(nu, b2), abs_g)
            u = _fe.div(_fe.div(new_mu, new_nu), 1.0 - b1**state.t)
        return put(updates, idx, u), ScaleByAdamaxState(
            mu=put(state.mu, idx, new_mu), nu=put(state.nu, idx, new_nu), t=state.t + 1
        )

    return FlatTransformation(init_fn, update_fn, 'scale_by_adamax')


class ScaleByRAdamState(NamedTuple):
    """State of :func:`scale_by_radam`: moments and the next step index ``t``."""

    mu: list
    nu: list
    t: int


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
    _checks.check_beta('beta parameter at index 0', b1)
    _checks.check_beta('beta parameter at index 1', b2)
    _checks.check_nonnegative('epsilon value', eps)
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def init_fn(params: list, treespec: Any) -> ScaleByRAdamState:
        return ScaleByRAdamState(
            mu=zeros_like(params, moment_requires_grad),
            nu=zeros_like(params, moment_requires_grad),
            t=1,
        )

    def update_fn(
        updates: list, state: ScaleByRAdamState, *, params: Any = None, inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, ScaleByRAdamState]:
        _check_state('scale_by_radam', updates, state.mu, state.nu)
        idx = present_indices(updates)
        g, mu, nu = take(updates, idx), take(state.mu, idx), take(state.nu, idx)
        if not g:
            return updates, state
        t = state.t
        new_mu = ema(mu, g, b1, inplace=inplace)
        new_nu = ema_sq(nu, g, b2, inplace=inplace)
        bc1 = 1.0 - b1**t
        bc2 = 1.0 - b2**t
        rho_t = rho_inf - 2.0 * t * b2**t / bc2
        if rho_t > 5.0:
            rect = math.sqrt(
                (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
            )
            denom = _fe.add(_fe.sqrt(new_nu), eps)
            u = _fe.div(new_mu, denom)
            factor = rect * math.sqrt(bc2) / bc1
        else:
            u = new_mu
            factor = 1.0 / bc1
        if inplace:
            if u is new_mu:
                u = _fe.mul(u, factor)
            else:
                _fe.mul_(u, factor)
            u = write_(g, u, inplace=True)
        else:
            u = _fe.mul(u, factor)
        return put(updates, idx, u), ScaleByRAdamState(
            mu=put(state.mu, idx, new_mu), nu=put(state.nu, idx, new_nu), t=t + 1
        )

    return FlatTransformation(init_fn, update_fn, 'scale_by_radam')


class ScaleByNAdamState(NamedTuple):
    """State of :func:`scale_by_nadam`: moments, step count and the running momentum product."""

    mu: list
    nu: list
    count: int
    mu_product: float


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
    _checks.check_beta('beta parameter at index 0', b1)
    _checks.check_beta('beta parameter at index 1', b2)
    _checks.check_nonnegative('epsilon value', eps)
    _checks.check_nonnegative('momentum_decay', momentum_decay)

    def init_fn(params: list, treespec: Any) -> ScaleByNAdamState:
        return ScaleByNAdamState(
            mu=zeros_like(params, moment_requires_grad),
            nu=zeros_like(params, moment_requires_grad),
            count=0,
            mu_product=1.0,
        )

    def update_fn(
        updates: list, state: ScaleByNAdamState, *, params: Any = None, inplace: bool = True,
        treespec: Any = None,
    ) -> tuple[list, ScaleByNAdamState]:
        _check_state('scale_by_nadam', updates, state.mu, state.nu)
        idx = present_indices(updates)
        g, mu, nu = take(updates, idx), take(state.mu, idx), take(state.nu, idx)
        if not g:
            return updates, state
        t = state.count + 1
        mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        mu_product = state.mu_product * mu_t
        c_g = (1.0 - mu_t) / (1.0 - mu_product)
        c_m = mu_next / (1.0 - mu_product * mu_next)
        new_mu = ema(mu, g, b1, inplace=inplace)
        new_nu = ema_sq(nu, g, b2, inplace=inplace)
        denom = _fe.add(_fe.sqrt(_fe.div(new_nu, 1.0 - b2**t)), eps)
        u = _fe.add(_fe.mul(g, c_g), _fe.mul(new_mu, c_m))
        if inplace:
            _fe.div_(u, denom)
            u = write_(g, u, inplace=True)
        else:
            u = _fe.div(u, denom)
        return put(updates, idx, u), ScaleByNAdamState(
            mu=put(state.mu, idx, new_mu), nu=put(state.nu, idx, new_nu), count=t,
            mu_product=mu_product,
        )

    return FlatTransformation(init_fn, update_fn, 'scale_by_nadam')
