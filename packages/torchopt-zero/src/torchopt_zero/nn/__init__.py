"""Zero-order gradient modules (upstream ``torchopt.diff.zero_order.nn``)."""

from torchopt_zero.nn import module
from torchopt_zero.nn.module import ZeroOrderGradientModule, enable_zero_order_gradients

__all__ = ['ZeroOrderGradientModule', 'enable_zero_order_gradients', 'module']
