"""Hyper-parameters that live in the optimizer state (optax's ``inject_hyperparams``).

``inject_hyperparams(torchopt.adam)(lr=1e-3, betas=(0.9, 0.999))`` is a transformation whose
state holds the hyper-parameters as 0-dim tensors: read them, change them between steps, let them
follow a schedule, or make them learnable (a tensor that requires grad) and differentiate an
unrolled loop with respect to them.

Each update rebuilds the inner transformation from the current values. Hyper-parameters that do
not require grad are handed to it as Python numbers, so the fast paths (torch's fused kernels)
run as for a plain ``torchopt.adam(1e-3)``, and an unchanged set of values reuses the last inner
transformation. Learnable ones are handed over as tensors: the learning rate of every alias and
the betas of the Adam family are differentiable.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from typing import Any, Callable, NamedTuple

import torch

from torchopt import _dispatch
from torchopt.transform._flat import FlatTransformation, as_flat

__all__ = ['InjectHyperparamsState', 'inject_hyperparams']


class InjectHyperparamsState(NamedTuple):
    """State of :func:`inject_hyperparams`.

    Attributes:
        count: the number of updates so far (a 0-dim float32 CPU tensor); schedules are evaluated
            on it.
        hyperparams: ``{name: value}``, each value a 0-dim tensor (or a tuple of them, e.g.
            ``betas``). Assign to change a value from the next update on; an entry that follows
            a schedule is overwritten by the schedule at every update.
        inner_state: the state of the inner transformation.
    """

    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count
    hyperparams: dict
    inner_state: Any


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_hyper_leaf(x: Any) -> bool:
    """A number, a 0-dim tensor or a schedule (a callable that is not a tensor)."""
    if isinstance(x, torch.Tensor):
        return x.numel() == 1
    return _is_number(x) or _is_schedule(x)


def _is_schedule(x: Any) -> bool:
    return callable(x) and not isinstance(x, torch.Tensor)


def _has_schedule(x: Any) -> bool:
    if isinstance(x, (tuple, list)):
        return any(_is_schedule(v) for v in x)
    return _is_schedule(x)


def _is_hyper(x: Any) -> bool:
    if isinstance(x, (tuple, list)):
        return len(x) > 0 and all(_is_hyper_leaf(v) for v in x)
    return _is_hyper_leaf(x)


def _as_tensor(x: Any, dtype: torch.dtype | None) -> Any:
    """A hyper-parameter value as stored in the state (a tensor keeps its identity and graph)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, int) and not isinstance(x, bool) and dtype is None:
        return torch.tensor(x, dtype=torch.int64)
    return torch.tensor(float(x), dtype=dtype or torch.float64)


def _plain(x: Any) -> Any:
    """The value handed to the inner factory: a Python number unless it must stay a tensor.

    Tensors stay tensors when they require grad (learnable) or inside ``torch.func`` transforms
    and ``torch.compile`` (no host reads there).
    """
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        if x.requires_grad or _dispatch.functorch_active() or _dispatch.compiling():
            return x
        if x.numel() == 1:
            return x.item()
    return x


def _hashable(x: Any) -> bool:
    if isinstance(x, (tuple, list)):
        return all(_hashable(v) for v in x)
    return isinstance(x, (int, float, bool, str)) or x is None


def inject_hyperparams(
    inner_factory: Callable[..., Any],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: torch.dtype | None = None,
) -> Callable[..., FlatTransformation]:
    r"""Wrap an optimizer factory so that its hyper-parameters live in the state.

    ``inject_hyperparams(factory)(*args, **kwargs)`` binds the arguments to ``factory``'s
    signature (defaults included). Numbers, 0-dim tensors and tuples of them (``betas``) become
    hyper-parameters stored in :class:`InjectHyperparamsState` as 0-dim tensors; a callable
    argument is a schedule, evaluated on the step count at every update (at count 0 in
    ``init``), its value stored in the state. Everything else (bools, strings, ``None``,
    masks), and every name in ``static_args``, is passed to ``factory`` unchanged.

    At every update the inner transformation is ``factory(**values)``: hyper-parameters that do
    not require grad are passed as Python numbers (so torch's fused kernels still run, and an
    unchanged set of values reuses the previous inner transformation), learnable ones (tensors
    with ``requires_grad=True``) as tensors, which makes the update differentiable with respect
    to them (the learning rate of every alias and the betas of the Adam family)::

        lr = torch.tensor(1e-2, requires_grad=True)
        opt = torchopt.inject_hyperparams(torchopt.adam)(lr=lr)
        state = opt.init(params)
        for _ in range(5):
            updates, state = opt.update(grads(params), state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        loss(params).backward()  # lr.grad is the meta-gradient

        state.hyperparams['lr'] = torch.tensor(3e-3)  # takes effect at the next update

    Hyper-parameters that change the structure of the inner state (``momentum=0`` removes
    SGD's momentum buffer) must be static: list them in ``static_args``.

    Args:
        inner_factory: a function returning a :class:`~torchopt.base.GradientTransformation`
            (e.g. :func:`torchopt.adam`).
        static_args: names of arguments never stored as hyper-parameters.
        hyperparam_dtype: dtype of the stored values given as Python floats (default float64;
            Python ints are stored as int64 unless this is set). Tensors keep their dtype.

    Returns:
        A function with ``inner_factory``'s arguments that returns the wrapped transformation.

    Reference: optax ``inject_hyperparams``; Maclaurin et al., *Gradient-based Hyperparameter
    Optimization through Reversible Learning*, ICML 2015.
    """
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)

    @functools.wraps(inner_factory)
    def wrapped(*args: Any, **kwargs: Any) -> FlatTransformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        fixed: dict[str, Any] = {}
        values: dict[str, Any] = {}
        schedules: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            parameter = signature.parameters[name]
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(f'inject_hyperparams: variadic argument {name!r} is not supported')
            default = parameter.default
            # A callable given for an argument whose default is not a number (adamw's ``mask``)
            # is not a schedule.
            if (
                name in static
                or not _is_hyper(value)
                or (default is not parameter.empty and not _is_hyper(default))
            ):
                fixed[name] = value
            elif _has_schedule(value):
                schedules[name] = value
            elif isinstance(value, (tuple, list)):
                values[name] = type(value)(_as_tensor(v, hyperparam_dtype) for v in value)
            else:
                values[name] = _as_tensor(value, hyperparam_dtype)
        cache: dict[Any, Any] = {}

        def evaluate(count: torch.Tensor) -> dict[str, Any]:
            c = count.to(torch.float64)

            def one(fn: Any) -> Any:
                return _as_tensor(fn(c) if _is_schedule(fn) else fn, hyperparam_dtype)

            return {
                name: type(fn)(one(f) for f in fn) if isinstance(fn, (tuple, list)) else one(fn)
                for name, fn in schedules.items()
            }

        def inner_for(hyperparams: dict[str, Any]) -> Any:
            plain = {name: _plain(value) for name, value in hyperparams.items()}
            key = tuple(sorted(plain.items())) if all(map(_hashable, plain.values())) else None
            if key is not None and key in cache:
                return cache[key]
            inner = inner_factory(**fixed, **plain)
            if key is not None:
                cache.clear()  # keep one: a schedule changes the values at every step
                cache[key] = inner
            return inner

        def init_fn(params: list, treespec: Any) -> InjectHyperparamsState:
            count = torch.zeros((), dtype=torch.float32)
            hyperparams = {**values, **evaluate(count)}
            inner_init, _ = as_flat(inner_for(hyperparams))
            return InjectHyperparamsState(
                count=count, hyperparams=hyperparams, inner_state=inner_init(params, treespec)
            )

        def update_fn(
            updates: list,
            state: InjectHyperparamsState,
            *,
            params: list | None = None,
            inplace: bool = True,
            treespec: Any = None,
        ) -> tuple[list, InjectHyperparamsState]:
            if all(u is None for u in updates):
                return updates, state
            hyperparams = {**state.hyperparams, **evaluate(state.count)}
            _, inner_update = as_flat(inner_for(hyperparams))
            new_updates, inner_state = inner_update(
                updates, state.inner_state, params=params, inplace=inplace, treespec=treespec
            )
            if inplace:
                state.count.add_(1.0)
                count = state.count
            else:
                count = state.count + 1.0
            return new_updates, InjectHyperparamsState(count, hyperparams, inner_state)

        name = getattr(inner_factory, '__name__', 'transformation')
        return FlatTransformation(init_fn, update_fn, f'inject_hyperparams({name})')

    return wrapped
