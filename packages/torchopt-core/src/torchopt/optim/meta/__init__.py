"""Differentiable (meta) optimizers (upstream ``torchopt.optim.meta``)."""

from torchopt import _upstream_modules
from torchopt.optim.meta import _classes
from torchopt.optim.meta._classes import (
    MetaAdaBelief,
    MetaAdaDelta,
    MetaAdadelta,
    MetaAdafactor,
    MetaAdaGrad,
    MetaAdagrad,
    MetaAdam,
    MetaAdaMax,
    MetaAdamax,
    MetaAdamW,
    MetaAdan,
    MetaAMSGrad,
    MetaASGD,
    MetaLamb,
    MetaLARS,
    MetaLion,
    MetaMuon,
    MetaNAdam,
    MetaNovoGrad,
    MetaRAdam,
    MetaRMSProp,
    MetaRMSprop,
    MetaRprop,
    MetaSGD,
    MetaSignSGD,
    MetaYogi,
)
from torchopt.optim.meta.base import MetaOptimizer

__all__ = ['MetaOptimizer', *_classes.__all__]  # the classes' list, in their order

_upstream_modules.register(__name__)  # TorchOpt 0.7's per-object module paths
