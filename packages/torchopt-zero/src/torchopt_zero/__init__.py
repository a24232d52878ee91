"""Zero-order (evolution-strategy) differentiation: the ``torchopt-zero`` plugin.

Served as ``torchopt.diff.zero_order`` (upstream path). Like upstream, the module object itself
is callable: ``torchopt.diff.zero_order(...)`` is ``torchopt.diff.zero_order.zero_order(...)``.
"""

import sys
import types
from typing import Any

from torchopt_zero import decorator, nn
from torchopt_zero.decorator import WrappedSamplable, zero_order
from torchopt_zero.nn import ZeroOrderGradientModule, enable_zero_order_gradients

__all__ = ['ZeroOrderGradientModule', 'zero_order']


class _CallableModule(types.ModuleType):  # pylint: disable=too-few-public-methods
    """A module type whose instances forward calls to :func:`zero_order`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.zero_order(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

del sys, types, Any
