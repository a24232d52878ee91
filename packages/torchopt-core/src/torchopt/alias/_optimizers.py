"""The optimizers, each defined once as a composition of transformations.

The torch-like classes (:mod:`torchopt.optim`) and the differentiable Meta classes
(:mod:`torchopt.optim.meta`) are thin wrappers over these functions.
"""

from __future__ import annotations

from typing import Any

from torchopt import _checks
from torchopt._dispatch import FusedStep, Live
from torchopt.alias._chain import betas_of, optimizer_chain
from torchopt.base import GradientTransformation
from torchopt.transform import (
    scale_by_accelerated_adam,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_lion,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rss,
    scale_by_schedule,
    scale_by_stddev,
    scale_by_trust_ratio,
    trace,
)
from torchopt.typing import ScalarOrSchedule

__all__ = [
    'sgd',
    'adam',
    'adamw',
    'adagrad',
    'adadelta',
    'adamax',
    'radam',
    'rmsprop',
    'nadam',
    'lion',
    'lamb',
]


def adam_scaler(
    b1: Any,
    b2: Any,
    eps: float,
    eps_root: float,
    moment_requires_grad: bool,
    accel: bool,
    amsgrad: bool,
) -> GradientTransformation:
    """Adam's scaler: ``scale_by_adam``, accel's, or AMSGrad's (which has no accelerated op)."""
    if amsgrad:
        if accel:
            raise ValueError(
                '`amsgrad=True` has no accelerated op: pass `use_accelerated_op=False`'
            )
        return scale_by_amsgrad(b1, b2, eps, eps_root, moment_requires_grad)
    make = scale_by_accelerated_adam if accel else scale_by_adam
    return make(b1, b2, eps, eps_root, moment_requires_grad)


def _constant(lr: Any) -> bool:
    """Whether the fused kernels can take ``lr``: a plain number, or a param group's live value.

    torch's fused kernels take no schedule or tensor; a :class:`~torchopt._dispatch.Live` value
    (``param_groups[i]['lr']`` of the torch-like classes) is read as a number at every step.
    """
    return isinstance(lr, Live) or (isinstance(lr, (int, float)) and not isinstance(lr, bool))


def _adam_fused(
    kind: str,
    lr: Any,
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    weight_decay: float,
    maximize: bool,
    accel: bool,
) -> FusedStep | None:
    """The fused step of an Adam chain: torch's kernel, or accel's (which has ``eps_root``)."""
    if not _constant(lr) or (eps_root != 0.0 and not accel):
        return None
    hyper = dict(lr=lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay,
                 maximize=maximize)  # fmt: skip
    return FusedStep(kind, hyper, at=-1, accel=accel)


def sgd(
    lr: ScalarOrSchedule,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    use_accelerated_op: bool = False,
) -> GradientTransformation:
    r"""Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``.

    .. math::

        g_t \leftarrow \pm g_t + \lambda \theta_{t-1},\quad
        b_t = \mu b_{t-1} + (1-d) g_t \ (b_1 = g_1),\quad
        \theta_t = \theta_{t-1} - \eta\,(g_t + \mu b_t \text{ if Nesterov else } b_t)

    Args:
        lr: learning rate :math:`\eta` (number, scalar tensor or schedule).
        momentum: :math:`\mu \ge 0`.
        dampening: :math:`d`.
        weight_decay: L2 penalty :math:`\lambda`.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        moment_requires_grad: create the momentum buffer with ``requires_grad=True``.
        maximize: maximize the objective instead of minimizing.
        use_accelerated_op: run the in-place update with heavy-ball momentum (no dampening, not
            Nesterov) as ``torchopt_accel``'s one-pass kernel (reads ``g`` and ``b``, writes
            ``b`` and the update: 16 bytes per float32 parameter instead of torch ops' 20).
            Not in TorchOpt 0.7. Without the plugin: core's path and a one-time warning.

    Example:
        >>> import torch, torchopt
        >>> params = (torch.ones(2),)
        >>> opt = torchopt.sgd(lr=0.1, momentum=0.9)
        >>> state = opt.init(params)
        >>> updates, state = opt.update((torch.ones(2),), state)
        >>> torchopt.apply_updates(params, updates)[0]
        tensor([0.9000, 0.9000])
    """
    _checks.check_lr(lr)
    _checks.check_nonnegative('momentum value', momentum)
    _checks.check_nonnegative('weight_decay value', weight_decay)
    fused = None
    if _constant(lr):
        fused = FusedStep('sgd', dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize,
        ), at=-1, accel=use_accelerated_op)  # fmt: skip
    return optimizer_chain(
        trace(momentum, dampening, nesterov, moment_requires_grad),
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        fused=fused,
    )


def adam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    use_accelerated_op: bool = False,
    amsgrad: bool = False,
) -> GradientTransformation:
    r"""Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient).

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,
        \quad \theta_t = \theta_{t-1} - \eta \frac{m_t/(1-\beta_1^t)}
        {\sqrt{v_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    Args:
        lr: learning rate (number, scalar tensor or schedule).
        betas: :math:`(\beta_1, \beta_2)`, each in ``[0, 1)``.
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient.
        eps_root: added inside the square root (``> 0`` keeps meta-gradients finite).
        moment_requires_grad: create moments with ``requires_grad=True`` (meta-learning).
        maximize: maximize instead of minimize.
        use_accelerated_op: use the fused kernels of ``torchopt-accel`` (warns once and runs
            this code when the plugin is missing).
        amsgrad: keep the running maximum of :math:`v_t` in the denominator, as
            ``torch.optim.Adam(amsgrad=True)`` (:func:`torchopt.amsgrad`; not an argument of
            TorchOpt 0.7, hence keyword-only and last).

    Reference: Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015; AMSGrad:
    Reddi et al., *On the Convergence of Adam and Beyond*, ICLR 2018.
    """
    b1, b2 = betas_of(betas)
    scaler = adam_scaler(b1, b2, eps, eps_root, moment_requires_grad, use_accelerated_op, amsgrad)
    hyper = (lr, b1, b2, eps, eps_root, weight_decay, maximize, use_accelerated_op)
    return optimizer_chain(
        scaler,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        fused=_adam_fused('amsgrad' if amsgrad else 'adam', *hyper),
    )


def adamw(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    *,
    eps_root: float = 0.0,
    mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    use_accelerated_op: bool = False,
    amsgrad: bool = False,
) -> GradientTransformation:
    r"""AdamW: Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    :math:`\theta_t = \theta_{t-1} - \eta\,(\text{adam}_t + \lambda \theta_{t-1})`; the decay is
    multiplied by the learning rate, as in PyTorch.

    Args:
        lr: the learning rate :math:`\eta` or a schedule, as :func:`adam`.
        betas: as :func:`adam`.
        eps: as :func:`adam`.
        weight_decay: decoupled decay :math:`\lambda`.
        eps_root: as :func:`adam`.
        mask: bool tree (a prefix of the params) or callable selecting the decayed leaves.
        moment_requires_grad: as :func:`adam`.
        maximize: as :func:`adam`.
        use_accelerated_op: as :func:`adam`.
        amsgrad: AMSGrad's running maximum of :math:`v_t`, as ``torch.optim.AdamW(amsgrad=True)``
            (keyword-only and last: not an argument of TorchOpt 0.7).

    Reference: Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
    """
    b1, b2 = betas_of(betas)
    scaler = adam_scaler(b1, b2, eps, eps_root, moment_requires_grad, use_accelerated_op, amsgrad)
    hyper = (lr, b1, b2, eps, eps_root, weight_decay, maximize, use_accelerated_op)
    kind = 'adamw-amsgrad' if amsgrad else 'adamw'
    fused = None if mask is not None else _adam_fused(kind, *hyper)
    return optimizer_chain(
        scaler,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        decoupled=True,
        mask=mask,
        fused=fused,
    )


def _adagrad_lr_schedule(decay_rate: float) -> Any:
    def schedule(count: Any) -> Any:
        return 1.0 / (1.0 + decay_rate * count)  # branch-free: also under vmap

    return schedule


def adagrad(
    lr: ScalarOrSchedule = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""Adagrad, as ``torch.optim.Adagrad``.

    .. math::

        s_t = s_{t-1} + g_t^2,\quad
        \theta_t = \theta_{t-1} - \frac{\eta}{1 + (t-1)\,\delta} \frac{g_t}{\sqrt{s_t} + \epsilon}

    With a constant ``lr``, :class:`~torchopt.AdaGrad`'s step and the in-place update run
    ``torch.optim``'s own op sequence and give its numbers bit for bit (dense gradients; see
    :mod:`torchopt._exact_steps`).

    Reference: Duchi et al., JMLR 2011.
    """
    _checks.check_lr(lr)
    _checks.check_nonnegative('lr_decay value', lr_decay)
    fused = None
    if _constant(lr):
        fused = FusedStep('adagrad', dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay, maximize=maximize,
        ), at=-1)  # fmt: skip
    return optimizer_chain(
        scale_by_rss(initial_accumulator_value, eps),
        scale_by_schedule(_adagrad_lr_schedule(lr_decay)),
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        fused=fused,
    )


def adadelta(
    lr: ScalarOrSchedule = 1e-3,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    moment_requires_grad: bool = False,
) -> GradientTransformation:
    r"""Adadelta, as ``torch.optim.Adadelta`` (see :func:`~torchopt.transform.scale_by_adadelta`).

    Reference: Zeiler, 2012.
    """
    _checks.check_lr(lr)
    return optimizer_chain(
        scale_by_adadelta(rho, eps, moment_requires_grad), lr=lr, weight_decay=weight_decay
    )


def adamax(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    moment_requires_grad: bool = False,
) -> GradientTransformation:
    r"""Adamax, as ``torch.optim.Adamax`` (see :func:`~torchopt.transform.scale_by_adamax`)."""
    b1, b2 = betas_of(betas)
    return optimizer_chain(
        scale_by_adamax(b1, b2, eps, moment_requires_grad), lr=lr, weight_decay=weight_decay
    )


def radam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    moment_requires_grad: bool = False,
    decoupled_weight_decay: bool = False,
) -> GradientTransformation:
    r"""RAdam, as ``torch.optim.RAdam`` (see :func:`~torchopt.transform.scale_by_radam`).

    ``decoupled_weight_decay`` (``torch.optim``'s RAdamW): the decay :math:`\eta\lambda	heta`
    is added to the update instead of :math:`\lambda	heta` to the gradient.
    """
    _checks.check_bool('decoupled_weight_decay', decoupled_weight_decay)
    b1, b2 = betas_of(betas)
    return optimizer_chain(
        scale_by_radam(b1, b2, eps, moment_requires_grad),
        lr=lr,
        weight_decay=weight_decay,
        decoupled=decoupled_weight_decay,
    )


def rmsprop(
    lr: ScalarOrSchedule = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    *,
    initial_scale: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> GradientTransformation:
    r"""RMSprop, as ``torch.optim.RMSprop``.

    .. math::

        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2,\quad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \text{ (centered)},\quad
        u_t = \frac{g_t}{\sqrt{v_t - \bar g_t^2} + \epsilon}

    followed by momentum :math:`b_t = \mu b_{t-1} + u_t` and :math:`\theta_t = \theta_{t-1} - \eta b_t`.

    With a constant ``lr`` and no ``nesterov``, :class:`~torchopt.RMSProp`'s step and the in-place
    update without momentum run ``torch.optim``'s own op sequence and give its numbers bit for
    bit (:mod:`torchopt._exact_steps` says why that matters for RMSprop).
    """
    _checks.check_lr(lr)
    scaler = scale_by_stddev if centered else scale_by_rms
    fused = None
    if _constant(lr) and not nesterov:  # torch.optim's op sequence (torchopt._exact_steps)
        fused = FusedStep('rmsprop', dict(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
            centered=centered, maximize=maximize,
        ), at=-1)  # fmt: skip
    return optimizer_chain(
        scaler(alpha, eps, initial_scale),
        trace(momentum, 0.0, nesterov),
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        fused=fused,
    )


def nadam(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    *,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> GradientTransformation:
    r"""NAdam, as ``torch.optim.NAdam`` (see :func:`~torchopt.transform.scale_by_nadam`).

    ``decoupled_weight_decay`` (``torch.optim``'s NAdamW): the decay :math:`\eta\lambda	heta`
    is added to the update instead of :math:`\lambda	heta` to the gradient.
    """
    _checks.check_bool('decoupled_weight_decay', decoupled_weight_decay)
    b1, b2 = betas_of(betas)
    return optimizer_chain(
        scale_by_nadam(b1, b2, eps, momentum_decay, moment_requires_grad),
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        decoupled=decoupled_weight_decay,
    )


def lion(
    lr: ScalarOrSchedule = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
    *,
    mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
) -> GradientTransformation:
    r"""Lion (sign momentum) with decoupled weight decay.

    :math:`\theta_t = \theta_{t-1} - \eta(\operatorname{sign}(\beta_1 m_{t-1} + (1-\beta_1)g_t)
    + \lambda\theta_{t-1})`, :math:`m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t`.

    Reference: Chen et al., *Symbolic Discovery of Optimization Algorithms*, NeurIPS 2023.
    """
    b1, b2 = betas_of(betas)
    return optimizer_chain(
        scale_by_lion(b1, b2, moment_requires_grad),
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        decoupled=True,
        mask=mask,
    )


def lamb(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 0.0,
    mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
) -> GradientTransformation:
    r"""LAMB: Adam direction plus decoupled decay, rescaled per tensor by the trust ratio.

    :math:`r_t = \text{adam}_t + \lambda\theta_{t-1}`,
    :math:`\theta_t = \theta_{t-1} - \eta \frac{\|\theta_{t-1}\|}{\|r_t\|} r_t`.

    Reference: You et al., *Large Batch Optimization for Deep Learning*, ICLR 2020.
    """
    b1, b2 = betas_of(betas)
    return optimizer_chain(
        scale_by_adam(b1, b2, eps, eps_root, moment_requires_grad),
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        decoupled=True,
        mask=mask,
        after_decay=(scale_by_trust_ratio(),),
    )
