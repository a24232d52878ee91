"""Functional optimizers beyond TorchOpt 0.7, each a composition of transformations.

``amsgrad``, ``adafactor``, ``rprop``, ``asgd`` and ``muon`` follow ``torch.optim`` (defaults,
argument names and results); ``adabelief``, ``yogi``, ``novograd``, ``adan``, ``sign_sgd`` and
``lars``, which ``torch.optim`` lacks, follow optax's update rules and defaults with this
library's conventions (``lr`` first, ``betas`` as a tuple, ``maximize``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from torchopt import _checks
from torchopt.alias._chain import betas_of, optimizer_chain
from torchopt.alias._optimizers import _adam_fused
from torchopt.base import GradientTransformation
from torchopt.transform._adaptive import (
    scale_by_adan,
    scale_by_amsgrad,
    scale_by_belief,
    scale_by_lars_trust_ratio,
    scale_by_novograd,
    scale_by_yogi,
)
from torchopt.transform._elementwise import scale_by_sign
from torchopt.transform._masking import add_decayed_weights, masked
from torchopt.transform._muon import scale_by_muon, scale_by_shape
from torchopt.transform._torch_family import scale_by_adafactor, scale_by_asgd, scale_by_rprop
from torchopt.transform._trace import trace
from torchopt.typing import ScalarOrSchedule

__all__ = [
    'adabelief',
    'adafactor',
    'adan',
    'amsgrad',
    'asgd',
    'lars',
    'muon',
    'novograd',
    'rprop',
    'sign_sgd',
    'yogi',
]


# --- the torch.optim ones -------------------------------------------------------------------------


def amsgrad(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
    maximize: bool = False,
) -> GradientTransformation:
    r"""AMSGrad, as ``torch.optim.Adam(amsgrad=True)`` (L2 weight decay added to the gradient).

    .. math::

        \hat v_t = \max(\hat v_{t-1}, v_t),\quad
        \theta_t = \theta_{t-1}
                   - \eta \frac{m_t/(1-\beta_1^t)}{\sqrt{\hat v_t/(1-\beta_2^t)} + \epsilon}

    with Adam's moments :math:`m_t, v_t` (see :func:`~torchopt.transform.scale_by_amsgrad`).

    Args:
        lr: learning rate (number, scalar tensor or schedule).
        betas: :math:`(\beta_1, \beta_2)`.
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient.
        eps_root: added inside the square root.
        moment_requires_grad: create the moments with ``requires_grad=True``.
        maximize: maximize instead of minimize.

    Reference: Reddi et al., *On the Convergence of Adam and Beyond*, ICLR 2018.
    """
    b1, b2 = betas_of(betas)
    return optimizer_chain(  # with torch's fused Adam kernel (amsgrad=True) when it applies
        scale_by_amsgrad(b1, b2, eps, eps_root, moment_requires_grad),
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        fused=_adam_fused('amsgrad', lr, b1, b2, eps, eps_root, weight_decay, maximize, False),
    )


def adafactor(
    lr: float = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""Adafactor, as ``torch.optim.Adafactor`` (factored second moments, relative step sizes).

    The step size is :math:`\max(\epsilon_2, \operatorname{RMS}(\theta))\min(\text{lr}, 1/\sqrt t)`
    and the weight decay is decoupled and scaled by ``lr``; see
    :func:`~torchopt.transform.scale_by_adafactor` for the update rule. Needs ``params``.

    Args:
        lr: caps the relative step size and scales the weight decay.
        beta2_decay: decay exponent of the second-moment rate.
        eps: :math:`(\epsilon_1, \epsilon_2)` (:math:`\epsilon_1` ``None``: the dtype's epsilon).
        d: update clipping threshold.
        weight_decay: decoupled weight decay.
        maximize: maximize instead of minimize.

    Reference: Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*,
    ICML 2018.
    """
    return optimizer_chain(
        scale_by_adafactor(lr, beta2_decay, eps, d, weight_decay), maximize=maximize
    )


def rprop(
    lr: float = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50),
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""Rprop, as ``torch.optim.Rprop``: per-element step sizes adapted by gradient sign changes.

    See :func:`~torchopt.transform.scale_by_rprop`.

    Args:
        lr: the initial step size.
        etas: :math:`(\eta_-, \eta_+)` multiplicative factors.
        step_sizes: the minimal and maximal step sizes.
        maximize: maximize instead of minimize.

    Reference: Riedmiller & Braun, ICNN 1993.
    """
    return optimizer_chain(scale_by_rprop(lr, etas, step_sizes), maximize=maximize)


def asgd(
    lr: float = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""Averaged SGD, as ``torch.optim.ASGD``; the averaged parameters are in the state (``ax``).

    See :func:`~torchopt.transform.scale_by_asgd`. Needs ``params``.

    Args:
        lr: the initial step size.
        lambd: the decay term.
        alpha: the power of the step-size decay.
        t0: the step at which averaging starts.
        weight_decay: L2 penalty added to the gradient.
        maximize: maximize instead of minimize.

    Reference: Polyak & Juditsky, *Acceleration of Stochastic Approximation by Averaging*, 1992.
    """
    return optimizer_chain(
        scale_by_asgd(lr, lambd, alpha, t0), weight_decay=weight_decay, maximize=maximize
    )


def _muon_lr_ratio(adjust_lr_fn: str | None) -> Any:
    def ratio(shape: torch.Size) -> float:
        rows, cols = shape[:2]
        if adjust_lr_fn is None or adjust_lr_fn == 'original':
            return math.sqrt(max(1.0, rows / cols))
        if adjust_lr_fn == 'match_rms_adamw':
            return 0.2 * math.sqrt(max(rows, cols))
        return 1.0

    return ratio


def muon(
    lr: ScalarOrSchedule = 1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    moment_requires_grad: bool = False,
) -> GradientTransformation:
    r"""Muon, as ``torch.optim.Muon``: orthogonalized momentum for 2-D parameters.

    .. math::

        \theta_t = \theta_{t-1} - \eta\,(r(\theta)\, O_t + \lambda \theta_{t-1})

    with :math:`O_t` from :func:`~torchopt.transform.scale_by_muon` and the shape ratio
    :math:`r = \sqrt{\max(1, A/B)}` (``adjust_lr_fn=None`` or ``'original'``) or
    :math:`0.2\sqrt{\max(A, B)}` (``'match_rms_adamw'``) for an :math:`A \times B` matrix.
    Every parameter must be a matrix: optimize biases and embeddings with another optimizer,
    e.g. ``torchopt.partition({'muon': muon(), 'adamw': adamw()}, labels)``.

    Args:
        lr: learning rate (number, scalar tensor or schedule).
        weight_decay: decoupled weight decay (multiplied by ``lr``).
        momentum: momentum factor.
        nesterov: Nesterov momentum.
        ns_coefficients: the Newton-Schulz coefficients :math:`(a, b, c)`.
        eps: floor of the normalising norm.
        ns_steps: Newton-Schulz iterations.
        adjust_lr_fn: ``None``/``'original'`` or ``'match_rms_adamw'``.
        moment_requires_grad: create the momentum with ``requires_grad=True``.

    Reference: Jordan et al., *Muon: An optimizer for hidden layers in neural networks*, 2024;
    Liu et al., *Muon is Scalable for LLM Training*, 2025.
    """
    _checks.check_lr(lr)
    if adjust_lr_fn is not None and adjust_lr_fn not in ('original', 'match_rms_adamw'):
        raise ValueError(f'Adjust learning rate function {adjust_lr_fn} is not supported')
    return optimizer_chain(
        scale_by_muon(momentum, nesterov, ns_coefficients, ns_steps, eps, moment_requires_grad),
        scale_by_shape(_muon_lr_ratio(adjust_lr_fn), weight_decay),
        lr=lr,
    )


# --- the optax ones -------------------------------------------------------------------------------


def adabelief(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-16,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 1e-16,
    nesterov: bool = False,
    moment_requires_grad: bool = False,
    maximize: bool = False,
) -> GradientTransformation:
    r"""AdaBelief: Adam whose denominator tracks the variance of the prediction error.

    .. math::

        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon_{root},\quad
        \theta_t = \theta_{t-1} - \eta \frac{m_t/(1-\beta_1^t)}{\sqrt{s_t/(1-\beta_2^t)} + \epsilon}

    (see :func:`~torchopt.transform.scale_by_belief`; defaults as optax's ``adabelief``).

    Args:
        lr: learning rate (number, scalar tensor or schedule).
        betas: :math:`(\beta_1, \beta_2)`.
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient.
        eps_root: added to the second moment at every step.
        nesterov: Nesterov momentum.
        moment_requires_grad: create the moments with ``requires_grad=True``.
        maximize: maximize instead of minimize.

    Reference: Zhuang et al., *AdaBelief Optimizer*, NeurIPS 2020.
    """
    b1, b2 = betas_of(betas)
    return optimizer_chain(
        scale_by_belief(
            b1, b2, eps, eps_root, nesterov=nesterov, moment_requires_grad=moment_requires_grad
        ),  # fmt: skip
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
    )


def yogi(
    lr: ScalarOrSchedule = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-3,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6,
    moment_requires_grad: bool = False,
    maximize: bool = False,
) -> GradientTransformation:
    r"""Yogi: Adam with an additive, sign-controlled second moment.

    .. math::

        v_t = v_{t-1} - (1-\beta_2)\operatorname{sign}(v_{t-1} - g_t^2)\, g_t^2,\quad
        \theta_t = \theta_{t-1} - \eta \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}

    (see :func:`~torchopt.transform.scale_by_yogi`; defaults as optax's ``yogi``).

    Args:
        lr: learning rate (number, scalar tensor or schedule).
        betas: :math:`(\beta_1, \beta_2)`.
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient.
        eps_root: added inside the square root.
        initial_accumulator_value: initial value of both moments.
        moment_requires_grad: create the moments with ``requires_grad=True``.
        maximize: maximize instead of minimize.

    Reference: Zaheer et al., *Adaptive Methods for Nonconvex Optimization*, NeurIPS 2018.
    """
    b1, b2 = betas_of(betas)
    return optimizer_chain(
        scale_by_yogi(
            b1,
            b2,
            eps,
            eps_root,
            initial_accumulator_value,
            moment_requires_grad=moment_requires_grad,
        ),  # fmt: skip
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
    )


def novograd(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.25),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
    maximize: bool = False,
) -> GradientTransformation:
    r"""NovoGrad: layer-wise normalised gradients with momentum (weight decay inside the momentum).

    .. math::

        v_t = \beta_2 v_{t-1} + (1-\beta_2)\|g_t\|^2,\quad
        m_t = \beta_1 m_{t-1} + \frac{g_t}{\sqrt{v_t} + \epsilon} + \lambda\theta_{t-1},\quad
        \theta_t = \theta_{t-1} - \eta m_t

    per leaf, with :math:`v_1 = \|g_1\|^2` (see :func:`~torchopt.transform.scale_by_novograd`;
    defaults as optax's ``novograd``).

    Args:
        lr: learning rate (number, scalar tensor or schedule).
        betas: :math:`(\beta_1, \beta_2)`.
        eps: added to the denominator.
        weight_decay: :math:`\lambda` (needs ``params``).
        eps_root: added inside the square root.
        moment_requires_grad: create the momentum with ``requires_grad=True``.
        maximize: maximize instead of minimize.

    Reference: Ginsburg et al., 2019 (arXiv:1905.11286).
    """
    b1, b2 = betas_of(betas)
    return optimizer_chain(  # the decay is inside the momentum: the scaler's
        scale_by_novograd(
            b1, b2, eps, eps_root, weight_decay, moment_requires_grad=moment_requires_grad
        ),  # fmt: skip
        lr=lr,
        maximize=maximize,
    )


def adan(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 1e-8,
    mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
) -> GradientTransformation:
    r"""Adan: adaptive Nesterov momentum, with decoupled weight decay.

    :math:`\theta_t = \theta_{t-1} - \eta\,(\text{adan}_t + \lambda\theta_{t-1})` with the
    direction of :func:`~torchopt.transform.scale_by_adan` (defaults as optax's ``adan``).

    Args:
        lr: learning rate (number, scalar tensor or schedule).
        betas: :math:`(\beta_1, \beta_2, \beta_3)`.
        eps: added to the denominator.
        weight_decay: decoupled weight decay.
        eps_root: added inside the square root.
        mask: bool tree (a prefix of the params) or callable selecting the decayed leaves.
        moment_requires_grad: create the moments with ``requires_grad=True``.
        maximize: maximize instead of minimize.

    Reference: Xie et al., *Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
    Models*, 2022.
    """
    b1, b2, b3 = betas_of(betas, 3)
    return optimizer_chain(
        scale_by_adan(b1, b2, b3, eps, eps_root, moment_requires_grad=moment_requires_grad),
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        decoupled=True,
        mask=mask,
    )


def sign_sgd(lr: ScalarOrSchedule, *, maximize: bool = False) -> GradientTransformation:
    r"""signSGD: :math:`\theta_t = \theta_{t-1} - \eta \operatorname{sign}(g_t)`.

    Args:
        lr: learning rate (number, scalar tensor or schedule).
        maximize: maximize instead of minimize.

    Reference: Bernstein et al., *signSGD: Compressed Optimisation for Non-Convex Problems*,
    ICML 2018.
    """
    return optimizer_chain(scale_by_sign(), lr=lr, maximize=maximize)


def _mask_or_none(mask: Any) -> Any:
    return None if mask is True else mask


def lars(
    lr: ScalarOrSchedule,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: Any = True,
    momentum: float = 0.9,
    nesterov: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""LARS: SGD with momentum on layer-wise trust-ratio-scaled updates (as optax's ``lars``).

    .. math::

        d_t = g_t + \lambda\theta_{t-1},\quad
        \tilde d_t = d_t\,\frac{c\,\|\theta_{t-1}\|}{\|d_t\| + \epsilon},\quad
        b_t = \mu b_{t-1} - \eta \tilde d_t,\quad \theta_t = \theta_{t-1} + b_t

    per leaf (the ratio is 1 where a norm is zero); Nesterov uses :math:`-\eta\tilde d_t + \mu b_t`.

    Args:
        lr: learning rate (number, scalar tensor or schedule).
        weight_decay: :math:`\lambda`.
        weight_decay_mask: leaves to decay (``True``: all; a bool tree prefix or a callable).
        trust_coefficient: :math:`c`.
        eps: added to the update norm.
        trust_ratio_mask: leaves to rescale by the trust ratio (``True``: all).
        momentum: :math:`\mu` (0 disables it).
        nesterov: Nesterov momentum.
        maximize: maximize instead of minimize.

    Reference: You et al., *Large Batch Training of Convolutional Networks*, 2017.
    """
    ratio_mask = _mask_or_none(trust_ratio_mask)
    ratio = scale_by_lars_trust_ratio(trust_coefficient, eps)
    return optimizer_chain(  # the decay comes before the trust ratio, the momentum after -lr
        add_decayed_weights(
            weight_decay, None if weight_decay == 0 else _mask_or_none(weight_decay_mask)
        ),
        ratio if ratio_mask is None else masked(ratio, ratio_mask),
        lr=lr,
        maximize=maximize,
        tail=(trace(momentum, 0.0, nesterov),),
    )
