"""More adaptive scalers: AMSGrad, AdaBelief, Yogi, NovoGrad, Adan, and LARS's trust ratio.

AMSGrad follows ``torch.optim.Adam(amsgrad=True)``; the others follow optax's update rules
(``scale_by_belief``, ``scale_by_yogi``, ``scale_by_novograd``, ``scale_by_adan``). Step counts
are per parameter (0-dim float32 CPU tensors) and bias corrections are computed from them in
double precision, as for Adam.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt import _checks, _dispatch
from torchopt import _foreach as _fe
from torchopt.transform._adam import check_moment_args, moment_pair
from torchopt.transform._adam_kernels import adam_direction
from torchopt.transform._flat import FlatTransformation, stateful, stateless
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
    'ScaleByAdanState',
    'ScaleByAmsgradState',
    'ScaleByBeliefState',
    'ScaleByNovogradState',
    'ScaleByYogiState',
    'scale_by_adan',
    'scale_by_amsgrad',
    'scale_by_belief',
    'scale_by_lars_trust_ratio',
    'scale_by_novograd',
    'scale_by_yogi',
]


def _recip(x: Any) -> Any:
    return smap(lambda c: 1.0 / c, x)


def _select(cond: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """``a`` where ``cond`` else ``b``, in float64 (a Python number would become float32)."""
    f64 = torch.float64
    return torch.where(cond, torch.tensor(a, dtype=f64), torch.tensor(b, dtype=f64))


def _sub(a: list, b: list) -> list:
    return _fe.add(a, b, alpha=-1.0)


class ScaleByAmsgradState(NamedTuple):
    """State of :func:`scale_by_amsgrad`: moments, the running maximum of ``nu``, step counts."""

    mu: list
    nu: list
    nu_max: list
    count: list  # type: ignore[assignment]  # shadows tuple.count


def scale_by_amsgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
) -> FlatTransformation:
    r"""AMSGrad: Adam with the running maximum of the second moment (as ``torch.optim.Adam``).

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,
        \quad \hat v_t = \max(\hat v_{t-1}, v_t),\quad
        u_t = \frac{m_t / (1-\beta_1^t)}
                   {\sqrt{\hat v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    (``torch.optim`` takes the maximum of the raw :math:`v_t`; optax's ``scale_by_amsgrad`` of the
    bias-corrected one.)

    Args:
        b1: decay rate of the first moment, in ``[0, 1)``.
        b2: decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root (``> 0`` keeps meta-gradients finite).
        moment_requires_grad: create the moments with ``requires_grad=True``.

    Reference: Reddi et al., *On the Convergence of Adam and Beyond*, ICLR 2018.
    """
    check_moment_args(b1, b2, eps=eps, eps_root=eps_root)

    def init_fn(params: list, treespec: Any) -> ScaleByAmsgradState:
        mu, nu, count = moment_pair(params, moment_requires_grad)
        return ScaleByAmsgradState(mu, nu, zeros_like(params, moment_requires_grad), count)

    def step(
        g: list, s: ScaleByAmsgradState, p: Any, inplace: bool
    ) -> tuple[list, ScaleByAmsgradState]:
        counts = advance(s.count, inplace)
        t = count_scalars(counts)
        bc1, bc2 = bias_correction(t, b1), bias_correction(t, b2)
        mu = ema(s.mu, g, b1, inplace=inplace)
        nu = ema_sq(s.nu, g, b2, inplace=inplace)
        if inplace:
            _fe.maximum_(s.nu_max, nu)
            nu_max = s.nu_max
        else:
            nu_max = _fe.maximum(s.nu_max, nu)
        if (
            inplace
            and eps_root == 0.0
            and not _dispatch.functorch_active()
            and not (isinstance(t, list) and t and isinstance(t[0], torch.Tensor))
        ):
            # u = c m / (sqrt(nu_max) + eps sqrt(bc2)) with c = sqrt(bc2) / bc1, written into the
            # (consumed) gradient by one addcdiv: no temporary for the direction.
            denom = _fe.sqrt(nu_max)
            _fe.add_(denom, smap(lambda b: eps * b**0.5, bc2))
            torch._foreach_zero_(g)
            c = smap(lambda a, b: b**0.5 / a, bc1, bc2)
            if isinstance(c, list):
                torch._foreach_addcdiv_(g, mu, denom, c)
            else:
                torch._foreach_addcdiv_(g, mu, denom, value=c)
            return g, ScaleByAmsgradState(mu=mu, nu=nu, nu_max=nu_max, count=counts)
        u = adam_direction(mu, nu_max, bc1, bc2, eps, eps_root, recorded=not inplace)
        u = write_(g, u, inplace=inplace)
        return u, ScaleByAmsgradState(mu=mu, nu=nu, nu_max=nu_max, count=counts)

    return stateful('scale_by_amsgrad', init_fn, step, scalars=('count',))


class ScaleByBeliefState(NamedTuple):
    """State of :func:`scale_by_belief`: first moment, second moment of the prediction error."""

    mu: list
    nu: list
    count: list  # type: ignore[assignment]  # shadows tuple.count


def scale_by_belief(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
    moment_requires_grad: bool = False,
) -> FlatTransformation:
    r"""AdaBelief: Adam with the second moment of the prediction error :math:`g_t - m_t`.

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon_{root},\quad
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{s_t / (1-\beta_2^t)} + \epsilon}

    With ``nesterov`` the first term is
    :math:`\beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)`.

    Args:
        b1: decay rate of the first moment.
        b2: decay rate of the second moment of the prediction error.
        eps: added to the denominator.
        eps_root: added to :math:`s_t` at every step (kept in the state, as optax does).
        nesterov: Nesterov momentum.
        moment_requires_grad: create the moments with ``requires_grad=True``.

    Reference: Zhuang et al., *AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
    Gradients*, NeurIPS 2020.
    """
    check_moment_args(b1, b2, eps=eps, eps_root=eps_root)

    def init_fn(params: list, treespec: Any) -> ScaleByBeliefState:
        return ScaleByBeliefState(*moment_pair(params, moment_requires_grad))

    def step(
        g: list, s: ScaleByBeliefState, p: Any, inplace: bool
    ) -> tuple[list, ScaleByBeliefState]:
        counts = advance(s.count, inplace)
        t = count_scalars(counts)
        bc1, bc2 = bias_correction(t, b1), bias_correction(t, b2)
        mu = ema(s.mu, g, b1, inplace=inplace)
        error = _sub(g, mu)
        nu = ema_sq(s.nu, error, b2, inplace=inplace)
        if eps_root != 0.0:
            if inplace:
                _fe.add_(nu, eps_root)
            else:
                nu = _fe.add(nu, eps_root)
        if nesterov:
            bc1_next = bias_correction(smap(lambda c: c + 1.0, t), b1)
            m_hat = _fe.add(_fe.mul(mu, smap(lambda a: b1 / a, bc1_next)),
                            _fe.mul(g, smap(lambda a: (1.0 - b1) / a, bc1)))  # fmt: skip
            ones = smap(lambda a: 1.0, bc1)
            u = adam_direction(m_hat, nu, ones, bc2, eps, 0.0, recorded=not inplace)
        else:
            u = adam_direction(mu, nu, bc1, bc2, eps, 0.0, recorded=not inplace)
        u = write_(g, u, inplace=inplace)
        return u, ScaleByBeliefState(mu=mu, nu=nu, count=counts)

    return stateful('scale_by_belief', init_fn, step, scalars=('count',))


class ScaleByYogiState(NamedTuple):
    """State of :func:`scale_by_yogi`: the moments and step counts."""

    mu: list
    nu: list
    count: list  # type: ignore[assignment]  # shadows tuple.count


def scale_by_yogi(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6,
    *,
    moment_requires_grad: bool = False,
) -> FlatTransformation:
    r"""Yogi: an additive, sign-controlled update of the second moment.

    Both moments start at ``initial_accumulator_value``; then

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        v_t = v_{t-1} - (1-\beta_2)\operatorname{sign}(v_{t-1} - g_t^2)\, g_t^2,\quad
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    Args:
        b1: decay rate of the first moment.
        b2: rate of the second moment's additive update.
        eps: added to the denominator (Yogi's default is large, ``1e-3``).
        eps_root: added inside the square root.
        initial_accumulator_value: initial value of both moments (positive).
        moment_requires_grad: create the moments with ``requires_grad=True``.

    Reference: Zaheer et al., *Adaptive Methods for Nonconvex Optimization*, NeurIPS 2018.
    """
    check_moment_args(b1, b2, eps=eps, eps_root=eps_root)
    _checks.check_nonnegative('initial_accumulator_value', initial_accumulator_value)

    def init_fn(params: list, treespec: Any) -> ScaleByYogiState:
        fill = initial_accumulator_value
        return ScaleByYogiState(*moment_pair(params, moment_requires_grad, fill=fill))

    def step(g: list, s: ScaleByYogiState, p: Any, inplace: bool) -> tuple[list, ScaleByYogiState]:
        counts = advance(s.count, inplace)
        t = count_scalars(counts)
        bc1, bc2 = bias_correction(t, b1), bias_correction(t, b2)
        mu = ema(s.mu, g, b1, inplace=inplace)
        g2 = _fe.mul(g, g)
        sign = _fe.sign(_sub(s.nu, g2))
        if inplace:
            _fe.addcmul_(s.nu, sign, g2, value=-(1.0 - b2))
            nu = s.nu
        else:
            nu = _fe.addcmul(s.nu, sign, g2, value=-(1.0 - b2))
        u = adam_direction(mu, nu, bc1, bc2, eps, eps_root, recorded=not inplace)
        u = write_(g, u, inplace=inplace)
        return u, ScaleByYogiState(mu=mu, nu=nu, count=counts)

    return stateful('scale_by_yogi', init_fn, step, scalars=('count',))


class ScaleByNovogradState(NamedTuple):
    """State of :func:`scale_by_novograd`: the momentum, per-leaf second moments, step counts.

    ``nu`` holds one 0-dim tensor per leaf (the layer-wise moment of the squared gradient norm).
    """

    mu: list
    nu: list
    count: list  # type: ignore[assignment]  # shadows tuple.count


def scale_by_novograd(
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    *,
    moment_requires_grad: bool = False,
) -> FlatTransformation:
    r"""NovoGrad: layer-wise second moments of the gradient norm, momentum on normalised gradients.

    Per leaf (layer), with :math:`v_1 = \|g_1\|^2` and :math:`m_1 = d_1`,

    .. math::

        v_t = \beta_2 v_{t-1} + (1-\beta_2)\|g_t\|^2,\quad
        d_t = \frac{g_t}{\sqrt{v_t + \epsilon_{root}} + \epsilon} + \lambda \theta_t,\quad
        m_t = \beta_1 m_{t-1} + d_t,\quad u_t = m_t

    Args:
        b1: momentum decay.
        b2: decay rate of the layer-wise second moment.
        eps: added to the denominator.
        eps_root: added inside the square root.
        weight_decay: :math:`\lambda` (needs ``params`` at update).
        moment_requires_grad: create the momentum with ``requires_grad=True``.

    Reference: Ginsburg et al., *Stochastic Gradient Methods with Layer-wise Adaptive Moments for
    Training of Deep Networks*, 2019.
    """
    check_moment_args(b1, b2, eps=eps, eps_root=eps_root)
    _checks.check_nonnegative('weight_decay value', weight_decay)

    def init_fn(params: list, treespec: Any) -> ScaleByNovogradState:
        return ScaleByNovogradState(
            mu=zeros_like(params, moment_requires_grad),
            # (``new_zeros``: under ``vmap(init)`` one per member, not an expanded scalar)
            nu=[None if x is None else x.new_zeros(()) for x in params],
            count=counts_like(params),
        )

    def weights(c: Any) -> tuple[Any, Any, Any]:
        """(factor on ``nu``, factor on ``|g|^2``, factor on ``mu``) at the new count ``c``."""
        if isinstance(c, torch.Tensor):
            first = c == 1
            return (_select(first, 0.0, b2), _select(first, 1.0, 1.0 - b2),
                    _select(first, 0.0, b1))  # fmt: skip
        return (0.0, 1.0, 0.0) if c == 1 else (b2, 1.0 - b2, b1)

    def step(
        g: list, s: ScaleByNovogradState, p: list | None, inplace: bool
    ) -> tuple[list, ScaleByNovogradState]:
        if weight_decay != 0.0 and p is None:
            raise ValueError('scale_by_novograd: weight decay needs `params` at update')
        counts = advance(s.count, inplace)
        w = smap(weights, count_scalars(counts))
        w_nu, w_sq, w_mu = [list(x) for x in zip(*w)] if isinstance(w, list) else w
        sq = [n * n for n in _fe.norm(g)]
        nu = _fe.add(_fe.mul(s.nu, w_nu), _fe.mul(sq, w_sq))
        inv = [1.0 / (torch.sqrt(n + eps_root) + eps) for n in nu]
        d = _fe.mul(g, inv)
        if weight_decay != 0.0:
            d = _fe.add(d, p, alpha=weight_decay)
        mu = _fe.add(_fe.mul(s.mu, w_mu), d)
        if inplace:
            _fe.copy_(s.nu, nu)
            _fe.copy_(s.mu, mu)
            return write_(g, mu, inplace=True), s._replace(count=counts)
        return mu, ScaleByNovogradState(mu=mu, nu=nu, count=counts)

    return stateful('scale_by_novograd', init_fn, step, scalars=('count', 'nu'))


class ScaleByAdanState(NamedTuple):
    """State of :func:`scale_by_adan`: the three moments, the previous gradient, step counts."""

    m: list
    v: list
    n: list
    g: list
    t: list


def scale_by_adan(
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    moment_requires_grad: bool = False,
) -> FlatTransformation:
    r"""Adan: adaptive Nesterov momentum from the gradient differences.

    With :math:`\Delta_t = g_t - g_{t-1}` (zero at the first step of a leaf),

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \Delta_t,\quad
        n_t = \beta_3 n_{t-1} + (1-\beta_3)(g_t + (1-\beta_2)\Delta_t)^2,

    .. math::

        u_t = \frac{\hat m_t + (1-\beta_2)\hat v_t}{\sqrt{\hat n_t + \epsilon_{root}} + \epsilon}

    with the bias corrections :math:`\hat x_t = x_t / (1-\beta^t)` (optax's parametrisation: the
    betas weigh the past, the paper's are one minus these).

    Args:
        b1: decay rate of the gradients' average.
        b2: decay rate of the gradient differences' average.
        b3: decay rate of the squared term.
        eps: added to the denominator.
        eps_root: added inside the square root.
        moment_requires_grad: create the moments with ``requires_grad=True``.

    Reference: Xie et al., *Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
    Models*, 2022 (Algorithm 1).
    """
    check_moment_args(b1, b2, b3, eps=eps, eps_root=eps_root)

    def init_fn(params: list, treespec: Any) -> ScaleByAdanState:
        return ScaleByAdanState(
            m=zeros_like(params, moment_requires_grad),
            v=zeros_like(params, moment_requires_grad),
            n=zeros_like(params, moment_requires_grad),
            g=zeros_like(params),
            t=counts_like(params),
        )

    def step(g: list, s: ScaleByAdanState, p: Any, inplace: bool) -> tuple[list, ScaleByAdanState]:
        t_old = count_scalars(s.t)
        started = smap(lambda c: (c > 0).to(torch.float64) if isinstance(c, torch.Tensor)
                       else (1.0 if c > 0 else 0.0), t_old)  # fmt: skip
        diff = _sub(g, s.g)
        if started != 1.0:
            diff = _fe.mul(diff, started)
        sq_base = _fe.add(g, diff, alpha=1.0 - b2)
        m = ema(s.m, g, b1, inplace=inplace)
        v = ema(s.v, diff, b2, inplace=inplace)
        n = ema_sq(s.n, sq_base, b3, inplace=inplace)
        counts = advance(s.t, inplace)
        t = count_scalars(counts)
        bc1, bc2, bc3 = (bias_correction(t, b) for b in (b1, b2, b3))
        num = _fe.add(_fe.mul(m, _recip(bc1)), _fe.mul(v, smap(lambda c: (1.0 - b2) / c, bc2)))
        ones = smap(lambda a: 1.0, bc3)
        u = adam_direction(num, n, ones, bc3, eps, eps_root, recorded=not inplace)
        if inplace:
            _fe.copy_(s.g, g)
            return write_(g, u, inplace=True), s
        return u, ScaleByAdanState(m=m, v=v, n=n, g=list(g), t=counts)

    return stateful('scale_by_adan', init_fn, step, scalars=('t',))


def scale_by_lars_trust_ratio(
    trust_coefficient: float = 0.001, eps: float = 0.0
) -> FlatTransformation:
    r"""LARS's layer-wise trust ratio: :math:`u = g \cdot \eta \|\theta\| / (\|g\| + \epsilon)`.

    The ratio is 1 for a leaf whose parameter norm or update norm is zero (needs ``params``).

    Args:
        trust_coefficient: :math:`\eta`.
        eps: added to the update norm.

    Reference: You et al., *Large Batch Training of Convolutional Networks*, 2017; optax
    ``scale_by_trust_ratio(trust_coefficient=..., eps=...)``.
    """
    _checks.check_nonnegative('trust_coefficient', trust_coefficient)
    _checks.check_nonnegative('eps', eps)

    def step(g: list, p: list | None, inplace: bool) -> list:
        assert p is not None  # (requires_params: stateless raised without them)
        p_norm = torch.stack(_fe.norm([x.detach() for x in p] if inplace else p))
        u_norm = torch.stack(_fe.norm(g))
        ratio = trust_coefficient * p_norm / (u_norm + eps)
        ratio = torch.where((p_norm == 0) | (u_norm == 0), torch.ones_like(ratio), ratio)
        factors = list(ratio.unbind())
        if inplace:
            _fe.mul_(g, factors)
            return g
        return _fe.mul(g, factors)

    needs = 'scale_by_lars_trust_ratio needs `params`: call update(..., params=params)'
    name = f'scale_by_lars_trust_ratio({trust_coefficient!r})'
    return stateless(name, step, requires_params=needs)
