"""Building blocks shared by the optimizer aliases (upstream ``torchopt.alias.utils``)."""

from __future__ import annotations

from typing import Any

import torch

from torchopt import _checks
from torchopt import _foreach as _fe
from torchopt._dispatch import Live
from torchopt.base import GradientTransformation, identity
from torchopt.transform import scale, scale_by_schedule
from torchopt.transform._flat import stateless
from torchopt.transform.utils import scale_
from torchopt.typing import ScalarOrSchedule

__all__ = ['flip_sign_and_add_weight_decay', 'scale_by_neg_lr']

_USE_CHAIN_FLAT = True


def _set_use_chain_flat(use_chain_flat: bool) -> None:
    """Build the optimizer aliases as flat chains (``True``, the default) or plain ones.

    Upstream's private switch, kept because its test-suites call it: with ``False`` an alias
    returns :func:`~torchopt.chain` of its members (a
    :class:`~torchopt.base.ChainedGradientTransformation` whose state is the tuple of the members'
    pytree states) and declares no fused step. It affects aliases built afterwards only, and
    nothing in this library sets it.
    """
    if not isinstance(use_chain_flat, bool):
        raise TypeError(f'`use_chain_flat` must be a bool, got {use_chain_flat!r}')
    global _USE_CHAIN_FLAT  # noqa: PLW0603  # upstream's module-level switch
    _USE_CHAIN_FLAT = use_chain_flat


def _get_use_chain_flat() -> bool:
    """Whether the aliases are built as flat chains (see :func:`_set_use_chain_flat`)."""
    return _USE_CHAIN_FLAT


def flip_sign_and_add_weight_decay(
    weight_decay: float = 0.0, maximize: bool = False
) -> GradientTransformation:
    r"""Negate the gradient when maximizing, then add L2 weight decay: :math:`g' = \pm g + \lambda p`.

    Identity when ``weight_decay == 0`` and not ``maximize``.
    """
    _checks.check_nonnegative('weight_decay value', weight_decay)
    if weight_decay == 0.0 and not maximize:
        return identity()

    def step(g: list, p: list | None, inplace: bool) -> list:
        if inplace:
            with torch.no_grad():
                if maximize:
                    _fe.neg_(g)
                if weight_decay != 0.0:
                    _fe.add_(g, p, alpha=weight_decay)
            return g
        if maximize:
            g = _fe.neg(g)
        if weight_decay != 0.0:
            g = _fe.add(g, p, alpha=weight_decay)
        return g

    return stateless(
        f'flip_sign_and_add_weight_decay({weight_decay!r}, maximize={maximize})',
        step,
        requires_params=_checks.PARAMS_FOR_WEIGHT_DECAY if weight_decay != 0.0 else None,
        accepts_sparse=True,
    )


def scale_by_neg_lr(lr: ScalarOrSchedule) -> GradientTransformation:
    """Multiply by ``-lr``; ``lr`` is a number, a scalar tensor or a schedule ``count -> lr``."""
    _checks.check_lr(lr)
    if isinstance(lr, Live):  # a param group's lr, read at every step (no count in the state)

        def step(g: list, params: Any, inplace: bool) -> list:
            return scale_(g, -lr.value(), inplace=inplace)

        return stateless(f'scale_by_neg_lr({lr!r})', step, accepts_sparse=True)
    if callable(lr) and not isinstance(lr, torch.Tensor):

        def neg_schedule(count: Any) -> Any:
            return -lr(count)

        return scale_by_schedule(neg_schedule)
    return scale(-lr)
