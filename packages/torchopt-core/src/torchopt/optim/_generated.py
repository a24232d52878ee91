"""Torch-like and Meta classes made from an optimizer alias's own signature.

The optimizers added beyond TorchOpt 0.7 have no upstream class signatures to match, so their
classes take exactly the alias's arguments (without ``moment_requires_grad``, which the
torch-like class fixes to ``False`` and the Meta class defaults to ``True``): one definition,
the alias, and a class that cannot drift from it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from torchopt.optim import _options
from torchopt.optim.base import Optimizer
from torchopt.optim.meta.base import MetaOptimizer

__all__ = ['meta_class', 'torch_like_class']


def _signature(alias: Callable[..., Any], first: str) -> tuple[inspect.Signature, bool]:
    sig = inspect.signature(alias)
    has_mrg = 'moment_requires_grad' in sig.parameters
    params = [p for p in sig.parameters.values() if p.name != 'moment_requires_grad']
    head = [
        inspect.Parameter('self', inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter(first, inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ]
    return sig.replace(parameters=head + params, return_annotation=None), has_mrg


def torch_like_class(
    name: str, alias: Callable[..., Any], *, live_lr: bool = True, options: tuple[str, ...] = ()
) -> type:
    """A :class:`~torchopt.Optimizer` subclass whose hyper-parameters are ``alias``'s.

    ``live_lr=False`` for an alias that needs ``lr`` as a number (its transformation is then
    rebuilt when a scheduler changes ``lr``). ``options`` are the ``torch.optim`` implementation
    options its ``torch.optim`` counterpart takes (:mod:`torchopt.optim._options`), appended as
    keyword-only arguments.
    """
    sig, has_mrg = _signature(alias, 'params')
    extra = [
        inspect.Parameter(o, inspect.Parameter.KEYWORD_ONLY, default=_options.DEFAULTS[o])
        for o in options
    ]
    sig = sig.replace(parameters=[*sig.parameters.values(), *extra])

    def __init__(self: Any, params: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        bound = sig.bind(self, params, *args, **kwargs)
        bound.apply_defaults()
        defaults = {k: v for k, v in bound.arguments.items() if k not in ('self', 'params')}
        chosen = {o: defaults.pop(o) for o in options}
        self._setup(params, None, defaults, options=chosen)

    __init__.__signature__ = sig  # type: ignore[attr-defined]
    doc = f':func:`torchopt.{alias.__name__}` as a torch-like optimizer (its arguments).'
    return type(name, (Optimizer,), {
        '__init__': __init__, '__doc__': doc, '__module__': 'torchopt.optim',
        '_factory': staticmethod(alias),
        '_fixed': {'moment_requires_grad': False} if has_mrg else {}, '_live_lr': live_lr,
    })  # fmt: skip


def meta_class(name: str, alias: Callable[..., Any]) -> type:
    """A :class:`~torchopt.MetaOptimizer` subclass over ``alias`` (moments require grad)."""
    sig, has_mrg = _signature(alias, 'module')
    if has_mrg:
        extra = inspect.Parameter(
            'moment_requires_grad', inspect.Parameter.KEYWORD_ONLY, default=True
        )
        sig = sig.replace(parameters=[*sig.parameters.values(), extra])

    def __init__(self: Any, module: nn.Module, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        bound = sig.bind(self, module, *args, **kwargs)
        bound.apply_defaults()
        hyper = {k: v for k, v in bound.arguments.items() if k not in ('self', 'module')}
        MetaOptimizer.__init__(self, module, alias(**hyper))

    __init__.__signature__ = sig  # type: ignore[attr-defined]
    doc = f'Differentiable :func:`torchopt.{alias.__name__}`.'
    return type(name, (MetaOptimizer,), {
        '__init__': __init__, '__doc__': doc, '__module__': 'torchopt.optim.meta',
    })  # fmt: skip
