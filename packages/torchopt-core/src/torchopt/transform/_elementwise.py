"""Small element-wise transformations with optax's names.

``scale_by_learning_rate``, ``scale_by_sign``, ``set_to_zero``, ``centralize``, ``zero_nans`` and
``add_noise``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from torchopt import _checks, _dispatch
from torchopt import _foreach as _fe
from torchopt.transform._flat import FlatTransformation, stateful, stateless
from torchopt.transform._scale import scale, scale_by_schedule
from torchopt.transform.utils import advance, count_scalars, counts_like, smap
from torchopt.typing import ScalarOrSchedule

__all__ = [
    'AddNoiseState',
    'ZeroNansState',
    'add_noise',
    'centralize',
    'scale_by_learning_rate',
    'scale_by_sign',
    'set_to_zero',
    'zero_nans',
]


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> FlatTransformation:
    r"""Scale by the learning rate: :math:`u = -\eta_t g` (:math:`+\eta_t g` without ``flip_sign``).

    Args:
        learning_rate: :math:`\eta`: a number, a scalar tensor (differentiable when it requires
            grad) or a schedule ``count -> value`` (the first update sees ``count == 0``).
        flip_sign: multiply by the negative learning rate (gradient *descent*).

    Reference: optax ``scale_by_learning_rate``.
    """
    _checks.check_lr(learning_rate)
    sign = -1.0 if flip_sign else 1.0
    if callable(learning_rate) and not isinstance(learning_rate, torch.Tensor):

        def signed(count: Any) -> Any:
            return sign * learning_rate(count)

        return scale_by_schedule(signed)
    return scale(sign * learning_rate)


def scale_by_sign() -> FlatTransformation:
    r"""Replace each update element by its sign: :math:`u = \operatorname{sign}(g)`.

    Reference: Bernstein et al., *signSGD: Compressed Optimisation for Non-Convex Problems*,
    ICML 2018.
    """

    def step(g: list, params: Any, inplace: bool) -> list:
        if inplace and not _dispatch.functorch_active():
            torch._foreach_sign_(g)
            return g
        return _fe.sign(g)

    return stateless('scale_by_sign', step)


def set_to_zero() -> FlatTransformation:
    """Replace every update by zeros (optax ``set_to_zero``): the parameters stay as they are."""

    def step(g: list, params: Any, inplace: bool) -> list:
        if inplace and not _dispatch.functorch_active():
            torch._foreach_zero_(g)
            return g
        return [torch.zeros_like(x) for x in g]

    return stateless('set_to_zero', step)


def centralize() -> FlatTransformation:
    r"""Gradient centralization: subtract from every leaf of rank > 1 its mean over all but axis 0.

    .. math::

        u_{i,\dots} = g_{i,\dots} - \operatorname{mean}_{\dots}(g_{i,\dots})

    Leaves of rank 0 and 1 pass through unchanged.

    Reference: Yong et al., *Gradient Centralization: A New Optimization Technique for Deep
    Neural Networks*, ECCV 2020.
    """

    def step(g: list, params: Any, inplace: bool) -> list:
        out = []
        for x in g:
            if x.dim() <= 1:
                out.append(x)
                continue
            mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
            out.append(x.sub_(mean) if inplace else x - mean)
        return out

    return stateless('centralize', step)


class ZeroNansState(NamedTuple):
    """State of :func:`zero_nans`: per leaf, whether its last update had a NaN (0-dim bool)."""

    found_nan: list


def zero_nans() -> FlatTransformation:
    """Replace NaNs in the updates by zeros and record, per leaf, whether one was found.

    Infinities are left alone (see :func:`~torchopt.nan_to_num` for those).

    Reference: optax ``zero_nans``.
    """

    def init_fn(params: list, treespec: Any) -> ZeroNansState:
        return ZeroNansState(
            found_nan=[None if p is None else torch.zeros((), dtype=torch.bool) for p in params]
        )

    def step(g: list, s: ZeroNansState, params: Any, inplace: bool) -> tuple[list, ZeroNansState]:
        masks = [torch.isnan(x) for x in g]
        found = [m.any().to('cpu', non_blocking=True) for m in masks]
        if inplace and not _dispatch.functorch_active():
            for x, m in zip(g, masks):
                x.masked_fill_(m, 0.0)
            for old, new in zip(s.found_nan, found):
                old.copy_(new)
            return g, s
        u = [torch.where(m, torch.zeros((), dtype=x.dtype, device=x.device), x)
             for x, m in zip(g, masks)]  # fmt: skip
        return u, ZeroNansState(found_nan=found)

    return stateful('zero_nans', init_fn, step, scalars=('found_nan',))


class AddNoiseState(NamedTuple):
    """State of :func:`add_noise`: per-leaf step counts and the random key (a 0-dim int64)."""

    count: list  # type: ignore[assignment]  # shadows tuple.count
    rng_key: torch.Tensor


_MASK63 = (1 << 63) - 1


def _next_key(key: int) -> int:
    """A new 63-bit key from ``key`` (one step of a 64-bit linear congruential generator)."""
    return (key * 6364136223846793005 + 1442695040888963407) & _MASK63


def add_noise(eta: float, gamma: float, seed: int = 0) -> FlatTransformation:
    r"""Add annealed Gaussian noise to the updates.

    .. math::

        u_t = g_t + \sigma_t \epsilon_t, \quad \epsilon_t \sim \mathcal N(0, I), \quad
        \sigma_t = \sqrt{\eta / t^{\gamma}}

    with :math:`t` the (per-leaf) step count starting at 1. The random stream is a pure
    function of ``seed`` and the number of updates: the state holds a 0-dim int64 key that every
    update advances, so a saved state resumes the same noise. The noise does not require grad.

    Args:
        eta: base variance :math:`\eta \ge 0`.
        gamma: decay exponent :math:`\gamma \ge 0` of the variance.
        seed: the initial key.

    Reference: Neelakantan et al., *Adding Gradient Noise Improves Learning for Very Deep
    Networks*, 2015.
    """
    _checks.check_nonnegative('eta', eta)
    _checks.check_nonnegative('gamma', gamma)

    def init_fn(params: list, treespec: Any) -> AddNoiseState:
        return AddNoiseState(
            count=counts_like(params), rng_key=torch.tensor(int(seed) & _MASK63, dtype=torch.int64)
        )

    def step(g: list, s: AddNoiseState, params: Any, inplace: bool) -> tuple[list, AddNoiseState]:
        counts = advance(s.count, inplace)
        stds = smap(lambda t: math.sqrt(eta / t**gamma) if not isinstance(t, torch.Tensor)
                    else torch.sqrt(eta / t**gamma), count_scalars(counts))  # fmt: skip
        key = int(s.rng_key)
        generators: dict[torch.device, torch.Generator] = {}
        u = []
        for i, x in enumerate(g):
            if x.device not in generators:
                generators[x.device] = torch.Generator(device=x.device).manual_seed(key)
            noise = torch.randn(x.shape, generator=generators[x.device], dtype=x.dtype,
                                device=x.device)  # fmt: skip
            std = stds[i] if isinstance(stds, list) else stds
            u.append(x.add_(noise, alpha=std) if inplace and not isinstance(std, torch.Tensor)
                     else x + std * noise)  # fmt: skip
        new_key = _next_key(key)
        if inplace:
            s.rng_key.fill_(new_key)
            return u, s
        return u, AddNoiseState(count=counts, rng_key=torch.tensor(new_key, dtype=torch.int64))

    return stateful(f'add_noise({eta!r}, {gamma!r})', init_fn, step, scalars=('count',))
