"""TorchOpt 0.7's one-object-per-file module paths, as views of this library's packages.

Upstream defines each optimizer, transformation and schedule in a file of its own
(``torchopt/optim/adam.py``, ``torchopt/transform/scale_by_adam.py``, ...); here they live in
modules by topic. So that ``from torchopt.optim.meta.adam import MetaAdam`` or
``from torchopt.transform.scale_by_adam import ScaleByAdamState`` keep working, each package
calls :func:`register` when it is imported: every upstream path below it becomes a small module
in ``sys.modules`` whose attributes are the package's own objects (its ``__all__`` is upstream's).
The import system returns a module already in ``sys.modules`` without touching the package, so
``torchopt.transform.scale_by_adam`` stays the function, as upstream, while
``torchopt.optim.adam`` is the module, as upstream too (the package has no such name otherwise).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

__all__ = ['UPSTREAM_SUBMODULES', 'register']

#: Upstream's per-class modules of ``torchopt.optim`` and their ``__all__`` (``optim.meta``: the
#: same with ``Meta`` in front; ``alias``: one function, named as the module).
_CLASSES: dict[str, tuple[str, ...]] = {
    'adadelta': ('AdaDelta', 'Adadelta'),
    'adagrad': ('AdaGrad', 'Adagrad'),
    'adam': ('Adam',),
    'adamax': ('AdaMax', 'Adamax'),
    'adamw': ('AdamW',),
    'radam': ('RAdam',),
    'rmsprop': ('RMSProp', 'RMSprop'),
    'sgd': ('SGD',),
}

#: Upstream module path -> (its ``__all__``, further public names defined there).
UPSTREAM_SUBMODULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    **{f'torchopt.alias.{m}': ((m,), ()) for m in _CLASSES},  # the function of the same name
    **{f'torchopt.optim.{m}': (names, ()) for m, names in _CLASSES.items()},
    **{f'torchopt.optim.meta.{m}': (tuple(f'Meta{n}' for n in names), ())
       for m, names in _CLASSES.items()},
    'torchopt.schedule.exponential_decay': (('exponential_decay',), ()),
    'torchopt.schedule.polynomial': (('polynomial_schedule', 'linear_schedule'), ()),
    'torchopt.transform.add_decayed_weights': (
        ('masked', 'add_decayed_weights'), ('MaskedState', 'MaskedNode')),
    'torchopt.transform.nan_to_num': ((), ('nan_to_num',)),
    'torchopt.transform.scale': (('scale',), ()),
    'torchopt.transform.scale_by_adadelta': (('scale_by_adadelta',), ('ScaleByAdadeltaState',)),
    'torchopt.transform.scale_by_adam': (
        ('scale_by_adam', 'scale_by_accelerated_adam'), ('ScaleByAdamState',)),
    'torchopt.transform.scale_by_adamax': (('scale_by_adamax',), ('ScaleByAdamaxState',)),
    'torchopt.transform.scale_by_radam': (('scale_by_radam',), ('ScaleByRAdamState',)),
    'torchopt.transform.scale_by_rms': (('scale_by_rms',), ('ScaleByRmsState',)),
    'torchopt.transform.scale_by_rss': (('scale_by_rss',), ('ScaleByRssState',)),
    'torchopt.transform.scale_by_schedule': (('scale_by_schedule',), ('ScaleByScheduleState',)),
    'torchopt.transform.scale_by_stddev': (('scale_by_stddev',), ('ScaleByRStdDevState',)),
    'torchopt.transform.trace': (('trace',), ('TraceState',)),
}  # fmt: skip


def register(package: str) -> None:
    """Put the upstream paths directly below ``package`` (an imported module) in ``sys.modules``."""
    parent = sys.modules[package]
    for path, (exported, extra) in UPSTREAM_SUBMODULES.items():
        head, _, child = path.rpartition('.')
        if head != package or path in sys.modules:
            continue
        view = types.ModuleType(path, f'TorchOpt 0.7 module path: a view of :mod:`{package}`.')
        view.__spec__ = importlib.machinery.ModuleSpec(path, None)
        view.__all__ = list(exported)  # type: ignore[attr-defined]
        for name in (*exported, *extra):
            setattr(view, name, getattr(parent, name))
        sys.modules[path] = view
        if not hasattr(parent, child):
            setattr(parent, child, view)
