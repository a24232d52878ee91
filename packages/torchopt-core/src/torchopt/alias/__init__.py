"""Functional optimizers (upstream ``torchopt.alias``); ``torchopt.alias.<name>`` is the function."""

from torchopt import _upstream_modules
from torchopt.alias import utils
from torchopt.alias._extended import (
    adabelief,
    adafactor,
    adan,
    amsgrad,
    asgd,
    lars,
    muon,
    novograd,
    rprop,
    sign_sgd,
    yogi,
)
from torchopt.alias._optimizers import (
    adadelta,
    adagrad,
    adam,
    adamax,
    adamw,
    lamb,
    lion,
    nadam,
    radam,
    rmsprop,
    sgd,
)
from torchopt.alias.utils import flip_sign_and_add_weight_decay, scale_by_neg_lr

__all__ = [
    'adadelta',
    'adagrad',
    'adam',
    'adamax',
    'adamw',
    'radam',
    'rmsprop',
    'sgd',
    'nadam',
    'lion',
    'lamb',
    # issue #20: torch.optim's (amsgrad .. muon) and optax's (adabelief .. lars)
    'amsgrad',
    'adafactor',
    'rprop',
    'asgd',
    'muon',
    'adabelief',
    'yogi',
    'novograd',
    'adan',
    'sign_sgd',
    'lars',
]

_upstream_modules.register(__name__)  # TorchOpt 0.7's per-object module paths
