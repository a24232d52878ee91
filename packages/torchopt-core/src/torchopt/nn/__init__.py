"""Meta-parameter modules and stateless helpers (upstream ``torchopt.nn``).

``ImplicitMetaGradientModule`` and ``ZeroOrderGradientModule`` are served by the
``torchopt-implicit`` and ``torchopt-zero`` plugins, loaded on first access.
"""

from typing import Any

from torchopt import plugins as _plugins
from torchopt.nn import stateless
from torchopt.nn.module import MetaGradientModule
from torchopt.nn.stateless import reparameterize, reparametrize, swap_state

__all__ = [
    'ImplicitMetaGradientModule',
    'MetaGradientModule',
    'ZeroOrderGradientModule',
    'reparameterize',
    'reparametrize',
    'swap_state',
]

_PLUGIN_NAMES = {
    'ImplicitMetaGradientModule': 'torchopt.diff.implicit.nn',
    'ZeroOrderGradientModule': 'torchopt.diff.zero_order.nn',
}


def __getattr__(name: str) -> Any:
    if name in _PLUGIN_NAMES:
        return getattr(_plugins.resolve(_PLUGIN_NAMES[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
