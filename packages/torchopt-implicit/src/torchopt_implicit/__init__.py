"""Implicit differentiation for torchopt (served as ``torchopt.diff.implicit``).

* :func:`custom_root` / :func:`custom_fixed_point`: decorators that differentiate the solution
  of an inner solver by the implicit function theorem;
* :class:`ImplicitMetaGradientModule` (in :mod:`torchopt_implicit.nn`): the module API;
* :mod:`torchopt_implicit.linear_solve` (``torchopt.linear_solve``) and
  :mod:`torchopt_implicit.linalg` (``torchopt.linalg``): the linear solvers behind them.
"""

from torchopt_implicit import decorator, linalg, linear_solve, nn
from torchopt_implicit.decorator import custom_fixed_point, custom_root
from torchopt_implicit.nn import ImplicitMetaGradientModule

__all__ = ['ImplicitMetaGradientModule', 'custom_root', 'custom_fixed_point']
