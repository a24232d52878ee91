"""Registration of the optimizer-state classes for ``torch.load(weights_only=True)``.

Every state is a NamedTuple defined in a core module. ``import torchopt`` registers them all
with ``torch.serialization.add_safe_globals``, so a checkpoint made with
``torch.save(optimizer.state_dict())`` loads in the default weights-only mode in a process
that has only imported ``torchopt``.

The classes are registered by name (:data:`STATE_CLASS_NAMES`) without importing their modules:
``import torchopt`` imports no transformation. Each entry is a ``(class, name)`` pair, the
form ``add_safe_globals`` accepts, whose class is imported the first time torch reads it,
that is when ``torch.load`` meets a global that is not one of its own. A test checks that the
list names exactly the NamedTuple classes the core modules define (:func:`state_classes` after
importing them all), so a new state cannot be forgotten.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ['STATE_CLASS_NAMES', 'register_safe_globals', 'state_classes']

#: Every NamedTuple class defined in a core module, as ``module.qualname``.
STATE_CLASS_NAMES: tuple[str, ...] = (
    'torchopt._dispatch.FusedStep',
    'torchopt.base.ChainedGradientTransformation',
    'torchopt.base.EmptyState',
    'torchopt.base.GradientTransformation',
    'torchopt.base.IdentityGradientTransformation',
    'torchopt.base.UninitializedState',
    'torchopt.combine.FlatChain',
    'torchopt.nn.module.MetaInputsContainer',
    'torchopt.nn.stateless._Swap',
    'torchopt.plugins.PluginInfo',
    'torchopt.plugins.PluginStatus',
    'torchopt.transform._accumulation.EmaState',
    'torchopt.transform._accumulation.MultiSteps',
    'torchopt.transform._accumulation.MultiStepsState',
    'torchopt.transform._accumulation.ParamsEMA',
    'torchopt.transform._accumulation.ParamsEMAState',
    'torchopt.transform._adam.ScaleByAdamState',
    'torchopt.transform._adam.ScaleByAdamaxState',
    'torchopt.transform._adam.ScaleByNAdamState',
    'torchopt.transform._adam.ScaleByRAdamState',
    'torchopt.transform._adaptive.ScaleByAdanState',
    'torchopt.transform._adaptive.ScaleByAmsgradState',
    'torchopt.transform._adaptive.ScaleByBeliefState',
    'torchopt.transform._adaptive.ScaleByNovogradState',
    'torchopt.transform._adaptive.ScaleByYogiState',
    'torchopt.transform._combining.PartitionState',
    'torchopt.transform._elementwise.AddNoiseState',
    'torchopt.transform._elementwise.ZeroNansState',
    'torchopt.transform._flat.FlatTransformation',
    'torchopt.transform._hyperparams.InjectHyperparamsState',
    'torchopt.transform._masking.MaskedNode',
    'torchopt.transform._masking.MaskedState',
    'torchopt.transform._misc.ScaleByLionState',
    'torchopt.transform._rms.ScaleByAdadeltaState',
    'torchopt.transform._rms.ScaleByRStdDevState',
    'torchopt.transform._rms.ScaleByRmsState',
    'torchopt.transform._rms.ScaleByRssState',
    'torchopt.transform._muon.ScaleByMuonState',
    'torchopt.transform._scale.ScaleByScheduleState',
    'torchopt.transform._torch_family.ScaleByASGDState',
    'torchopt.transform._torch_family.ScaleByAdafactorState',
    'torchopt.transform._torch_family.ScaleByRpropState',
    'torchopt.transform._trace.DampenedTraceState',
    'torchopt.transform._trace.TraceState',
    'torchopt.transform._wrappers.ApplyIfFiniteState',
    'torchopt.transform._wrappers.LookaheadParams',
    'torchopt.transform._wrappers.LookaheadState',
    'torchopt.unroll._Rng',
    'torchopt.unroll._State',
    'torchopt.utils.ModuleState',
)


def _is_namedtuple_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, '_fields')


def state_classes() -> list[type]:
    """The NamedTuple classes defined in the loaded ``torchopt`` modules."""
    found: dict[str, type] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == 'torchopt' or name.startswith('torchopt.')):
            continue
        for obj in vars(module).values():
            if _is_namedtuple_class(obj) and getattr(obj, '__module__', '').startswith('torchopt'):
                found[f'{obj.__module__}.{obj.__qualname__}'] = obj
    return [found[k] for k in sorted(found)]


def _import_class(full_name: str) -> type:
    module, _, qualname = full_name.rpartition('.')
    obj: Any = importlib.import_module(module)
    return getattr(obj, qualname)


class _LazySafeGlobal(tuple):
    """A ``(class, 'module.qualname')`` pair whose class is imported when first read.

    It is a 2-tuple for ``torch.serialization.add_safe_globals``; unpacking it or indexing
    item 0 imports the class's module (once) and yields the class itself.
    """

    __slots__ = ()

    def __new__(cls, full_name: str) -> _LazySafeGlobal:
        return super().__new__(cls, (None, full_name))

    def _resolve(self) -> type:
        return _import_class(tuple.__getitem__(self, 1))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int) and index in (0, -2):
            return self._resolve()
        if isinstance(index, slice):
            return (self._resolve(), tuple.__getitem__(self, 1))[index]
        return tuple.__getitem__(self, index)

    def __iter__(self) -> Any:
        return iter((self._resolve(), tuple.__getitem__(self, 1)))

    def __repr__(self) -> str:
        return f'_LazySafeGlobal({tuple.__getitem__(self, 1)!r})'


def register_safe_globals() -> None:
    """Allow every class of :data:`STATE_CLASS_NAMES` in weights-only ``torch.load``."""
    import torch.serialization

    torch.serialization.add_safe_globals([_LazySafeGlobal(name) for name in STATE_CLASS_NAMES])
