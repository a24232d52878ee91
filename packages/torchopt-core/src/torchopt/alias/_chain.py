"""The chain every optimizer alias builds: sign and L2 decay, scalers, decoupled decay, ``-lr``.

One helper for :mod:`torchopt.alias._optimizers` and :mod:`torchopt.alias._extended`, so the
order of the members (which fixes the state layout, the checkpoint names and where a fused step
finds its state) is written once.
"""

from __future__ import annotations

from typing import Any

from torchopt import _checks
from torchopt._dispatch import FusedStep
from torchopt.alias.utils import (
    _get_use_chain_flat,
    flip_sign_and_add_weight_decay,
    scale_by_neg_lr,
)
from torchopt.base import GradientTransformation
from torchopt.combine import chain, chain_flat
from torchopt.transform._masking import add_decayed_weights

__all__ = ['betas_of', 'optimizer_chain']


def betas_of(betas: Any, n: int = 2) -> tuple:
    """Validate ``betas`` (a tuple of ``n`` numbers in ``[0, 1)``) and return it as a tuple."""
    if n == 2:
        return _checks.check_betas(betas)
    try:
        values = tuple(betas)
    except TypeError as ex:
        raise TypeError(f'`betas` must be a tuple of {n} numbers, got {betas!r}') from ex
    if len(values) != n:
        raise TypeError(f'`betas` must be a tuple of {n} numbers, got {betas!r}')
    for i, b in enumerate(values):
        _checks.check_beta(f'beta parameter at index {i}', b)
    return values


def optimizer_chain(
    *scalers: GradientTransformation,
    lr: Any = None,
    weight_decay: float = 0.0,
    maximize: bool = False,
    decoupled: bool = False,
    mask: Any = None,
    after_decay: tuple[GradientTransformation, ...] = (),
    tail: tuple[GradientTransformation, ...] = (),
    fused: FusedStep | None = None,
) -> GradientTransformation:
    r"""``chain_flat`` of an optimizer's members, in the one order every alias uses.

    A plain :func:`~torchopt.chain` without a fused step instead while upstream's private
    ``torchopt.alias.utils._set_use_chain_flat(False)`` is in effect.

    ``flip_sign_and_add_weight_decay`` (the L2 penalty :math:`\lambda\theta` when not
    ``decoupled``), then ``scalers``, then ``add_decayed_weights(weight_decay, mask)`` when
    ``decoupled``, then ``after_decay``, then ``scale_by_neg_lr(lr)`` (none when ``lr`` is
    ``None``: the scaler returns the final update), then ``tail``. ``lr`` is validated here.

    Args:
        scalers: the transformations of the update direction.
        lr: learning rate (number, scalar tensor, schedule) or ``None``.
        weight_decay: the decay :math:`\lambda`.
        maximize: negate the gradient first.
        decoupled: decay added after the scalers (AdamW-style) instead of to the gradient.
        mask: the decoupled decay's mask.
        after_decay: members between the decoupled decay and ``-lr`` (LAMB's trust ratio).
        tail: members after ``-lr`` (LARS's momentum).
        fused: the fused step declared for the chain.
    """
    if lr is not None:
        _checks.check_lr(lr)
    parts = [flip_sign_and_add_weight_decay(0.0 if decoupled else weight_decay, maximize)]
    parts.extend(scalers)
    if decoupled:
        parts.append(add_decayed_weights(weight_decay, mask))
    parts.extend(after_decay)
    if lr is not None:
        parts.append(scale_by_neg_lr(lr))
    if not _get_use_chain_flat():
        return chain(*parts, *tail)
    return chain_flat(*parts, *tail, fused=fused)
