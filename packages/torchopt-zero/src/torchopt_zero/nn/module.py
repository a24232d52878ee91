"""Modules whose parameters are differentiated by zero-order estimation.

Upstream ``torchopt.diff.zero_order.nn.module``.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from torchopt.nn.stateless import reparametrize
from torchopt.typing import Samplable, Size
from torchopt_zero._estimator import Estimator
from torchopt_zero.decorator import check_config, run_flat

__all__ = ['ZeroOrderGradientModule', 'enable_zero_order_gradients']

_ENABLED = '__zero_order_gradients_enabled__'
ModuleT = TypeVar('ModuleT', bound='type[nn.Module]')


def _parameter_groups(module: nn.Module) -> list[tuple[Tensor, list[str]]]:
    """The distinct parameters of ``module`` with every name each is reachable by (tied ones)."""
    groups: dict[int, tuple[Tensor, list[str]]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), (param, []))[1].append(name)
    return list(groups.values())


def enable_zero_order_gradients(
    cls: ModuleT,
    method: str = 'naive',
    num_samples: int = 1,
    sigma: float = 1.0,
    *,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
) -> ModuleT:
    r"""Make ``cls.forward`` differentiable by zero-order estimation in all module parameters.

    The wrapped ``forward`` treats the tuple of the module's (distinct) parameters as the single
    differentiable argument of :func:`torchopt_zero.zero_order`; the module itself (its
    ``sample`` method) is the noise distribution. Positional and keyword arguments of
    ``forward`` get no gradient.

    Args:
        cls: An :class:`torch.nn.Module` subclass that is also a
            :class:`torchopt.typing.Samplable` (it has ``sample(sample_shape)``).
        method: ``'naive'``, ``'forward'`` or ``'antithetic'`` (see
            :func:`torchopt_zero.zero_order`).
        num_samples: Number of noise draws per estimate.
        sigma: Perturbation scale.
        chunk_size: Noise draws per batched evaluation (see :func:`torchopt_zero.zero_order`).
        vectorize: ``None`` (vmap, loop if impossible), ``True`` or ``False``.

    Returns:
        ``cls``, modified in place.

    Raises:
        TypeError: If zero-order gradients are already enabled for ``cls.forward``.
    """
    if getattr(cls.forward, _ENABLED, False):
        raise TypeError(
            'Zero-order gradient estimation is already enabled for the `forward` method.'
        )
    estimator = Estimator(check_config(method, num_samples, sigma, chunk_size, vectorize))
    cls_forward = cls.forward

    @functools.wraps(cls_forward)
    def wrapped(self: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
        if not isinstance(self, Samplable):
            raise TypeError(
                f'{type(self).__name__} must define `sample(sample_shape)` (the noise '
                'distribution) to use zero-order gradients.'
            )
        groups = _parameter_groups(self)
        if not groups:
            raise RuntimeError('The module has no parameters.')

        def forward_fn(*params: Tensor) -> Tensor:
            named = {name: value for (_, names), value in zip(groups, params) for name in names}
            with reparametrize(self, named):  # tied names get the same perturbed tensor
                return cls_forward(self, *args, **kwargs)

        return run_flat(estimator, self.sample, forward_fn, [param for param, _ in groups])

    setattr(wrapped, _ENABLED, True)
    cls.forward = wrapped
    return cls


class ZeroOrderGradientModule(nn.Module, Samplable):
    """A module whose parameters get zero-order (ES) gradients.

    Subclasses define ``forward`` (returning a 0-dim tensor) and ``sample`` (the noise
    distribution) and choose the estimator with class keywords::

        class Policy(ZeroOrderGradientModule, method='antithetic', num_samples=100, sigma=0.1):
            def __init__(self):
                super().__init__()
                self.net = nn.Linear(4, 1)
                self.noise = torch.distributions.Normal(0.0, 1.0)

            def forward(self, x):
                return (self.net(x) > 0).float().mean()

            def sample(self, sample_shape=torch.Size()):
                return self.noise.sample(sample_shape)

    Class keywords: ``method='naive'``, ``num_samples=1``, ``sigma=1.0``, and the extras
    ``chunk_size`` and ``vectorize`` of :func:`torchopt_zero.zero_order`. A subclass that does
    not override ``forward`` re-wraps the inherited one with its own keywords.
    """

    def __init_subclass__(
        cls,
        method: str = 'naive',
        num_samples: int = 1,
        sigma: float = 1.0,
        chunk_size: int | None = None,
        vectorize: bool | None = None,
        **kwargs: Any,
    ) -> None:
        """Enable zero-order gradients for the subclass's ``forward``."""
        super().__init_subclass__(**kwargs)
        inherited = cls.forward
        if 'forward' not in cls.__dict__ and getattr(inherited, _ENABLED, False):
            cls.forward = inherited.__wrapped__  # type: ignore[attr-defined,method-assign]
        enable_zero_order_gradients(
            cls,
            method=method,
            num_samples=num_samples,
            sigma=sigma,
            chunk_size=chunk_size,
            vectorize=vectorize,
        )

    @abc.abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """Compute the scalar objective; its parameter gradients are zero-order estimates."""
        raise NotImplementedError

    @abc.abstractmethod
    def sample(self, sample_shape: Size = torch.Size()) -> Tensor | Sequence[Any]:  # noqa: B008
        """Draw noise of shape ``sample_shape`` (used to perturb every parameter)."""
        raise NotImplementedError
