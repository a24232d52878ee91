r"""Batched evaluation of the evolution-strategy (ES) gradient estimators.

This module holds the numerical core of :func:`torchopt_zero.zero_order`: it draws the noise,
evaluates the objective at all perturbed parameters (one batched call per chunk, see
:mod:`torchopt_zero._batching`, or a Python loop for functions that cannot be vmapped), and
reduces the function values into the gradient estimate with one matrix-vector product per
(device, dtype) group of parameters.

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
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from torchopt_zero._batching import FAST_VMAP, check_scalar, is_compiling, vmap_call, vmap_one
from torchopt_zero._noise import Sampler, as_noise, make_sampler

if FAST_VMAP:  # the primitives of torch.func.vmap (see torchopt_zero._batching)
    from torch._C._functorch import (
        _add_batch_dim,
        _remove_batch_dim,
        _vmap_decrement_nesting,
        _vmap_increment_nesting,
    )

__all__ = [
    'METHODS',
    'DEFAULT_CHUNK_ELEMENTS',
    'Estimator',
    'EstimatorConfig',
    'check_batch',
    'check_scalar',
    'make_sampler',
]

_logger = logging.getLogger(__name__)

#: The estimators :class:`Estimator` implements.
METHODS = ('naive', 'forward', 'antithetic')

#: Default bound on the number of perturbed parameter elements held at once (chunking).
DEFAULT_CHUNK_ELEMENTS = 1 << 24

# Up to this many evaluations run as direct calls: a batched call costs more than they do.
_LOOP_MAX = 2


def _draw(sample: Any, size: torch.Size, plan: Any, leaf: Tensor) -> Tensor:
    """``sample(size)``, checked and cast only when the sampler did not return it ready.

    ``plan`` is a leaf's plan or a group of leaves: anything with the ``dtype`` and ``device``
    the noise must have.
    """
    noise = sample(size)
    if (
        type(noise) is not Tensor  # pylint: disable=unidiomatic-typecheck
        or noise.dtype is not plan.dtype
        or noise.shape != size
        or noise.device != plan.device
    ):
        noise = as_noise(noise, size, leaf)
    return noise


class EstimatorConfig(NamedTuple):
    r"""Validated hyper-parameters of one zero-order estimator.

    Attributes:
        method: One of :data:`METHODS`.
        num_samples: Number of noise draws :math:`N` per estimate.
        sigma: Perturbation scale :math:`\sigma > 0`.
        chunk_size: Noise draws evaluated per batched call, or ``None`` to pick it from
            :data:`DEFAULT_CHUNK_ELEMENTS`.
        vectorize: ``True`` (always :func:`torch.func.vmap`), ``False`` (always a Python loop)
            or ``None`` (try ``vmap``, fall back to the loop if the function cannot be vmapped).
        batched: The function is vectorised by its author: it takes every differentiable leaf
            with a leading batch dimension and returns one value per row, shape ``(rows,)``.
    """

    method: str
    num_samples: int
    sigma: float
    chunk_size: int | None
    vectorize: bool | None
    batched: bool = False


class _LeafPlan(NamedTuple):
    """The layout of one perturbed leaf (the one-leaf path), computed once per layout."""

    size: torch.Size  # the noise drawn per chunk: (chunk, numel)
    dim: int  # numel
    rows: tuple[int, ...]  # the perturbed rows' shape: (-1, *leaf.shape)
    flat: bool  # the leaf is 1-D (no reshapes)
    signs: Tensor | None  # [[[sigma]], [[-sigma]]] (antithetic) or None
    dtype: torch.dtype
    device: torch.device
    chunks: int  # number of chunks (1: every sample in one batched evaluation)


class _Group(NamedTuple):
    """Perturbed leaves sharing a (device, dtype): they share one noise draw per chunk."""

    members: list[int]  # positions in the list of leaves
    sizes: list[int]  # their numbers of elements
    dim: int  # the sum of sizes
    rows: list[tuple[int, ...]]  # each member's perturbed rows' shape: (-1, *leaf.shape)
    flat: list[bool]  # whether each member is 1-D
    dtype: torch.dtype
    device: torch.device
    signs: Tensor | None  # [[[sigma]], [[-sigma]]] (antithetic) or None


class _GroupsPlan(NamedTuple):
    """The layout of several leaves (the grouped path), computed once per layout."""

    groups: list[_Group]
    positions: list[int] | None  # the perturbed leaves, group by group (None: all, in order)
    chunk: int  # noise draws per chunk
    # one group and one chunk (the common case): the noise's size and, per member, (position,
    # 1-D?, perturbed rows' shape, leaf shape); else None
    single: tuple[torch.Size, list[tuple[int, bool, tuple[int, ...], torch.Size]]] | None


def _chunk_size(config: EstimatorConfig, dim: int) -> int:
    if config.chunk_size is not None:
        return min(config.chunk_size, config.num_samples)
    per_sample = max(dim, 1) * (2 if config.method == 'antithetic' else 1)
    return max(1, min(config.num_samples, DEFAULT_CHUNK_ELEMENTS // per_sample))


def check_batch(values: object, rows: int) -> Tensor:
    """Return ``values`` if it is a tensor of shape ``(rows,)`` (``batched=True`` functions)."""
    if not isinstance(values, Tensor) or values.shape != (rows,):
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise RuntimeError(
            f'zero_order(batched=True): the function must return a 1-D tensor with one value per '
            f'row of its batched arguments, shape ({rows},); got {got}.'
        )
    return values


def _of_perturbed(
    fn: Callable[..., Tensor],
    leaves: Sequence[Tensor],
    positions: list[int] | None,
    batched: bool,
) -> Callable[..., Tensor]:
    """``fn`` as a function of the perturbed leaves (at ``positions``, in that order) only.

    With ``batched``, the unperturbed leaves are expanded (a view) to the rows of the batch.
    ``positions=None`` means every leaf is perturbed, in order: ``fn`` itself.
    """
    if positions is None:
        return fn

    def fn_of_perturbed(*perturbed: Tensor) -> Tensor:
        # the unperturbed leaves come from the closure: vmap does not batch them
        full = list(leaves)
        if batched:
            rows = perturbed[0].shape[0]
            full = [leaf.expand(rows, *leaf.shape) for leaf in full]
        for j, value in zip(positions, perturbed):
            full[j] = value
        return fn(*full)

    return fn_of_perturbed


class Estimator:
    """The zero-order estimator of one decorated function (or module class).

    It holds the validated hyper-parameters and what the calls learn on the way: ``mode``, how
    the function is evaluated in a batch, so that failing modes are tried once (``None``: not
    known yet; ``'error'``: plain :func:`torch.func.vmap`; ``'different'``: ``vmap`` with
    ``randomness='different'``, the function draws random numbers and each perturbation gets
    its own; ``'loop'``: it cannot be vmapped), and the ``[sigma, -sigma]`` tensors of the
    antithetic perturbation per (dtype, device).

    Calling it (under no_grad) returns the estimate of ``grad_output * d fn(*leaves) / d leaves``.
    The perturbed leaves are grouped by (device, dtype); per chunk of ``num`` samples, each group
    draws its noise as one ``sample((num, dim))`` call (``dim`` the group's total number of
    elements, leaves in order), cast to the group's device and dtype.
    """

    __slots__ = (
        'config',
        'mode',
        '_signs',
        '_antithetic',
        'forward',
        '_scale',
        '_plans',
        '_group_plans',
    )

    def __init__(self, config: EstimatorConfig) -> None:
        """Start an estimator with validated hyper-parameters (see ``check_config``)."""
        self.config = config
        self.mode: str | None = None
        self._signs: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        self._antithetic = config.method == 'antithetic'
        self.forward = config.method == 'forward'  # the forward pass keeps f(theta)
        self._scale = 1.0 / (config.num_samples * config.sigma * (2 if self._antithetic else 1))
        self._plans: dict[tuple[torch.Size, torch.dtype, torch.device], _LeafPlan] = {}
        self._group_plans: dict[tuple[Any, ...], _GroupsPlan] = {}

    def __call__(
        self,
        fn: Callable[..., Tensor],
        sample: Sampler,
        leaves: Sequence[Tensor],
        perturb: Sequence[bool],
        f0: Tensor | None,
        grad_output: Tensor,
    ) -> list[Tensor | None]:
        r"""Estimate the gradient of ``fn`` at ``leaves``, times ``grad_output``.

        Args:
            fn: The objective as a function of the flat list of differentiable leaves; it must
                return a 0-dim tensor.
            sample: Draws the noise: ``distribution.sample`` or :func:`make_sampler`'s
                equivalent.
            leaves: The differentiable leaves :math:`\theta` (unperturbed values).
            perturb: For each leaf, whether it is perturbed and gets a gradient estimate.
            f0: :math:`f(\theta)`, the forward value (``method='forward'`` only).
            grad_output: :math:`\bar{g}`, the gradient flowing into the output.

        Returns:
            One estimate per leaf (``None`` where ``perturb`` is ``False``).
        """
        if grad_output.is_cpu and not is_compiling():  # a host float: folded into the products
            alpha, post = float(grad_output) * self._scale, None
        else:  # no device synchronisation
            alpha, post = 1.0, grad_output * self._scale
        if len(leaves) != 1:
            return self._estimate_groups(fn, sample, leaves, perturb, f0, alpha, post)
        if not perturb[0]:
            return [None]
        # one leaf, the common case: straight-line code, its overhead matters most
        leaf = leaves[0]
        plan = self._plans.get((leaf.shape, leaf.dtype, leaf.device)) or self._plan(leaf)
        if plan.chunks != 1:
            total = self._one_leaf(fn, sample, leaf, plan, f0, alpha)
        else:
            size = plan.size
            noise = _draw(sample, size, plan, leaf)
            theta = leaf if plan.flat else leaf.reshape(-1)
            signs = plan.signs
            if signs is None:
                rows = torch.add(theta, noise, alpha=self.config.sigma)
                if not plan.flat:
                    rows = rows.view(plan.rows)
            else:  # (2, num, dim): the + rows, then the - rows, in one kernel
                rows = torch.addcmul(theta, signs, noise).view(plan.rows)
            count = rows.shape[0]
            mode = self.mode  # 'error' / 'different': a vmap works (never with batched=True)
            if (
                (mode == 'error' or mode == 'different')
                and (count > _LOOP_MAX or self.config.vectorize)
                and FAST_VMAP
                and not is_compiling()
            ):  # vmap_one, inlined: the direct vmap call
                level = _vmap_increment_nesting(count, mode)
                try:
                    values = fn(_add_batch_dim(rows, 0, level))
                    if not isinstance(values, Tensor) or values.ndim != 0:
                        check_scalar(values)  # raises
                    values = _remove_batch_dim(values, level, count, 0)
                finally:
                    _vmap_decrement_nesting()
            else:
                values = self._evaluate_one(fn, rows)
            if signs is not None:
                num = size[0]
                values = values[:num] - values[num:]
            elif self.forward:  # forward differences are given f(theta)
                values = values - cast(Tensor, f0)
            if values.dtype is not plan.dtype or values.device != plan.device:
                values = values.to(noise)
            # beta=0: the uninitialised input is ignored
            total = torch.addmv(noise.new_empty(plan.dim), noise.T, values, beta=0, alpha=alpha)
            if not plan.flat:
                total = total.view(leaf.shape)
        if post is not None:
            total.mul_(post.to(total.dtype))
        return [total]

    def _plan(self, leaf: Tensor) -> _LeafPlan:
        """What the one-leaf path needs to know about a leaf's layout, computed once per layout."""
        key = (leaf.shape, leaf.dtype, leaf.device)
        plan = self._plans.get(key)
        if plan is None:
            dim = leaf.numel()
            chunk = _chunk_size(self.config, dim)
            plan = _LeafPlan(
                size=torch.Size((chunk, dim)),
                dim=dim,
                rows=(-1, *leaf.shape),
                flat=leaf.ndim == 1,
                signs=self._signs_like(leaf) if self._antithetic else None,
                dtype=leaf.dtype,
                device=leaf.device,
                chunks=-(-self.config.num_samples // chunk),
            )
            if not is_compiling():  # dynamo forbids the side effect inside autograd.Function
                self._plans[key] = plan
        return plan

    def _one_leaf(
        self,
        fn: Callable[..., Tensor],
        sample: Sampler,
        leaf: Tensor,
        plan: _LeafPlan,
        f0: Tensor | None,
        alpha: float,
    ) -> Tensor:
        """``alpha * sum_i w_i u_i`` for a single leaf in several chunks, shaped like it."""
        num_samples = self.config.num_samples
        theta = leaf if plan.flat else leaf.reshape(-1)
        size = plan.size
        total = None
        done = 0
        while done < num_samples:
            if done + size[0] > num_samples:  # the last, partial chunk
                size = torch.Size((num_samples - done, plan.dim))
            noise = _draw(sample, size, plan, leaf)
            if plan.signs is None:
                rows = torch.add(theta, noise, alpha=self.config.sigma)
            else:  # (2, num, dim): the + rows, then the - rows, in one kernel
                rows = torch.addcmul(theta, plan.signs, noise)
            if plan.signs is not None or not plan.flat:
                rows = rows.view(plan.rows)
            weights = self._weights(self._evaluate_one(fn, rows), size[0], f0)
            if weights.dtype is not plan.dtype or weights.device != plan.device:
                weights = weights.to(noise)
            if total is None:  # beta=0: the uninitialised input is ignored
                total = torch.addmv(
                    noise.new_empty(plan.dim), noise.T, weights, beta=0, alpha=alpha
                )
            else:
                total.addmv_(noise.T, weights, alpha=alpha)
            done += size[0]
        total = cast(Tensor, total)  # the loop ran at least once
        return total if plan.flat else total.view(leaf.shape)

    def _evaluate_one(self, fn: Callable[..., Tensor], rows: Tensor) -> Tensor:
        """``fn`` at each row of ``rows``: the direct vmap call once the mode is known."""
        mode = self.mode  # 'error' or 'different' only if not batched and vectorize is not False
        if (mode == 'error' or mode == 'different') and (
            rows.shape[0] > _LOOP_MAX or self.config.vectorize
        ):
            return vmap_one(fn, rows, mode)
        if self.config.batched:
            return check_batch(fn(rows), rows.shape[0])
        return self._evaluate(fn, [rows])

    def _groups_plan(self, leaves: Sequence[Tensor], perturb: Sequence[bool]) -> _GroupsPlan:
        """Group the perturbed leaves by (device, dtype), once per layout of the leaves."""
        key = (tuple(perturb), *[(t.shape, t.dtype, t.device) for t in leaves])
        plan = self._group_plans.get(key)
        if plan is not None:
            return plan
        by_key: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for j, flag in enumerate(perturb):
            if flag:
                by_key.setdefault((leaves[j].device, leaves[j].dtype), []).append(j)
        groups = []
        for (device, dtype), members in by_key.items():
            sizes = [leaves[j].numel() for j in members]
            groups.append(
                _Group(
                    members=members,
                    sizes=sizes,
                    dim=sum(sizes),
                    rows=[(-1, *leaves[j].shape) for j in members],
                    flat=[leaves[j].ndim == 1 for j in members],
                    dtype=dtype,
                    device=device,
                    signs=self._signs_like(leaves[members[0]]) if self._antithetic else None,
                )
            )
        positions = [j for group in groups for j in group.members]
        chunk = _chunk_size(self.config, sum(group.dim for group in groups))
        single = None
        if len(groups) == 1 and chunk >= self.config.num_samples:
            group = groups[0]
            single = (
                torch.Size((self.config.num_samples, group.dim)),
                [
                    (j, flat, rows, leaves[j].shape)
                    for j, flat, rows in zip(group.members, group.flat, group.rows)
                ],
            )
        plan = _GroupsPlan(
            groups=groups,
            positions=None if positions == list(range(len(leaves))) else positions,
            chunk=chunk,
            single=single,
        )
        if not is_compiling():  # traced: computed once per compilation, not stored (see _plan)
            self._group_plans[key] = plan
        return plan

    def _estimate_groups(
        self,
        fn: Callable[..., Tensor],
        sample: Sampler,
        leaves: Sequence[Tensor],
        perturb: Sequence[bool],
        f0: Tensor | None,
        alpha: float,
        post: Tensor | None,
    ) -> list[Tensor | None]:
        """The estimate for several leaves, noise drawn per (device, dtype) group."""
        num_samples, sigma = self.config.num_samples, self.config.sigma
        grads: list[Tensor | None] = [None] * len(leaves)
        plan = self._groups_plan(leaves, perturb)
        if not plan.groups:
            return grads
        batched_fn = _of_perturbed(fn, leaves, plan.positions, self.config.batched)
        if plan.single is not None:  # one draw, one evaluation: straight-line code
            size, layout = plan.single
            group = plan.groups[0]
            noise = _draw(sample, size, group, leaves[group.members[0]])
            signs = group.signs
            inputs = []
            for (j, flat, rows, _), part in zip(layout, noise.split_with_sizes(group.sizes, 1)):
                theta = leaves[j] if flat else leaves[j].reshape(-1)
                if signs is None:
                    value = torch.add(theta, part, alpha=sigma)
                    inputs.append(value if flat else value.view(rows))
                else:  # (2, num, numel): the + rows, then the - rows, in one kernel
                    inputs.append(torch.addcmul(theta, signs, part).view(rows))
            mode = self.mode  # 'error' / 'different': a vmap works (never with batched=True)
            if (mode == 'error' or mode == 'different') and (
                inputs[0].shape[0] > _LOOP_MAX or self.config.vectorize
            ):
                values = vmap_call(batched_fn, inputs, mode)
            else:
                values = self._evaluate(batched_fn, inputs)
            values = self._weights(values, num_samples, f0)
            if values.dtype is not group.dtype or values.device != group.device:
                values = values.to(noise)
            # beta=0: the uninitialised input is ignored
            total = torch.addmv(noise.new_empty(group.dim), noise.T, values, beta=0, alpha=alpha)
            if post is not None:
                total.mul_(post.to(total.dtype))
            for (j, flat, _, shape), grad in zip(layout, total.split_with_sizes(group.sizes)):
                grads[j] = grad if flat else grad.view(shape)
            return grads
        totals: list[Tensor] = []
        done = 0
        while done < num_samples:
            num = min(plan.chunk, num_samples - done)
            noises = []
            inputs = []
            for group in plan.groups:
                size = torch.Size((num, group.dim))
                noise = _draw(sample, size, group, leaves[group.members[0]])
                noises.append(noise)
                parts = (
                    (noise,) if len(group.members) == 1 else noise.split_with_sizes(group.sizes, 1)
                )
                for j, part, rows, flat in zip(group.members, parts, group.rows, group.flat):
                    theta = leaves[j] if flat else leaves[j].reshape(-1)
                    if group.signs is None:
                        value = torch.add(theta, part, alpha=sigma)
                    else:  # (2, num, numel): the + rows, then the - rows, in one kernel
                        value = torch.addcmul(theta, group.signs, part)
                    inputs.append(value if group.signs is None and flat else value.view(rows))
            count = inputs[0].shape[0]
            mode = self.mode  # 'error' / 'different': a vmap works (never with batched=True)
            if (mode == 'error' or mode == 'different') and (
                count > _LOOP_MAX or self.config.vectorize
            ):
                values = vmap_call(batched_fn, inputs, mode)
            else:
                values = self._evaluate(batched_fn, inputs)
            weights = self._weights(values, num, f0)
            for k, (group, noise) in enumerate(zip(plan.groups, noises)):
                weight = weights
                if weight.dtype is not group.dtype or weight.device != group.device:
                    weight = weight.to(noise)
                if done == 0:  # beta=0: the uninitialised input is ignored
                    total = noise.new_empty(group.dim)
                    totals.append(torch.addmv(total, noise.T, weight, beta=0, alpha=alpha))
                else:
                    totals[k].addmv_(noise.T, weight, alpha=alpha)
            done += num

        for group, total in zip(plan.groups, totals):
            if post is not None:
                total.mul_(post.to(total.dtype))
            parts = (total,) if len(group.members) == 1 else total.split_with_sizes(group.sizes)
            for j, grad in zip(group.members, parts):
                grads[j] = grad if grad.shape == leaves[j].shape else grad.view(leaves[j].shape)
        return grads

    def _weights(self, values: Tensor, num: int, f0: Tensor | None) -> Tensor:
        """The function-value factor of each noise vector (before the common scale)."""
        if self._antithetic:
            return values[:num] - values[num:]
        if self.forward:  # forward differences are given f(theta)
            return values - cast(Tensor, f0)
        return values

    def _signs_like(self, like: Tensor) -> Tensor:
        key = (like.dtype, like.device)
        signs = self._signs.get(key)
        if signs is None:
            sigma = self.config.sigma
            signs = torch.tensor([sigma, -sigma], dtype=like.dtype, device=like.device)
            signs = signs.view(2, 1, 1)
            if not is_compiling():
                self._signs[key] = signs
        return signs

    def _evaluate(self, fn: Callable[..., Tensor], inputs: list[Tensor]) -> Tensor:
        """``fn`` at the rows of ``inputs`` (stacked perturbed leaves): one batched call or a loop.

        Returns the values, shape ``(rows,)``.
        """
        num = inputs[0].shape[0]
        if self.config.batched:
            return check_batch(fn(*inputs), num)
        mode, vectorize = self.mode, self.config.vectorize
        if vectorize is False or (num <= _LOOP_MAX and vectorize is None):
            mode = 'loop'
        if mode != 'loop' and is_compiling():
            # Traced: no probing (a failed vmap cannot fall back inside a graph) and no state
            # written (dynamo forbids the side effect inside the autograd.Function). Not probed
            # yet: 'different', what the probe ends with for a function that draws random
            # numbers, and the same values as 'error' for one that does not.
            return vmap_call(fn, inputs, mode or 'different', False)
        if mode != 'loop':
            first = mode is None
            # 'error' is much faster than 'different' (which adds overhead to every op), so it
            # is tried first; a function that draws random numbers then gets 'different'.
            for randomness in ('error', 'different') if first else (mode,):
                try:
                    values = vmap_call(fn, inputs, cast(str, randomness), first)
                except Exception as ex:  # noqa: BLE001 - any failure: "evaluate in a loop"
                    error = ex
                    continue
                self.mode = randomness
                return values
            if vectorize:
                raise error
            _logger.info(
                'zero_order: %r cannot be vmapped (%s: %s); evaluating the perturbations in a '
                'loop.',
                getattr(fn, '__qualname__', fn),
                type(error).__name__,
                error,
            )
            self.mode = 'loop'
        return torch.stack([check_scalar(fn(*[x[i] for x in inputs])) for i in range(num)])
