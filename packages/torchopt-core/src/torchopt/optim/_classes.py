"""Torch-like optimizer classes: thin wrappers that bind an alias to :class:`Optimizer`.

The math, validation and docstrings live in :mod:`torchopt.alias`; the defaults and the
argument order here follow ``torch.optim`` (and upstream TorchOpt), which differ from the
functional aliases in places.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from torchopt import _checks, alias
from torchopt.optim._generated import torch_like_class
from torchopt.optim.base import Optimizer
from torchopt.typing import ScalarOrSchedule

__all__ = [
    'SGD',
    'Adam',
    'AdamW',
    'AdaGrad',
    'Adagrad',
    'AdaDelta',
    'Adadelta',
    'AdaMax',
    'Adamax',
    'RAdam',
    'RMSProp',
    'RMSprop',
    'NAdam',
    'Lion',
    'Lamb',
    # beyond TorchOpt 0.7: classes made from the alias's signature
    'AMSGrad',
    'Adafactor',
    'Rprop',
    'ASGD',
    'Muon',
    'AdaBelief',
    'Yogi',
    'NovoGrad',
    'Adan',
    'SignSGD',
    'LARS',
]

Params = Iterable[torch.Tensor]


class SGD(Optimizer):
    """:func:`torchopt.sgd` as a torch-like optimizer (argument order of ``torch.optim.SGD``)."""

    _factory = staticmethod(alias.sgd)
    _fixed: ClassVar[dict[str, Any]] = {'moment_requires_grad': False}

    def __init__(
        self,
        params: Params,
        lr: ScalarOrSchedule,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        *,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        self._setup(
            params,
            None,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
            ),
            options=dict(foreach=foreach, differentiable=differentiable, fused=fused),
        )


def _adam_family(*, decoupled_weight_decay: bool, mask: Any = None, **kwargs: Any) -> Any:
    """:func:`torchopt.adam`, or :func:`torchopt.adamw` with ``decoupled_weight_decay``.

    ``torch.optim``'s flag, kept in the groups (``torch.optim.AdamW``'s hold ``True``, Adam's
    ``False``) and so in checkpoints: a ``torch.optim.AdamW`` checkpoint loaded into
    :class:`Adam` runs AdamW's decay, as it does in ``torch.optim.Adam``.
    """
    _checks.check_bool('decoupled_weight_decay', decoupled_weight_decay)
    if decoupled_weight_decay:
        return alias.adamw(mask=mask, **kwargs)
    if mask is not None:
        raise ValueError('AdamW: a `mask` needs decoupled_weight_decay=True (it masks that decay)')
    return alias.adam(**kwargs)


class Adam(Optimizer):
    """:func:`torchopt.adam` as a torch-like optimizer.

    ``amsgrad`` (keyword-only, after TorchOpt 0.7's arguments) is ``torch.optim.Adam``'s: the
    checkpoint then holds ``max_exp_avg_sq`` as torch's does. So is ``decoupled_weight_decay``:
    ``True`` gives AdamW's decay (:func:`torchopt.adamw`).
    """

    _factory = staticmethod(_adam_family)
    _fixed: ClassVar[dict[str, Any]] = {'moment_requires_grad': False}

    def __init__(
        self,
        params: Params,
        lr: ScalarOrSchedule = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        eps_root: float = 0.0,
        maximize: bool = False,
        use_accelerated_op: bool = False,
        amsgrad: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        self._setup(
            params,
            None,
            dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                eps_root=eps_root,
                maximize=maximize,
                use_accelerated_op=use_accelerated_op,
                amsgrad=amsgrad,
                decoupled_weight_decay=decoupled_weight_decay,
            ),
            options=dict(
                foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused
            ),
        )


class AdamW(Optimizer):
    """:func:`torchopt.adamw` as a torch-like optimizer (``amsgrad`` as ``torch.optim.AdamW``).

    Its groups hold ``decoupled_weight_decay=True``, as ``torch.optim.AdamW``'s do, also after
    loading a ``torch.optim.Adam`` checkpoint.
    """

    _factory = staticmethod(_adam_family)
    _loads_with: ClassVar[dict[str, Any]] = {'decoupled_weight_decay': True}
    _fixed: ClassVar[dict[str, Any]] = {'moment_requires_grad': False}

    def __init__(
        self,
        params: Params,
        lr: ScalarOrSchedule = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        eps_root: float = 0.0,
        mask: Any = None,
        maximize: bool = False,
        use_accelerated_op: bool = False,
        amsgrad: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        self._setup(
            params,
            None,
            dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                eps_root=eps_root,
                mask=mask,
                maximize=maximize,
                use_accelerated_op=use_accelerated_op,
                amsgrad=amsgrad,
                decoupled_weight_decay=True,
            ),
            options=dict(
                foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused
            ),
        )


class AdaGrad(Optimizer):
    """:func:`torchopt.adagrad` as a torch-like optimizer."""

    _factory = staticmethod(alias.adagrad)

    def __init__(
        self,
        params: Params,
        lr: ScalarOrSchedule = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        self._setup(
            params,
            None,
            dict(
                lr=lr,
                lr_decay=lr_decay,
                weight_decay=weight_decay,
                initial_accumulator_value=initial_accumulator_value,
                eps=eps,
                maximize=maximize,
            ),
            options=dict(foreach=foreach, differentiable=differentiable, fused=fused),
        )


class AdaDelta(Optimizer):
    """:func:`torchopt.adadelta` as a torch-like optimizer (``lr`` defaults to 1.0 as torch)."""

    _factory = staticmethod(alias.adadelta)
    _fixed: ClassVar[dict[str, Any]] = {'moment_requires_grad': False}

    def __init__(
        self,
        params: Params,
        lr: ScalarOrSchedule = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        self._setup(
            params,
            None,
            dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay),
            options=dict(foreach=foreach, capturable=capturable, differentiable=differentiable),
        )


class AdaMax(Optimizer):
    """:func:`torchopt.adamax` as a torch-like optimizer (torch's defaults)."""

    _factory = staticmethod(alias.adamax)
    _fixed: ClassVar[dict[str, Any]] = {'moment_requires_grad': False}

    def __init__(
        self,
        params: Params,
        lr: ScalarOrSchedule = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        self._setup(
            params,
            None,
            dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
            ),
            options=dict(foreach=foreach, capturable=capturable, differentiable=differentiable),
        )


class RAdam(Optimizer):
    """:func:`torchopt.radam` as a torch-like optimizer (torch's defaults)."""

    _factory = staticmethod(alias.radam)
    _fixed: ClassVar[dict[str, Any]] = {'moment_requires_grad': False}

    def __init__(
        self,
        params: Params,
        lr: ScalarOrSchedule = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        self._setup(
            params,
            None,
            dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                decoupled_weight_decay=decoupled_weight_decay,
            ),
            options=dict(foreach=foreach, capturable=capturable, differentiable=differentiable),
        )


class RMSProp(Optimizer):
    """:func:`torchopt.rmsprop` as a torch-like optimizer."""

    _factory = staticmethod(alias.rmsprop)

    def __init__(
        self,
        params: Params,
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
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        self._setup(
            params,
            None,
            dict(
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
            options=dict(foreach=foreach, capturable=capturable, differentiable=differentiable),
        )


class NAdam(Optimizer):
    """:func:`torchopt.nadam` as a torch-like optimizer."""

    _factory = staticmethod(alias.nadam)
    _fixed: ClassVar[dict[str, Any]] = {'moment_requires_grad': False}

    def __init__(
        self,
        params: Params,
        lr: ScalarOrSchedule = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 4e-3,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        self._setup(
            params,
            None,
            dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                momentum_decay=momentum_decay,
                maximize=maximize,
                decoupled_weight_decay=decoupled_weight_decay,
            ),
            options=dict(foreach=foreach, capturable=capturable, differentiable=differentiable),
        )


class Lion(Optimizer):
    """:func:`torchopt.lion` as a torch-like optimizer."""

    _factory = staticmethod(alias.lion)
    _fixed: ClassVar[dict[str, Any]] = {'moment_requires_grad': False}

    def __init__(
        self,
        params: Params,
        lr: ScalarOrSchedule = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        mask: Any = None,
        maximize: bool = False,
    ) -> None:
        self._setup(
            params,
            None,
            dict(
                lr=lr,
                betas=betas,
                weight_decay=weight_decay,
                mask=mask,
                maximize=maximize,
            ),
        )


class Lamb(Optimizer):
    """:func:`torchopt.lamb` as a torch-like optimizer."""

    _factory = staticmethod(alias.lamb)
    _fixed: ClassVar[dict[str, Any]] = {'moment_requires_grad': False}

    def __init__(
        self,
        params: Params,
        lr: ScalarOrSchedule = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        eps_root: float = 0.0,
        mask: Any = None,
        maximize: bool = False,
    ) -> None:
        self._setup(
            params,
            None,
            dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                eps_root=eps_root,
                mask=mask,
                maximize=maximize,
            ),
        )


Adagrad = AdaGrad
Adadelta = AdaDelta
Adamax = AdaMax
RMSprop = RMSProp


# Optimizers beyond TorchOpt 0.7: the class takes exactly the alias's arguments.
AMSGrad = torch_like_class(  # torch.optim.Adam(amsgrad=True)'s options
    'AMSGrad', alias.amsgrad, options=('foreach', 'capturable', 'differentiable', 'fused')
)
_TRACKED = ('foreach', 'capturable', 'differentiable')  # torch.optim.Rprop's and ASGD's options
Adafactor = torch_like_class('Adafactor', alias.adafactor, live_lr=False, options=('foreach',))
Rprop = torch_like_class('Rprop', alias.rprop, live_lr=False, options=_TRACKED)
ASGD = torch_like_class('ASGD', alias.asgd, live_lr=False, options=_TRACKED)
Muon = torch_like_class('Muon', alias.muon)
AdaBelief = torch_like_class('AdaBelief', alias.adabelief)
Yogi = torch_like_class('Yogi', alias.yogi)
NovoGrad = torch_like_class('NovoGrad', alias.novograd)
Adan = torch_like_class('Adan', alias.adan)
SignSGD = torch_like_class('SignSGD', alias.sign_sgd)
LARS = torch_like_class('LARS', alias.lars)
