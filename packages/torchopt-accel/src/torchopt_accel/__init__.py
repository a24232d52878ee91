"""torchopt-accel: fused C++/CUDA Adam and momentum-SGD kernels behind ``torchopt.accelerated_op``.

Importing this package loads the compiled extension :mod:`torchopt_accel._C`, which registers
the PyTorch custom ops ``torch.ops.torchopt_accel.{adam_step_, adam_forward, adam_backward,
adam_apply_, sgd_update_}``
(``torch`` is imported first: the extension links against libtorch). Fake kernels and autograd
are registered from Python (:mod:`torchopt_accel._ops`).

Users do not call this package directly: ``torchopt.adam(..., use_accelerated_op=True)``,
``torchopt.Adam``/``AdamW``/``MetaAdam``/``MetaAdamW`` with ``use_accelerated_op=True`` and
``torchopt.accelerated_op_available(...)`` reach it through core's plugin registry; the
torch-like ``torchopt.Adam``/``AdamW(use_accelerated_op=True).step()`` runs :func:`adam_apply_`
(moments, direction and parameter update in one pass). :func:`sgd_update_` is the in-place
momentum-SGD update (``torchopt.sgd(..., momentum=...).update(..., inplace=True)``) in one pass.
"""

from __future__ import annotations

from typing import Any

import torch

from torchopt_accel import _C  # noqa: F401  (registers the ops)
from torchopt_accel._ops import adam_apply_, adam_forward, adam_step_, sgd_update_

__all__ = ['adam_apply_', 'adam_forward', 'adam_step_', 'build_info', 'is_available', 'sgd_update_']


def is_available(device: torch.device) -> bool:
    """Whether the fused kernels run on ``device``.

    ``cpu`` always (the CPU kernels are always built); ``meta`` always (fake kernels);
    ``cuda`` when this build has CUDA kernels and the device exists. Other devices: ``False``.
    """
    device = torch.device(device)
    if device.type in ('cpu', 'meta'):
        return True
    if device.type == 'cuda':
        if not _C.build_info()['cuda'] or not torch.cuda.is_available():
            return False
        return device.index is None or device.index < torch.cuda.device_count()
    return False


def build_info() -> dict[str, Any]:
    """How the extension was built, and whether it matches the running torch.

    Keys: ``torch_version`` (built against), ``torch_runtime`` and ``torch_match``, ``cuda``
    (CUDA kernels compiled), ``cuda_version``, ``cuda_archs``, ``cuda_device_available``,
    ``openmp``, ``num_threads``, ``parallel_backend``, ``cpu_capabilities_compiled``,
    ``cpu_capability`` (the CPU kernel variant in use), ``compiler`` and ``ops``.
    """
    info = dict(_C.build_info())
    runtime = torch.__version__.split('+')[0]
    info['torch_runtime'] = torch.__version__
    info['torch_match'] = runtime.split('.')[:2] == str(info['torch_version']).split('.')[:2]
    info['cuda_device_available'] = bool(info['cuda']) and torch.cuda.is_available()
    info['devices'] = [d for d in ('cpu', 'cuda', 'meta') if is_available(torch.device(d))]
    return info
