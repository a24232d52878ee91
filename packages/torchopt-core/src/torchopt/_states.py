"""Registration of the optimizer-state classes for ``torch.load(weights_only=True)``.

Every state is a NamedTuple defined in a core module. :func:`register_safe_globals` finds them
(no hand-kept list) and hands them to ``torch.serialization.add_safe_globals``, so a checkpoint
made with ``torch.save(optimizer.state_dict())`` loads in the default weights-only mode once
``torchopt`` is imported.
"""

from __future__ import annotations

import sys

import torch

__all__ = ['register_safe_globals', 'state_classes']


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


def register_safe_globals() -> None:
    """Allow every state class of :func:`state_classes` in weights-only ``torch.load``."""
    torch.serialization.add_safe_globals(state_classes())
