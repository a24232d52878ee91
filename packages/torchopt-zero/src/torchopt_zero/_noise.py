"""Noise for the zero-order estimators: the sampler each estimate draws from, and its checks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ['Sampler', 'as_noise', 'make_sampler']

#: A noise source: ``sample(sample_shape)``, as :meth:`torchopt.typing.Samplable.sample`.
Sampler = Callable[[torch.Size], Any]


def _sample(distribution: Any, sample_shape: torch.Size) -> Any:
    return distribution.sample(sample_shape=sample_shape)  # by keyword, as upstream calls it


def _sample_normal(distribution: torch.distributions.Normal, sample_shape: torch.Size) -> Any:
    """``distribution.sample(sample_shape)`` for a scalar normal, the same numbers 2-3x faster.

    :meth:`torch.distributions.Normal.sample` calls ``torch.normal(loc.expand(shape),
    scale.expand(shape))``, which fills its output with standard normal numbers and then
    multiplies by ``scale`` and adds ``loc``; the broadcasting makes those two steps slow.
    ``torch.randn`` draws the same standard normal numbers from the generator.
    """
    loc, scale = distribution.loc, distribution.scale
    if (
        loc.ndim
        or scale.ndim
        or loc.dtype != scale.dtype
        or loc.device != scale.device
        or 'sample' in vars(distribution)
    ):
        return distribution.sample(sample_shape=sample_shape)  # a batch shape (rejected), a patch
    noise = torch.randn(sample_shape, dtype=loc.dtype, device=loc.device)
    # x * 1 + 0 == x: skip both passes for the standard normal (read without a device sync)
    if not loc.is_cpu or float(scale) != 1.0 or float(loc) != 0.0:
        noise.mul_(scale).add_(loc)
    return noise


def make_sampler(distribution: Any) -> Sampler:
    """The function :class:`Estimator` draws noise with: ``distribution.sample(shape)``.

    For a plain :class:`torch.distributions.Normal` (not a subclass) with scalar ``loc`` and
    ``scale``, a faster function that returns exactly the same numbers and leaves the random
    number generator in the same state.
    """
    if type(distribution) is torch.distributions.Normal:  # pylint: disable=unidiomatic-typecheck
        return functools.partial(_sample_normal, distribution)
    return functools.partial(_sample, distribution)


def as_noise(noise: Any, shape: torch.Size, like: Tensor) -> Tensor:
    """``noise`` (a draw of ``shape``) as a tensor of that shape, cast like ``like``."""
    if not isinstance(noise, Tensor):
        noise = torch.as_tensor(noise)
    if noise.shape != shape:
        raise ValueError(
            f'`distribution.sample(sample_shape)` must return a tensor of shape sample_shape; '
            f'asked for {tuple(shape)}, got {tuple(noise.shape)}. Use a distribution with '
            f'scalar batch and event shapes, e.g. torch.distributions.Normal(0.0, 1.0).'
        )
    if noise.dtype != like.dtype or noise.device != like.device:
        noise = noise.to(like)  # like's device and dtype
    return noise
