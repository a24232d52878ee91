r"""``ImplicitMetaGradientModule``: inner problems as modules, differentiated implicitly.

A subclass describes an inner problem whose variables are the module's parameters and whose
outer variables are its meta-parameters (see :class:`torchopt.nn.MetaGradientModule`)::

    class InnerNet(ImplicitMetaGradientModule, linear_solve=torchopt.linear_solve.solve_cg()):
        def __init__(self, meta_net, reg):
            super().__init__()
            self.meta_net = meta_net  # meta-module
            self.net = copy.deepcopy(meta_net)  # parameters, solved for
            self.reg = reg

        def objective(self, x, y):  # or optimality(self, x, y) -> one residual per parameter
            ...

        def solve(self, x, y):  # any inner optimizer; the module holds the solution afterwards
            ...

After ``inner.solve(x, y)`` the parameters hold :math:`x^\star(\theta)` and carry gradients to
the meta-parameters :math:`\theta` by the implicit function theorem (through
:func:`~torchopt_implicit.custom_root`), whatever the inner optimizer was.
"""

from __future__ import annotations

import abc
import functools
import inspect
import itertools
from collections.abc import Sequence
from typing import Any, Callable

import torch

from torchopt.nn import MetaGradientModule
from torchopt.nn.stateless import reparametrize, swap_state
from torchopt.typing import LinearSolver, TupleOfTensors
from torchopt_implicit.decorator import custom_root

__all__ = [
    'ImplicitMetaGradientModule',
    'enable_implicit_gradients',
    'make_optimality_from_objective',
]

_ENABLED_FLAG = '__implicit_gradients_enabled__'


def _stateless_optimality_fn(
    flat_params: TupleOfTensors,
    flat_meta_params: TupleOfTensors,
    params_names: Sequence[str],
    meta_params_names: Sequence[str],
    module: ImplicitMetaGradientModule,
    *input: Any,  # noqa: A002
    **kwargs: Any,
) -> TupleOfTensors:
    named = itertools.chain(
        zip(params_names, flat_params), zip(meta_params_names, flat_meta_params)
    )
    with reparametrize(module, named):
        return tuple(module.optimality(*input, **kwargs))


def _identity_solver_fn(
    flat_params: TupleOfTensors,
    flat_meta_params: TupleOfTensors,  # noqa: ARG001
    params_names: Sequence[str],  # noqa: ARG001
    meta_params_names: Sequence[str],  # noqa: ARG001
    module: ImplicitMetaGradientModule,  # noqa: ARG001
    *input: Any,  # noqa: A002, ARG001
    **kwargs: Any,  # noqa: ARG001
) -> TupleOfTensors:
    return tuple(flat_params)


def make_optimality_from_objective(
    cls: type[ImplicitMetaGradientModule],
) -> type[ImplicitMetaGradientModule]:
    r"""Give ``cls`` the optimality :math:`\nabla_x f(x, \theta)` of its ``objective()``.

    The gradient is taken by :func:`torch.func.grad` with respect to the module parameters
    (not the meta-parameters).

    The derived ``optimality()`` raises :class:`RuntimeError` ``'The module has no
    parameters.'`` / ``'The module has no meta-parameters.'`` as upstream.

    Raises:
        TypeError: ``'The objective function is not defined.'`` if ``cls`` has no
            ``objective()`` of its own.
    """
    if (
        getattr(cls, 'objective', ImplicitMetaGradientModule.objective)
        is ImplicitMetaGradientModule.objective
    ):
        raise TypeError('The objective function is not defined.')

    def optimality(self: ImplicitMetaGradientModule, *input: Any, **kwargs: Any) -> TupleOfTensors:  # noqa: A002
        _check_has_parameters(self)
        names, params = zip(*self.named_parameters())

        def objective_of(flat_params: TupleOfTensors) -> torch.Tensor:
            with reparametrize(self, zip(names, flat_params)):
                return self.objective(*input, **kwargs)

        return tuple(torch.func.grad(objective_of)(tuple(params)))

    optimality.__doc__ = 'Gradient of :meth:`objective` with respect to the parameters.'
    cls.optimality = optimality  # type: ignore[method-assign]
    return cls


def _check_has_parameters(module: ImplicitMetaGradientModule) -> None:
    """Raise upstream's RuntimeError when ``module`` has no parameters or no meta-parameters."""
    if next(module.parameters(), None) is None:
        raise RuntimeError('The module has no parameters.')
    if next(module.meta_parameters(), None) is None:
        raise RuntimeError('The module has no meta-parameters.')


@functools.cache
def _implicit_solver(solve: LinearSolver | None) -> Callable[..., TupleOfTensors]:
    return custom_root(_stateless_optimality_fn, argnums=1, solve=solve)(_identity_solver_fn)


def enable_implicit_gradients(
    cls: type[ImplicitMetaGradientModule],
) -> type[ImplicitMetaGradientModule]:
    """Wrap ``cls.solve`` so that the solved parameters carry implicit meta-gradients.

    The wrapper runs the user's ``solve`` with gradient recording off, as upstream's
    ``custom_root`` does (``solve`` may update the parameters in place; an inner loop that needs
    autograd opens ``torch.enable_grad()``), detaches the resulting parameters, routes them
    through :func:`~torchopt_implicit.custom_root` with the stateless ``optimality()``
    (differentiating with respect to the meta-parameters, solving the linear system with
    ``cls.linear_solve``), swaps the differentiable solution back into the module and returns
    what ``solve`` returned.

    The wrapped ``solve`` raises :class:`RuntimeError` ``'The module has no parameters.'`` or
    ``'The module has no meta-parameters.'`` before running the user's ``solve``.

    Raises:
        TypeError: ``'Implicit gradients are already enabled for the `solve` method.'``
    """
    cls_solve = cls.solve
    if getattr(cls_solve, _ENABLED_FLAG, False):
        raise TypeError('Implicit gradients are already enabled for the `solve` method.')

    @functools.wraps(cls_solve)
    def wrapped(self: ImplicitMetaGradientModule, *input: Any, **kwargs: Any) -> Any:  # noqa: A002
        _check_has_parameters(self)
        with torch.no_grad():
            output = cls_solve(self, *input, **kwargs)
        params_names, flat_params = zip(*self.named_parameters())
        meta_names, flat_meta_params = zip(*self.named_meta_parameters())
        flat_optimal = tuple(p.detach() for p in flat_params)
        solver = _implicit_solver(type(self).linear_solve)
        flat_optimal = solver(
            flat_optimal, tuple(flat_meta_params), params_names, meta_names, self, *input, **kwargs
        )
        swap_state(self, zip(params_names, flat_optimal))
        return output

    setattr(wrapped, _ENABLED_FLAG, True)
    cls.solve = wrapped  # type: ignore[method-assign]
    return cls


def _check_method(cls: type, name: str) -> None:
    method = inspect.getattr_static(cls, name)
    if isinstance(method, staticmethod):
        raise TypeError(f'method {name}() must not be a staticmethod.')
    if isinstance(method, classmethod):
        raise TypeError(f'method {name}() must not be a classmethod.')
    if not callable(method):
        raise TypeError(f'method {name}() must be callable.')


class ImplicitMetaGradientModule(MetaGradientModule, metaclass=abc.ABCMeta):
    r"""Base class for inner problems differentiated by the implicit function theorem.

    Subclasses define :meth:`solve` and either :meth:`optimality` (one residual per
    parameter, zero at the solution) or :meth:`objective` (a scalar whose gradient with respect
    to the parameters is then the optimality). The class keyword ``linear_solve`` picks the
    linear solver of the backward pass (``None``: :func:`~torchopt_implicit.linear_solve.solve_normal_cg`).

    With :math:`x` the parameters and :math:`\theta` the meta-parameters, after
    :meth:`solve`:

    .. math::

        \frac{\partial x^\star}{\partial \theta} = -\left(\partial_x F\right)^{-1} \partial_\theta F,
        \qquad F(x, \theta) = \text{optimality}(x, \theta) .
    """

    _custom_optimality: bool
    _custom_objective: bool
    linear_solve: LinearSolver | None = None

    def __init_subclass__(cls, linear_solve: LinearSolver | None = None, **kwargs: Any) -> None:
        """Validate the subclass and wrap its :meth:`solve`."""
        super().__init_subclass__(**kwargs)
        if linear_solve is not None and not callable(linear_solve):
            raise TypeError(
                f'`linear_solve` must be a callable solve(matvec, b) -> x, got {linear_solve!r}'
            )
        cls.linear_solve = linear_solve

        optimality = getattr(cls, 'optimality', ImplicitMetaGradientModule.optimality)
        objective = getattr(cls, 'objective', ImplicitMetaGradientModule.objective)
        cls._custom_optimality = optimality is not ImplicitMetaGradientModule.optimality
        cls._custom_objective = objective is not ImplicitMetaGradientModule.objective

        if cls._custom_optimality:
            _check_method(cls, 'optimality')
        elif not cls._custom_objective:
            raise TypeError(
                'ImplicitMetaGradientModule requires either an optimality() method or an '
                'objective() method'
            )
        else:
            _check_method(cls, 'objective')
            make_optimality_from_objective(cls)

        if not getattr(cls.solve, _ENABLED_FLAG, False):
            enable_implicit_gradients(cls)

    @abc.abstractmethod
    def solve(self, *input: Any, **kwargs: Any) -> Any:  # noqa: A002
        """Solve the inner problem, leaving the solution in the module's parameters.

        It runs with gradient recording off (as in upstream TorchOpt), so it may update the
        parameters in place; an optimizer loop that needs autograd opens
        ``with torch.enable_grad():``. Differentiate with respect to the parameters only
        (``loss.backward(inputs=list(self.parameters()))`` or :func:`torch.autograd.grad`), so
        that no gradient leaks into the meta-parameters.

        Returns:
            Anything; it is returned by the wrapped :meth:`solve`.
        """
        raise NotImplementedError

    def optimality(self, *input: Any, **kwargs: Any) -> TupleOfTensors:  # noqa: A002
        r"""The optimality residual :math:`F(x, \theta)`, zero at the solution.

        For gradient-based inner problems this is :math:`\nabla_x f(x, \theta)` (derived from
        :meth:`objective` when not overridden); for fixed-point problems
        :math:`T(x, \theta) - x`.

        Returns:
            One tensor per entry of ``tuple(self.parameters())``, shaped like it.
        """
        raise NotImplementedError

    def objective(self, *input: Any, **kwargs: Any) -> torch.Tensor:  # noqa: A002
        """The inner objective, a scalar tensor (used when :meth:`optimality` is not defined)."""
        raise NotImplementedError
