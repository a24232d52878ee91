"""Differentiation beyond unrolling (upstream ``torchopt.diff``).

``torchopt.diff.implicit`` (plugin ``torchopt-implicit``) and ``torchopt.diff.zero_order``
(plugin ``torchopt-zero``) are loaded on first access, by attribute or by ``import``.
"""

from typing import Any

from torchopt import plugins as _plugins

__all__ = ['implicit', 'zero_order', 'ImplicitMetaGradientModule', 'ZeroOrderGradientModule']

_SUBMODULES = {'implicit': 'torchopt.diff.implicit', 'zero_order': 'torchopt.diff.zero_order'}
_NAMES = {
    'ImplicitMetaGradientModule': 'torchopt.diff.implicit.nn',
    'ZeroOrderGradientModule': 'torchopt.diff.zero_order.nn',
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(_SUBMODULES[name])
    if name in _NAMES:
        return getattr(_plugins.resolve(_NAMES[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
