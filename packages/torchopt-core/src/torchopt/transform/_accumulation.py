"""Accumulating updates over steps: moving averages and gradient accumulation.

* :func:`ema`: an exponential moving average of the updates (optax ``ema``);
* :class:`MultiSteps`: gradient accumulation over ``k`` micro-steps (optax ``MultiSteps``);
* :func:`incremental_update` and :func:`params_ema`: moving averages of the *parameters*, for
  evaluation weights and target networks.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import optree
import torch

from torchopt import _checks, _dispatch
from torchopt import _foreach as _fe
from torchopt.base import GradientTransformation
from torchopt.transform import utils as _u
from torchopt.transform._flat import FlatTransformation, as_flat, present_indices, stateful, take
from torchopt.transform.utils import (
    advance,
    bias_correction,
    count_scalars,
    counts_like,
    smap,
    write_,
)

__all__ = [
    'EmaState',
    'MultiSteps',
    'MultiStepsState',
    'ParamsEMA',
    'ParamsEMAState',
    'ema',
    'incremental_update',
    'params_ema',
    'skip_large_updates',
    'skip_not_finite',
]


class EmaState(NamedTuple):
    """State of :func:`ema`: the moving averages and per-leaf step counts."""

    count: list  # type: ignore[assignment]  # shadows tuple.count
    ema: list


def ema(
    decay: float, debias: bool = True, accumulator_dtype: torch.dtype | None = None
) -> FlatTransformation:
    r"""Exponential moving average of the updates.

    .. math::

        e_t = \beta e_{t-1} + (1-\beta) g_t, \qquad
        u_t = e_t / (1 - \beta^t) \text{ (debias) or } e_t

    (:func:`~torchopt.transform.trace` is :math:`e_t = \beta e_{t-1} + g_t` instead.)

    Args:
        decay: :math:`\beta \in [0, 1)`.
        debias: divide by :math:`1-\beta^t` (computed in double precision).
        accumulator_dtype: dtype of the averages (default: the parameters').

    Reference: optax ``ema``.
    """
    _checks.check_beta('decay', decay)

    def init_fn(params: list, treespec: Any) -> EmaState:
        return EmaState(
            count=counts_like(params),
            ema=[
                None if p is None else torch.zeros_like(p, dtype=accumulator_dtype) for p in params
            ],  # fmt: skip
        )

    def step(g: list, s: EmaState, params: Any, inplace: bool) -> tuple[list, EmaState]:
        src = g if accumulator_dtype is None else [x.to(accumulator_dtype) for x in g]
        new = _u.ema(s.ema, src, decay, inplace=inplace)
        counts = advance(s.count, inplace)
        if debias:
            u = _fe.mul(new, smap(lambda c: 1.0 / c, bias_correction(count_scalars(counts), decay)))
        else:
            u = new if accumulator_dtype is None else [x.to(y.dtype) for x, y in zip(new, g)]
        if inplace:
            u = write_(g, u, inplace=True)
        return u, EmaState(count=counts, ema=new)

    return stateful(f'ema({decay!r})', init_fn, step, scalars=('count',))


# --- gradient accumulation -----------------------------------------------------------------------


class MultiStepsState(NamedTuple):
    """State of :class:`MultiSteps`.

    Attributes:
        mini_step: micro-steps accumulated since the last inner update (0-dim int64).
        gradient_step: inner updates so far (0-dim int64).
        inner_opt_state: the wrapped optimizer's state.
        acc_grads: the running mean (or sum) of the micro-step updates, per leaf.
        acc_count: per leaf, the micro-steps that contributed (a leaf without a gradient in a
            micro-step does not count), 0-dim float32.
        skip_state: what ``should_skip_update_fn`` returned last (debugging information).
    """

    mini_step: torch.Tensor
    gradient_step: torch.Tensor
    inner_opt_state: Any
    acc_grads: list
    acc_count: list
    skip_state: Any = ()


ShouldSkipUpdateFunction = Callable[[Any, torch.Tensor, Any], tuple[Any, Any]]


def skip_not_finite(updates: Any, gradient_step: Any, params: Any) -> tuple[torch.Tensor, dict]:
    """``should_skip_update_fn`` for :class:`MultiSteps`: skip micro-steps with a NaN or an Inf.

    Returns ``(should_skip, {'should_skip': ..., 'num_not_finite': ...})``.
    """
    leaves = [x for x in optree.tree_leaves(updates) if isinstance(x, torch.Tensor)]
    num = sum((torch.logical_not(torch.isfinite(x)).sum() for x in leaves), torch.tensor(0))
    should_skip = num > 0
    return should_skip, {'should_skip': should_skip, 'num_not_finite': num}


def skip_large_updates(
    updates: Any, gradient_step: Any, params: Any, max_squared_norm: float
) -> tuple[torch.Tensor, dict]:
    """``should_skip_update_fn``: skip micro-steps whose squared global norm is not below a bound.

    Use with ``functools.partial(skip_large_updates, max_squared_norm=...)``. A NaN norm skips.
    """
    leaves = [x for x in optree.tree_leaves(updates) if isinstance(x, torch.Tensor)]
    norm_sq = sum((x.detach().double().square().sum().cpu() for x in leaves),
                  torch.tensor(0.0, dtype=torch.float64))  # fmt: skip
    should_skip = torch.logical_not(norm_sq < max_squared_norm)
    return should_skip, {'should_skip': should_skip, 'norm_squared': norm_sq}


def _lerp_each(acc: list, g: list, weights: Any, inplace: bool) -> list:
    """``acc + w (g - acc)`` per leaf (``weights``: one number or one per leaf)."""
    if not isinstance(weights, list):
        if inplace:
            _fe.lerp_(acc, g, weights)
            return acc
        return _fe.lerp(acc, g, weights)
    if inplace:
        for a, x, w in zip(acc, g, weights):
            a.lerp_(x, w)
        return acc
    return [torch.lerp(a, x, w) for a, x, w in zip(acc, g, weights)]


class MultiSteps(FlatTransformation):
    r"""Gradient accumulation: the wrapped optimizer steps once every ``k`` micro-steps.

    Each micro-step adds its updates to a running mean (Welford's update
    :math:`a \leftarrow a + (g - a)/n`, or a sum without ``use_grad_mean``) and returns zeros;
    at the ``k``-th the mean is passed to the wrapped optimizer, whose update is returned, and
    the accumulator is reset. ``k`` steps with gradients :math:`g_1..g_k` therefore equal one step
    with :math:`\tfrac1k\sum_i g_i`. A leaf whose gradient is ``None`` in a micro-step does not
    count in its mean; one without a gradient in all ``k`` is passed as ``None`` (skipped, as in
    ``torch.optim``).

    ``MultiSteps(opt, k)`` is a transformation itself (``gradient_transformation()`` returns it,
    as in optax), so it composes with :func:`~torchopt.chain` and the torch-like optimizers.

    Args:
        opt: the wrapped optimizer.
        every_k_schedule: ``k``, or a callable ``gradient_step -> k`` (varying the batch size).
        use_grad_mean: average the micro-step updates (else sum them).
        should_skip_update_fn: ``(updates, gradient_step, params) -> (skip, info)``; a skipped
            micro-step leaves the state as it was (``info`` is stored as ``skip_state``), e.g.
            :func:`skip_not_finite`.

    Reference: optax ``MultiSteps``.
    """

    inner_opt: GradientTransformation

    def __new__(
        cls,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[torch.Tensor], Any],
        use_grad_mean: bool = True,
        should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
    ) -> MultiSteps:
        inner_init, inner_update = as_flat(opt)
        if isinstance(every_k_schedule, int):
            if every_k_schedule < 1:
                raise ValueError(
                    f'MultiSteps: `every_k_schedule` must be >= 1, got {every_k_schedule}'
                )
            k_fn: Callable[[torch.Tensor], Any] = lambda step: every_k_schedule  # noqa: E731
        else:
            k_fn = every_k_schedule

        def init_fn(params: list, treespec: Any) -> MultiStepsState:
            acc = _u.zeros_like(params)
            gradient_step = torch.zeros((), dtype=torch.int64)
            skip_state: Any = ()
            if should_skip_update_fn is not None:
                _, skip_state = should_skip_update_fn(
                    treespec.unflatten(acc), gradient_step, treespec.unflatten(params)
                )
            return MultiStepsState(
                mini_step=torch.zeros((), dtype=torch.int64),
                gradient_step=gradient_step,
                inner_opt_state=inner_init(params, treespec),
                acc_grads=acc,
                acc_count=counts_like(params),
                skip_state=skip_state,
            )

        def zeros(updates: list, inplace: bool) -> list:
            present = [u for u in updates if u is not None]
            if inplace and present and not _dispatch.functorch_active():
                torch._foreach_zero_(present)
                return updates
            return [None if u is None else torch.zeros_like(u) for u in updates]

        def update_fn(
            updates: list,
            state: MultiStepsState,
            *,
            params: list | None = None,
            inplace: bool = True,
            treespec: Any = None,
        ) -> tuple[list, MultiStepsState]:
            _dispatch.check_like('MultiSteps', 'state.acc_grads', updates, state.acc_grads,
                                 treespec=treespec)  # fmt: skip
            if should_skip_update_fn is not None:
                tree = (lambda x: x) if treespec is None else treespec.unflatten
                skip, skip_state = should_skip_update_fn(
                    tree(updates), state.gradient_step, None if params is None else tree(params)
                )
                if bool(skip):
                    return zeros(updates, inplace), state._replace(skip_state=skip_state)
                state = state._replace(skip_state=skip_state)
            k = int(k_fn(state.gradient_step))
            idx = present_indices(updates)
            g = take(updates, idx)
            acc, counts = list(state.acc_grads), list(state.acc_count)
            if g:
                a, c = take(acc, idx), take(counts, idx)
                if use_grad_mean:
                    w = smap(lambda n: 1.0 / (n + 1.0), count_scalars(c))
                    new_a = _lerp_each(a, g, w, inplace)
                elif inplace:
                    _fe.add_(a, g)
                    new_a = a
                else:
                    new_a = _fe.add(a, g)
                new_c = advance(c, inplace)
                for j, i in enumerate(range(len(g)) if idx is None else idx):
                    acc[i], counts[i] = new_a[j], new_c[j]
            mini = int(state.mini_step)
            if mini < k - 1:
                step_ = state.mini_step.add_(1) if inplace else state.mini_step + 1
                new_state = state._replace(mini_step=step_, acc_grads=acc, acc_count=counts)
                return zeros(updates, inplace), new_state
            filled = [c is not None and float(c) > 0 for c in counts]
            if inplace:
                vals = []
                for u, a, f in zip(updates, acc, filled):
                    vals.append(None if not f else (u.copy_(a) if u is not None else a.clone()))
            else:
                vals = [a if f else None for a, f in zip(acc, filled)]
            out, inner_state = inner_update(vals, state.inner_opt_state, params=params,
                                            inplace=inplace, treespec=treespec)  # fmt: skip
            present_acc = [a for a in acc if a is not None]
            present_cnt = [c for c in counts if c is not None]
            if inplace:
                if present_acc and not _dispatch.functorch_active():
                    torch._foreach_zero_(present_acc)
                    torch._foreach_zero_(present_cnt)
                else:
                    for t in present_acc + present_cnt:
                        t.zero_()
                mini_step = state.mini_step.zero_()
                gradient_step = state.gradient_step.add_(1)
            else:
                acc = [None if a is None else torch.zeros_like(a) for a in acc]
                counts = [None if c is None else torch.zeros_like(c) for c in counts]
                mini_step = torch.zeros_like(state.mini_step)
                gradient_step = state.gradient_step + 1
            return list(out), MultiStepsState(
                mini_step=mini_step,
                gradient_step=gradient_step,
                inner_opt_state=inner_state,
                acc_grads=acc,
                acc_count=counts,
                skip_state=state.skip_state,
            )

        instance = super().__new__(cls, init_fn, update_fn, f'MultiSteps({opt!r})')
        instance.inner_opt = opt
        return instance

    def has_updated(self, state: MultiStepsState) -> torch.Tensor:
        """Whether the last update was an inner-optimizer step (a 0-dim bool tensor)."""
        return torch.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> MultiSteps:
        """This transformation (optax's spelling: ``MultiSteps(...).gradient_transformation()``)."""
        return self


# --- moving averages of the parameters -----------------------------------------------------------


def incremental_update(
    new_tensors: Any, old_tensors: Any, step_size: float, *, inplace: bool = False
) -> Any:
    r"""Polyak averaging: :math:`\tau \cdot \text{new} + (1 - \tau) \cdot \text{old}`, leaf by leaf.

    The usual target-network update (``step_size`` :math:`\tau` small).

    Args:
        new_tensors: the latest values (a tree of tensors).
        old_tensors: the running average, a tree of the same structure.
        step_size: :math:`\tau \in [0, 1]`.
        inplace: write the result into ``old_tensors`` (without recording it for autograd) and
            return them.

    Reference: optax ``incremental_update``; Polyak & Juditsky, 1992.
    """
    new_leaves, treespec = optree.tree_flatten(new_tensors)
    old_leaves = treespec.flatten_up_to(old_tensors)
    if inplace:
        with torch.no_grad():
            _fe.lerp_(old_leaves, [x.detach() for x in new_leaves], step_size)
        return old_tensors
    return treespec.unflatten(_fe.lerp(old_leaves, new_leaves, step_size))


class ParamsEMAState(NamedTuple):
    """State of :func:`params_ema`: the number of updates (0-dim float32) and the averages."""

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count
    ema: Any


class ParamsEMA(NamedTuple):
    """``init(params)``, ``update(params, state, *, inplace=True)`` and ``value(state)``."""

    init: Callable[[Any], ParamsEMAState]
    update: Callable[..., ParamsEMAState]
    value: Callable[[ParamsEMAState], Any]


def params_ema(decay: float = 0.999, *, debias: bool = False) -> ParamsEMA:
    r"""An exponential moving average of the parameters, for evaluation weights.

    .. math::

        \bar\theta_t = \beta \bar\theta_{t-1} + (1-\beta)\,\theta_t

    Without ``debias`` the average starts at the initial parameters (as ``torch.optim.swa_utils``
    EMA models do); with ``debias`` it starts at zero and ``value`` divides by
    :math:`1-\beta^t`. The averages are detached copies: they never require grad. Call
    ``update`` after each optimizer step::

        averager = torchopt.transform.params_ema(0.999)
        ema_state = averager.init(params)
        ...  # an optimizer step
        ema_state = averager.update(params, ema_state)
        eval_params = averager.value(ema_state)

    Args:
        decay: :math:`\beta \in [0, 1)`.
        debias: start from zero and correct the bias (in double precision).
    """
    _checks.check_beta('decay', decay)

    def init(params: Any) -> ParamsEMAState:
        def start(p: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(p) if debias else p.detach().clone()

        return ParamsEMAState(count=torch.zeros((), dtype=torch.float32),
                              ema=optree.tree_map(start, params))  # fmt: skip

    def update(params: Any, state: ParamsEMAState, *, inplace: bool = True) -> ParamsEMAState:
        leaves, treespec = optree.tree_flatten(params)
        averages = treespec.flatten_up_to(state.ema)
        with torch.no_grad():
            current = [p.detach() for p in leaves]
            if inplace:
                _fe.lerp_(averages, current, 1.0 - decay)
                state.count.add_(1.0)
                return state
            new = _fe.lerp(averages, current, 1.0 - decay)
        return ParamsEMAState(count=state.count + 1.0, ema=treespec.unflatten(new))

    def value(state: ParamsEMAState) -> Any:
        if not debias:
            return state.ema
        t = float(state.count)
        if t == 0:
            return state.ema
        factor = 1.0 / (1.0 - decay**t)
        return optree.tree_map(lambda x: x * factor, state.ema)

    return ParamsEMA(init, update, value)
