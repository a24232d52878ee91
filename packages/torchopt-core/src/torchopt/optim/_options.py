"""``torch.optim``'s implementation options on the torch-like classes.

``torch.optim`` constructors take ``foreach``, ``fused``, ``capturable`` and ``differentiable``
(each class the ones it has), and keep them in every param group; code written for
``torch.optim`` passes them (``AdamW(groups, lr=..., fused=True)``). The classes that
``torch.optim`` also has take the same ones, keep them in their groups and checkpoints, and:

* ``foreach`` / ``fused`` are hints: torchopt's dispatcher (:mod:`torchopt._dispatch`) picks the
  path from the tensors, torch's fused kernel wherever it is eligible. They are checked as
  ``torch.optim`` checks them: not both ``True``, and ``fused=True`` only for floating-point
  parameters on a device with fused kernels;
* ``capturable=True`` (CUDA-graph capture) and ``differentiable=True`` (autograd through
  ``step``) are not offered, and say what to use instead: the step counts live on the CPU, and
  the differentiable optimizers are ``torchopt.MetaAdam`` & co. and the functional API with
  ``inplace=False``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ['DEFAULTS', 'check']

DEFAULTS: dict[str, Any] = {
    'foreach': None,
    'fused': None,
    'capturable': False,
    'differentiable': False,
}
_FUSED_DEVICES = ('cpu', 'cuda', 'mps', 'xpu')


def check(name: str, group: dict, keys: tuple[str, ...]) -> None:
    """Validate the options ``keys`` of one param ``group`` of the optimizer ``name``."""
    for key in keys:
        value = group[key]
        optional = DEFAULTS[key] is None
        if not (isinstance(value, bool) or (optional and value is None)):
            kind = 'a bool or None' if optional else 'a bool'
            raise TypeError(f'{name}: `{key}` must be {kind}, got {value!r}')
    if group.get('fused') and group.get('foreach'):
        raise ValueError(f'{name}: `fused` and `foreach` cannot be True together')
    if group.get('capturable'):
        raise ValueError(
            f'{name}: capturable=True (CUDA-graph capture of step) is not supported: torchopt '
            'keeps the step counts on the CPU; compile the step with torch.compile instead'
        )
    if group.get('differentiable'):
        raise ValueError(
            f'{name}: differentiable=True is not supported by the in-place torch-like step; '
            'differentiate through updates with a MetaOptimizer (torchopt.MetaSGD, MetaAdam, '
            '...) or the functional API with update(..., inplace=False)'
        )
    if group.get('fused'):
        for p in group['params']:
            if not (torch.is_floating_point(p) and p.device.type in _FUSED_DEVICES):
                raise ValueError(
                    f'{name}: fused=True requires floating-point parameters on a device with '
                    f'fused kernels ({", ".join(_FUSED_DEVICES)}), got {p.dtype} on '
                    f'{p.device.type}'
                )
