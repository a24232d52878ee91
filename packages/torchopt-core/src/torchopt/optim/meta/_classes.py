"""Differentiable (Meta) optimizer classes: thin wrappers binding an alias to :class:`MetaOptimizer`.

Defaults follow upstream TorchOpt: moments require grad by default (they are part of the
meta-graph), except ``MetaAdamW`` whose ``moment_requires_grad`` defaults to ``False``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from torchopt import alias
from torchopt.optim._generated import meta_class
from torchopt.optim.meta.base import MetaOptimizer
from torchopt.typing import ScalarOrSchedule

__all__ = [
    'MetaSGD',
    'MetaAdam',
    'MetaAdamW',
    'MetaAdaGrad',
    'MetaAdagrad',
    'MetaAdaDelta',
    'MetaAdadelta',
    'MetaAdaMax',
    'MetaAdamax',
    'MetaRAdam',
    'MetaRMSProp',
    'MetaRMSprop',
    'MetaNAdam',
    'MetaLion',
    'MetaLamb',
    'MetaAMSGrad',
    'MetaAdafactor',
    'MetaRprop',
    'MetaASGD',
    'MetaMuon',
    'MetaAdaBelief',
    'MetaYogi',
    'MetaNovoGrad',
    'MetaAdan',
    'MetaSignSGD',
    'MetaLARS',
]


class MetaSGD(MetaOptimizer):
    """Differentiable :func:`torchopt.sgd`."""

    def __init__(
        self,
        module: nn.Module,
        lr: ScalarOrSchedule,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        moment_requires_grad: bool = True,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            module,
            alias.sgd(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                moment_requires_grad=moment_requires_grad,
                maximize=maximize,
            ),
        )


class MetaAdam(MetaOptimizer):
    """Differentiable :func:`torchopt.adam`."""

    def __init__(
        self,
        module: nn.Module,
        lr: ScalarOrSchedule = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        eps_root: float = 0.0,
        moment_requires_grad: bool = True,
        maximize: bool = False,
        use_accelerated_op: bool = False,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(
            module,
            alias.adam(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                eps_root=eps_root,
                moment_requires_grad=moment_requires_grad,
                maximize=maximize,
                use_accelerated_op=use_accelerated_op,
                amsgrad=amsgrad,
            ),
        )


class MetaAdamW(MetaOptimizer):
    """Differentiable :func:`torchopt.adamw` (``moment_requires_grad`` defaults to ``False``)."""

    def __init__(
        self,
        module: nn.Module,
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
    ) -> None:
        super().__init__(
            module,
            alias.adamw(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                eps_root=eps_root,
                mask=mask,
                moment_requires_grad=moment_requires_grad,
                maximize=maximize,
                use_accelerated_op=use_accelerated_op,
                amsgrad=amsgrad,
            ),
        )


class MetaAdaGrad(MetaOptimizer):
    """Differentiable :func:`torchopt.adagrad`."""

    def __init__(
        self,
        module: nn.Module,
        lr: ScalarOrSchedule = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            module,
            alias.adagrad(
                lr=lr,
                lr_decay=lr_decay,
                weight_decay=weight_decay,
                initial_accumulator_value=initial_accumulator_value,
                eps=eps,
                maximize=maximize,
            ),
        )


class MetaAdaDelta(MetaOptimizer):
    """Differentiable :func:`torchopt.adadelta`."""

    def __init__(
        self,
        module: nn.Module,
        lr: ScalarOrSchedule = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        moment_requires_grad: bool = True,
    ) -> None:
        super().__init__(
            module,
            alias.adadelta(
                lr=lr,
                rho=rho,
                eps=eps,
                weight_decay=weight_decay,
                moment_requires_grad=moment_requires_grad,
            ),
        )


class MetaAdaMax(MetaOptimizer):
    """Differentiable :func:`torchopt.adamax`."""

    def __init__(
        self,
        module: nn.Module,
        lr: ScalarOrSchedule = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        moment_requires_grad: bool = True,
    ) -> None:
        super().__init__(
            module,
            alias.adamax(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                moment_requires_grad=moment_requires_grad,
            ),
        )


class MetaRAdam(MetaOptimizer):
    """Differentiable :func:`torchopt.radam`."""

    def __init__(
        self,
        module: nn.Module,
        lr: ScalarOrSchedule = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        moment_requires_grad: bool = True,
    ) -> None:
        super().__init__(
            module,
            alias.radam(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                moment_requires_grad=moment_requires_grad,
            ),
        )


class MetaRMSProp(MetaOptimizer):
    """Differentiable :func:`torchopt.rmsprop`."""

    def __init__(
        self,
        module: nn.Module,
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
    ) -> None:
        super().__init__(
            module,
            alias.rmsprop(
                lr=lr,
                alpha=alpha,
                eps=eps,
                weight_decay=weight_decay,
                momentum=momentum,
                centered=centered,
                initial_scale=initial_scale,
                nesterov=nesterov,
                maximize=maximize,
            ),
        )


MetaAdagrad = MetaAdaGrad
MetaAdadelta = MetaAdaDelta
MetaAdamax = MetaAdaMax
MetaRMSprop = MetaRMSProp


# Optimizers beyond TorchOpt 0.7 (and NAdam, Lion, Lamb): made from the alias's signature.
MetaNAdam = meta_class('MetaNAdam', alias.nadam)
MetaLion = meta_class('MetaLion', alias.lion)
MetaLamb = meta_class('MetaLamb', alias.lamb)
MetaAMSGrad = meta_class('MetaAMSGrad', alias.amsgrad)
MetaAdafactor = meta_class('MetaAdafactor', alias.adafactor)
MetaRprop = meta_class('MetaRprop', alias.rprop)
MetaASGD = meta_class('MetaASGD', alias.asgd)
MetaMuon = meta_class('MetaMuon', alias.muon)
MetaAdaBelief = meta_class('MetaAdaBelief', alias.adabelief)
MetaYogi = meta_class('MetaYogi', alias.yogi)
MetaNovoGrad = meta_class('MetaNovoGrad', alias.novograd)
MetaAdan = meta_class('MetaAdan', alias.adan)
MetaSignSGD = meta_class('MetaSignSGD', alias.sign_sgd)
MetaLARS = meta_class('MetaLARS', alias.lars)
