"""The accelerated (fused) Adam op: a facade over the ``torchopt-accel`` plugin.

With ``torchopt-accel`` installed, ``use_accelerated_op=True`` runs its fused kernels (PyTorch
custom ops). Without it, :func:`is_available` is ``False`` and ``use_accelerated_op=True`` runs
core's own Adam after a one-time warning that names the missing package: never silently.

Plugin contract (module ``torchopt_accel``)::

    is_available(device: torch.device) -> bool
    adam_step_(updates, mu, nu, b1, b2, eps, eps_root, count) -> None       # lists, in place
    adam_forward(updates, mu, nu, b1, b2, eps, eps_root, count) -> (updates, mu, nu)  # autograd
    adam_apply_(params, grads, mu, nu, lr, b1, b2, eps, eps_root, count, weight_decay=0.0,
                decoupled=False, maximize=False) -> None   # optional: one full in-place step
    build_info() -> dict
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from torchopt import plugins

__all__ = ['is_available', 'kernels', 'AdamOp']

_warned: set[str] = set()
# Frames from files under these directories are library internals: torchopt's, torch's
# (torch.optim.Optimizer wraps the torch-like optimizers' step in its hooks) and importlib's
# (a plugin loaded by ``torchopt.visual`` comes through importlib.import_module).
_INTERNAL_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (os.path.dirname(os.path.abspath(__file__)), torch.__file__, importlib.__file__)
)


def _is_import_machinery(filename: str) -> bool:
    # The frames that warnings.warn itself skips when it counts a stacklevel.
    return 'importlib' in filename and '_bootstrap' in filename


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes its caller's ``warnings.warn`` name the user's line.

    Walks out from the function that calls ``warnings.warn`` to the first frame whose file is
    outside the torchopt package directory (and torch's and importlib's, whose frames can sit
    between torchopt and the user), counting frames the way :func:`warnings.warn` does (it
    skips the import machinery's frames). The warning then points at the user's call wherever
    it came from (an optimizer's ``step``, a transformation's ``update``, ``AdamOp``, a plugin
    loaded by attribute access or import), however deep in torchopt it is raised.
    """
    caller = sys._getframe(1)  # the function that calls warnings.warn: stacklevel 1
    frame, level = caller.f_back, 1
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _is_import_machinery(filename):
            level += 1
            if not os.path.abspath(filename).startswith(_INTERNAL_DIRS):
                break
        frame = frame.f_back
    return level


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=_user_stacklevel())


def _plugin() -> Any | None:
    try:
        return plugins.load('accel')
    except plugins.PluginNotInstalledError:
        return None


def kernels(devices: Iterable[torch.device] = (), *, subclass: type | None = None) -> Any | None:
    """The ``torchopt_accel`` module if it can run on ``devices``, else ``None`` (warns once).

    Under ``torch.compile`` the plugin is loaded and checked eagerly while tracing (the loader
    takes a lock, which dynamo cannot trace) and the graph calls its custom ops. ``subclass``
    is a tensor subclass the step holds (FSDP2's ``DTensor``): the kernels take plain tensors,
    so this warns once and gives ``None``.
    """
    if subclass is not None:
        _warn_once(
            f'subclass:{subclass.__qualname__}',
            f'torchopt-accel kernels take plain tensors, not {subclass.__name__}; running '
            "torchopt-core's Adam on them instead",
        )
        return None
    if torch.compiler.is_compiling():
        if not _usable(tuple(sorted({str(d) for d in devices}))):
            return None
        return plugins.loaded('accel')
    return _kernels(devices)


def _kernels(devices: Iterable[torch.device]) -> Any | None:
    module = _plugin()
    if module is None:
        _warn_once(
            'missing',
            'use_accelerated_op=True but the torchopt-accel plugin is not available '
            f"({_reason()}); running torchopt-core's Adam instead. Install the kernels with: "
            'pip install "torchopt-core[accel]"',
        )
        return None
    for device in devices:
        if not module.is_available(device):
            _warn_once(
                f'device:{device.type}',
                f'torchopt-accel has no kernels for device {device.type!r} in this build; '
                "running torchopt-core's Adam there instead",
            )
            return None
    return module


@torch.compiler.assume_constant_result
def _usable(devices: tuple[str, ...]) -> bool:
    """Whether :func:`kernels` finds kernels for ``devices`` (run eagerly by dynamo)."""
    return _kernels([torch.device(d) for d in devices]) is not None


def _reason() -> str:
    for row in plugins.plugins():
        if row.name == 'accel':
            return row.status if row.error is None else f'{row.status}: {row.error}'
    return 'missing'


def _normalize(devices: Any) -> list[torch.device]:
    if devices is None:
        return [torch.device('cuda'), torch.device('cpu')]
    if isinstance(devices, (torch.device, str, int)):
        devices = [devices]
    out = []
    for d in devices:
        if isinstance(d, int):
            d = torch.device('cuda', d)
        out.append(torch.device(d))
    return out


def is_available(devices: Any = None) -> bool:
    """Whether the fused kernels run on every device in ``devices``.

    ``devices`` may be ``None`` (meaning CUDA and CPU, as upstream), a ``torch.device``, a
    string, an int (a CUDA ordinal) or an iterable of those. Never raises: a CUDA device on a
    machine without CUDA, or an unparsable device, gives ``False``.
    """
    try:
        devs = _normalize(devices)
    except (RuntimeError, TypeError, ValueError):
        return False
    module = _plugin()
    if module is None:
        return False
    for device in devs:
        if device.type == 'cuda':
            if not torch.cuda.is_available():
                return False
            if device.index is not None and device.index >= torch.cuda.device_count():
                return False
        try:
            if not module.is_available(device):
                return False
        except Exception:  # noqa: BLE001 - availability probes must not raise
            return False
    return True


from torchopt.accelerated_op.adam_op import AdamOp  # noqa: E402
