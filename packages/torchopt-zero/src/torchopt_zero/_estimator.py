r"""Batched evaluation of the evolution-strategy (ES) gradient estimators.

This module holds the numerical core of :func:`torchopt_zero.zero_order`: it draws the noise,
evaluates the objective at all perturbed parameters (one :func:`torch.func.vmap` call per chunk,
or a Python loop for functions that cannot be vmapped), and reduces the function values into the
gradient estimate with one matrix-vector product per (device, dtype) group of parameters.

With :math:`u_i \sim p` drawn independently for :math:`i = 1, \dots, N`, the three estimators
of :math:`\bar{g} \, \nabla_\theta f(\theta)` (:math:`\bar{g}` the incoming output gradient) are

.. math::

    \text{naive:} \quad & \frac{\bar{g}}{N \sigma} \sum_i f(\theta + \sigma u_i) \, u_i, \\
    \text{forward:} \quad & \frac{\bar{g}}{N \sigma} \sum_i
        \bigl(f(\theta + \sigma u_i) - f(\theta)\bigr) \, u_i, \\
    \text{antithetic:} \quad & \frac{\bar{g}}{2 N \sigma} \sum_i
        \bigl(f(\theta + \sigma u_i) - f(\theta - \sigma u_i)\bigr) \, u_i.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = [
    'METHODS',
    'DEFAULT_CHUNK_ELEMENTS',
    'EstimatorConfig',
    'VmapState',
    'check_scalar',
    'estimate',
]

_logger = logging.getLogger(__name__)

#: The estimators :func:`estimate` implements.
METHODS = ('naive', 'forward', 'antithetic')

#: Default bound on the number of perturbed parameter elements held at once (chunking).
DEFAULT_CHUNK_ELEMENTS = 1 << 24

# Up to this many evaluations run as direct calls: vmap's fixed overhead exceeds their cost.
_LOOP_MAX = 2


class EstimatorConfig(NamedTuple):
    """Validated hyper-parameters of one zero-order estimator.

    Attributes:
        method: One of :data:`METHODS`.
        num_samples: Number of noise draws :math:`N` per estimate.
        sigma: Perturbation scale :math:`\\sigma > 0`.
        chunk_size: Noise draws evaluated per batched call, or ``None`` to pick it from
            :data:`DEFAULT_CHUNK_ELEMENTS`.
        vectorize: ``True`` (always :func:`torch.func.vmap`), ``False`` (always a Python loop)
            or ``None`` (try ``vmap``, fall back to the loop if the function cannot be vmapped).
    """

    method: str
    num_samples: int
    sigma: float
    chunk_size: int | None
    vectorize: bool | None


class VmapState:
    """Remembers how a function can be evaluated in a batch, so failing modes are tried once.

    ``mode`` is ``None`` (not known yet), ``'error'`` (plain :func:`torch.func.vmap`),
    ``'different'`` (``vmap`` with ``randomness='different'``: the function draws random numbers,
    each perturbation gets its own) or ``'loop'`` (it cannot be vmapped).
    """

    __slots__ = ('mode',)

    def __init__(self) -> None:
        self.mode: str | None = None


def _sample_noise(distribution: Any, num: int, dim: int, like: Tensor) -> Tensor:
    """Draw ``num`` noise vectors of ``dim`` elements, shape ``(num, dim)``, cast like ``like``."""
    shape = torch.Size((num, dim))
    noise = distribution.sample(shape)
    if not isinstance(noise, Tensor):
        noise = torch.as_tensor(noise)
    if noise.shape != shape:
        raise ValueError(
            f'`distribution.sample(sample_shape)` must return a tensor of shape sample_shape; '
            f'asked for {tuple(shape)}, got {tuple(noise.shape)}. Use a distribution with '
            f'scalar batch and event shapes, e.g. torch.distributions.Normal(0.0, 1.0).'
        )
    return noise.to(device=like.device, dtype=like.dtype)


def check_scalar(value: Any) -> Tensor:
    """Return ``value`` if it is a 0-dim tensor, else raise the reference's errors."""
    if not isinstance(value, Tensor):
        raise TypeError('`output` must be a tensor.')
    if value.ndim != 0:
        raise RuntimeError('`output` must be a scalar tensor.')
    return value


def _check_values(values: Any, num: int) -> Tensor:
    if not isinstance(values, Tensor):
        raise TypeError('`output` must be a tensor.')
    if values.shape != (num,):
        raise RuntimeError('`output` must be a scalar tensor.')
    return values


def _evaluate(
    fn: Callable[..., Tensor],
    base: Sequence[Tensor],
    batched: dict[int, Tensor],
    num: int,
    config: EstimatorConfig,
    vmap_state: VmapState,
) -> Tensor:
    """Evaluate ``fn(*leaves)`` for ``num`` perturbations; returns the values, shape ``(num,)``.

    ``base`` holds every differentiable leaf; ``batched`` maps the positions of the perturbed
    leaves to their ``num`` stacked perturbed values.
    """

    def at(i: int) -> list[Tensor]:
        return [batched[j][i] if j in batched else leaf for j, leaf in enumerate(base)]

    if config.vectorize is False or (num <= _LOOP_MAX and config.vectorize is None):
        mode = 'loop'
    elif vmap_state.mode is None:
        mode = 'error'
    else:
        mode = vmap_state.mode
    if mode != 'loop':
        positions = list(batched)

        def batched_fn(*perturbed: Tensor) -> Tensor:
            # the unperturbed leaves come from the closure: vmap's in_dims stay the default
            # (cheaper to process than a tuple of 0/None)
            full = list(base)
            for j, value in zip(positions, perturbed):
                full[j] = value
            return fn(*full)

        inputs = [batched[j] for j in positions]
        # 'error' is much faster than 'different' (which adds overhead to every op), so it
        # is tried first; a function that draws random numbers then gets 'different'.
        for randomness in ('error', 'different') if mode == 'error' else (mode,):
            try:
                values = torch.func.vmap(batched_fn, randomness=randomness)(*inputs)
            except Exception as ex:  # noqa: BLE001 - any failure means "evaluate in a loop"
                error = ex
                continue
            vmap_state.mode = randomness
            return _check_values(values, num)
        if config.vectorize:
            raise error
        _logger.info(
            'zero_order: %r cannot be vmapped (%s: %s); evaluating the perturbations in a loop.',
            getattr(fn, '__qualname__', fn),
            type(error).__name__,
            error,
        )
        vmap_state.mode = 'loop'

    return torch.stack([check_scalar(fn(*at(i))) for i in range(num)])


def _chunk_size(config: EstimatorConfig, dim: int) -> int:
    if config.chunk_size is not None:
        return min(config.chunk_size, config.num_samples)
    per_sample = max(dim, 1) * (2 if config.method == 'antithetic' else 1)
    return max(1, min(config.num_samples, DEFAULT_CHUNK_ELEMENTS // per_sample))


class _Group(NamedTuple):
    """Perturbed leaves sharing a (device, dtype): they share one noise draw per chunk."""

    members: list[int]  # positions in the list of leaves
    sizes: list[int]  # their numbers of elements
    like: Tensor  # a member, for the device and dtype


def _groups(leaves: Sequence[Tensor], perturb: Sequence[bool]) -> list[_Group]:
    by_key: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for j, flag in enumerate(perturb):
        if flag:
            by_key.setdefault((leaves[j].device, leaves[j].dtype), []).append(j)
    return [
        _Group(members, [leaves[j].numel() for j in members], leaves[members[0]])
        for members in by_key.values()
    ]


def estimate(
    fn: Callable[..., Tensor],
    distribution: Any,
    leaves: Sequence[Tensor],
    perturb: Sequence[bool],
    f0: Tensor,
    grad_output: Tensor,
    config: EstimatorConfig,
    vmap_state: VmapState,
) -> list[Tensor | None]:
    """Zero-order estimate of ``grad_output * d fn(*leaves) / d leaves`` (call under no_grad).

    The perturbed leaves are grouped by (device, dtype); per chunk of ``num`` samples, each group
    draws its noise as one ``distribution.sample((num, dim))`` call (``dim`` the group's total
    number of elements, leaves in order), cast to the group's device and dtype.

    Args:
        fn: The objective as a function of the flat list of differentiable leaves; it must
            return a 0-dim tensor.
        distribution: The noise distribution (anything with ``sample(sample_shape)``).
        leaves: The differentiable leaves :math:`\theta` (unperturbed values).
        perturb: For each leaf, whether it is perturbed and gets a gradient estimate.
        f0: :math:`f(\theta)`, the forward value (used by ``method='forward'``).
        grad_output: :math:`\bar{g}`, the gradient flowing into the output.
        config: The estimator's hyper-parameters.
        vmap_state: How ``fn`` can be batched (updated in place).

    Returns:
        One estimate per leaf (``None`` where ``perturb`` is ``False``).
    """
    method, num_samples, sigma = config.method, config.num_samples, config.sigma
    grads: list[Tensor | None] = [None] * len(leaves)
    groups = _groups(leaves, perturb)
    if not groups:
        return grads
    dims = [sum(group.sizes) for group in groups]
    sums = [group.like.new_zeros(dim) for group, dim in zip(groups, dims)]
    chunk = _chunk_size(config, sum(dims))

    done = 0
    while done < num_samples:
        num = min(chunk, num_samples - done)
        noises = [_sample_noise(distribution, num, dim, g.like) for g, dim in zip(groups, dims)]
        batched: dict[int, Tensor] = {}
        for group, noise in zip(groups, noises):
            steps = (noise * sigma).split(group.sizes, dim=1)
            for j, step in zip(group.members, steps):
                # per leaf, so that each batched leaf is contiguous (fast batched kernels)
                theta = leaves[j].reshape(-1)
                if method == 'antithetic':
                    perturbed = torch.cat((theta + step, theta - step))
                else:
                    perturbed = theta + step
                batched[j] = perturbed.view(-1, *leaves[j].shape)
        if method == 'antithetic':
            values = _evaluate(fn, leaves, batched, 2 * num, config, vmap_state)
            weights = values[:num] - values[num:]
        else:
            weights = _evaluate(fn, leaves, batched, num, config, vmap_state)
            if method == 'forward':
                weights = weights - f0
        for total, noise in zip(sums, noises):
            total.addmv_(noise.T, weights.to(total.dtype))
        done += num

    scale = 1.0 / (num_samples * sigma * (2.0 if method == 'antithetic' else 1.0))
    for group, total in zip(groups, sums):
        total.mul_(grad_output.to(total.dtype) * scale)
        for j, grad in zip(group.members, total.split(group.sizes)):
            grads[j] = grad.view_as(leaves[j])
    return grads
