"""Argument validation shared by transformations and optimizers (clear, early errors)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    'ArgumentError',
    'check_bool',
    'check_nonnegative',
    'check_beta',
    'check_betas',
    'check_lr',
    'PARAMS_FOR_WEIGHT_DECAY',
]


class ArgumentError(ValueError, AssertionError):
    """A bad argument where upstream TorchOpt used ``assert``: catchable as either type.

    Unlike an ``assert``, it is raised under ``python -O`` too.
    """


# upstream's message (an ``assert``) when a weight-decay transformation gets no ``params``
PARAMS_FOR_WEIGHT_DECAY = (
    'Parameters are required for weight decay. Call `update(updates, state, params=params)` '
    'instead.'
)


def _value(x: Any) -> float | None:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            return None
        return float(x.detach())
    if isinstance(x, (int, float)):
        return float(x)
    return None


def check_bool(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is a ``bool`` (a flag that picks the math)."""
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be a bool, got {type(value).__name__}')


def check_nonnegative(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a number (or 0-dim tensor) ``>= 0``."""
    v = _value(value)
    if v is None:
        raise TypeError(f'`{name}` must be a non-negative number, got {type(value).__name__}')
    if not v >= 0.0:
        raise ValueError(f'Invalid {name}: {value!r} (expected a value >= 0)')


def check_lr(value: Any) -> None:
    """A learning rate is a non-negative number, a scalar tensor or a schedule (callable)."""
    if callable(value) and not isinstance(value, torch.Tensor):
        return
    check_nonnegative('learning rate', value)


def check_beta(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1``."""
    v = _value(value)
    if v is None:
        raise TypeError(f'`{name}` must be a number in [0, 1), got {type(value).__name__}')
    if not 0.0 <= v < 1.0:
        raise ValueError(f'Invalid {name}: {value!r} (expected a value in [0, 1))')


def check_betas(betas: Any) -> tuple[Any, Any]:
    """Validate a ``(beta1, beta2)`` pair and return it."""
    try:
        b1, b2 = betas
    except (TypeError, ValueError) as ex:
        raise TypeError(f'`betas` must be a pair (beta1, beta2), got {betas!r}') from ex
    check_beta('beta parameter at index 0', b1)
    check_beta('beta parameter at index 1', b2)
    return b1, b2
