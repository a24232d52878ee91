"""Functional optimizers (upstream ``torchopt.alias``); ``torchopt.alias.<name>`` is the function."""

from torchopt.alias import utils
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
]
