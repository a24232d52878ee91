"""Differentiable (meta) optimizers (upstream ``torchopt.optim.meta``)."""

from torchopt.optim.meta._classes import (
    MetaAdaDelta,
    MetaAdadelta,
    MetaAdaGrad,
    MetaAdagrad,
    MetaAdam,
    MetaAdaMax,
    MetaAdamax,
    MetaAdamW,
    MetaRAdam,
    MetaRMSProp,
    MetaRMSprop,
    MetaSGD,
    MetaNAdam,
    MetaLion,
    MetaLamb,
    MetaAMSGrad,
    MetaAdafactor,
    MetaRprop,
    MetaASGD,
    MetaMuon,
    MetaAdaBelief,
    MetaYogi,
    MetaNovoGrad,
    MetaAdan,
    MetaSignSGD,
    MetaLARS,
)
from torchopt.optim.meta.base import MetaOptimizer

__all__ = [
    'MetaOptimizer', 'MetaSGD', 'MetaAdam', 'MetaAdamW', 'MetaAdaGrad', 'MetaAdagrad',
    'MetaAdaDelta', 'MetaAdadelta', 'MetaAdaMax', 'MetaAdamax', 'MetaRAdam', 'MetaRMSProp',
    'MetaRMSprop',
    'MetaNAdam', 'MetaLion', 'MetaLamb', 'MetaAMSGrad', 'MetaAdafactor', 'MetaRprop', 'MetaASGD',
    'MetaMuon', 'MetaAdaBelief', 'MetaYogi', 'MetaNovoGrad', 'MetaAdan', 'MetaSignSGD', 'MetaLARS',
]
