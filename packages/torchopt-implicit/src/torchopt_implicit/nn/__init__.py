"""The module API of implicit differentiation (served as ``torchopt.diff.implicit.nn``)."""

from torchopt_implicit.nn import module
from torchopt_implicit.nn.module import ImplicitMetaGradientModule

__all__ = ['ImplicitMetaGradientModule']
