"""Second-moment scalers: RMSprop (plain and centered), Adagrad's sum of squares, Adadelta."""

from __future__ import annotations

from typing import Any, NamedTuple

from torchopt import _checks
from torchopt import _foreach as _fe
from torchopt.transform._flat import FlatTransformation, stateful
from torchopt.transform.utils import ema, ema_sq, write_, zeros_like

__all__ = [
    'ScaleByRmsState',
    'scale_by_rms',
    'ScaleByRStdDevState',
    'scale_by_stddev',
    'ScaleByRssState',
    'scale_by_rss',
    'ScaleByAdadeltaState',
    'scale_by_adadelta',
]


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`: the EMA of squared updates."""

    nu: list


def scale_by_rms(
    alpha: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0
) -> FlatTransformation:
    r"""RMSprop scaling: :math:`u_t = g_t / (\sqrt{v_t} + \epsilon)`.

    With :math:`v_t = \alpha v_{t-1} + (1-\alpha) g_t^2`.

    Args:
        alpha: smoothing constant, in ``[0, 1)``.
        eps: added to the denominator.
        initial_scale: initial value of :math:`v`.

    Reference: Hinton, *Neural Networks for Machine Learning*, lecture 6e.
    """
    _checks.check_beta('alpha value', alpha)
    _checks.check_nonnegative('epsilon value', eps)

    def init_fn(params: list, treespec: Any) -> ScaleByRmsState:
        return ScaleByRmsState(nu=zeros_like(params, fill=initial_scale))

    def update_fn(
        g: list, state: ScaleByRmsState, params: Any, inplace: bool
    ) -> tuple[list, ScaleByRmsState]:
        nu = state.nu
        new_nu = ema_sq(nu, g, alpha, inplace=inplace)
        denom = _fe.sqrt(new_nu)
        if inplace:
            _fe.add_(denom, eps)
            _fe.div_(g, denom)
            u = g
        else:
            u = _fe.div(g, _fe.add(denom, eps))
        return u, ScaleByRmsState(nu=new_nu)

    return stateful('scale_by_rms', init_fn, update_fn)


class ScaleByRStdDevState(NamedTuple):
    """State of :func:`scale_by_stddev`: EMAs of updates and of squared updates."""

    mu: list
    nu: list


def scale_by_stddev(
    alpha: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0
) -> FlatTransformation:
    r"""Centered RMSprop: :math:`u_t = g_t / (\sqrt{v_t - m_t^2} + \epsilon)`.

    :math:`m` and :math:`v` are EMAs (rate ``alpha``) of :math:`g` and :math:`g^2`.
    """
    _checks.check_beta('alpha value', alpha)
    _checks.check_nonnegative('epsilon value', eps)

    def init_fn(params: list, treespec: Any) -> ScaleByRStdDevState:
        return ScaleByRStdDevState(mu=zeros_like(params), nu=zeros_like(params, fill=initial_scale))

    def update_fn(
        g: list, state: ScaleByRStdDevState, params: Any, inplace: bool
    ) -> tuple[list, ScaleByRStdDevState]:
        mu = state.mu
        nu = state.nu
        new_nu = ema_sq(nu, g, alpha, inplace=inplace)
        new_mu = ema(mu, g, alpha, inplace=inplace)
        denom = _fe.addcmul(new_nu, new_mu, new_mu, value=-1)
        if inplace:
            _fe.sqrt_(denom)
            _fe.add_(denom, eps)
            _fe.div_(g, denom)
            u = g
        else:
            u = _fe.div(g, _fe.add(_fe.sqrt(denom), eps))
        return u, ScaleByRStdDevState(mu=new_mu, nu=new_nu)

    return stateful('scale_by_stddev', init_fn, update_fn)


class ScaleByRssState(NamedTuple):
    """State of :func:`scale_by_rss`: the running sum of squared updates."""

    sum_of_squares: list


def scale_by_rss(initial_accumulator_value: float = 0.0, eps: float = 1e-10) -> FlatTransformation:
    r"""Adagrad scaling: :math:`s_t = s_{t-1} + g_t^2`, :math:`u_t = g_t / (\sqrt{s_t} + \epsilon)`.

    Reference: Duchi et al., *Adaptive Subgradient Methods*, JMLR 2011.
    """
    _checks.check_nonnegative('initial_accumulator_value', initial_accumulator_value)
    _checks.check_nonnegative('epsilon value', eps)

    def init_fn(params: list, treespec: Any) -> ScaleByRssState:
        return ScaleByRssState(sum_of_squares=zeros_like(params, fill=initial_accumulator_value))

    def update_fn(
        g: list, state: ScaleByRssState, params: Any, inplace: bool
    ) -> tuple[list, ScaleByRssState]:
        sos = state.sum_of_squares
        new_sos = ema_sq(sos, g, 1, inplace=inplace)
        denom = _fe.sqrt(new_sos)
        if inplace:
            _fe.add_(denom, eps)
            _fe.div_(g, denom)
            u = g
        else:
            u = _fe.div(g, _fe.add(denom, eps))
        return u, ScaleByRssState(sum_of_squares=new_sos)

    return stateful('scale_by_rss', init_fn, update_fn, accepts_sparse=True)


class ScaleByAdadeltaState(NamedTuple):
    """State of :func:`scale_by_adadelta`: EMAs of squared updates (``mu``) and squared steps (``nu``)."""

    mu: list
    nu: list


def scale_by_adadelta(
    rho: float = 0.9, eps: float = 1e-6, moment_requires_grad: bool = False
) -> FlatTransformation:
    r"""Adadelta scaling (as ``torch.optim.Adadelta``).

    .. math::

        s_t = \rho s_{t-1} + (1-\rho) g_t^2,\quad
        u_t = g_t \sqrt{(d_{t-1} + \epsilon) / (s_t + \epsilon)},\quad
        d_t = \rho d_{t-1} + (1-\rho) u_t^2

    Reference: Zeiler, *ADADELTA: An Adaptive Learning Rate Method*, 2012.
    """
    _checks.check_beta('rho value', rho)
    _checks.check_nonnegative('epsilon value', eps)

    def init_fn(params: list, treespec: Any) -> ScaleByAdadeltaState:
        return ScaleByAdadeltaState(
            mu=zeros_like(params, moment_requires_grad), nu=zeros_like(params, moment_requires_grad)
        )

    def update_fn(
        g: list, state: ScaleByAdadeltaState, params: Any, inplace: bool
    ) -> tuple[list, ScaleByAdadeltaState]:
        mu = state.mu
        nu = state.nu
        new_mu = ema_sq(mu, g, rho, inplace=inplace)
        std = _fe.sqrt(_fe.add(new_mu, eps))
        delta = _fe.sqrt(_fe.add(nu, eps))
        if inplace:
            _fe.div_(delta, std)
            _fe.mul_(delta, g)
            new_nu = ema_sq(nu, delta, rho, inplace=True)
            u = write_(g, delta, inplace=True)
        else:
            u = _fe.mul(_fe.div(delta, std), g)
            new_nu = ema_sq(nu, u, rho, inplace=False)
        return u, ScaleByAdadeltaState(mu=new_mu, nu=new_nu)

    return stateful('scale_by_adadelta', init_fn, update_fn)
