"""Object-oriented optimizers (upstream ``torchopt.optim``)."""

from torchopt.optim import func, meta
from torchopt.optim._classes import (
    SGD,
    AdaDelta,
    Adadelta,
    AdaGrad,
    Adagrad,
    Adam,
    AdaMax,
    Adamax,
    AdamW,
    Lamb,
    Lion,
    NAdam,
    RAdam,
    RMSProp,
    RMSprop,
)
from torchopt.optim.base import Optimizer
from torchopt.optim.func import FuncOptimizer
from torchopt.optim.meta import (
    MetaAdaDelta,
    MetaAdadelta,
    MetaAdaGrad,
    MetaAdagrad,
    MetaAdam,
    MetaAdaMax,
    MetaAdamax,
    MetaAdamW,
    MetaOptimizer,
    MetaRAdam,
    MetaRMSProp,
    MetaRMSprop,
    MetaSGD,
)
