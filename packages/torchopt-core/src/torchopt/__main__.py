"""``python -m torchopt``: versions, plugins, accelerated-op availability and install conflicts."""

from __future__ import annotations

import platform
import sys


def report() -> str:
    """Return the report printed by ``python -m torchopt``."""
    import optree
    import torch

    import torchopt
    from torchopt import _conflict, plugins

    lines = [
        f'torchopt-core {torchopt.__version__}',
        f'python {platform.python_version()} ({sys.executable})',
        f'torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}, '
        f'threads: {torch.get_num_threads()})',
        f'optree {optree.__version__}',
    ]
    accel_lines = ['accelerated op:']
    for device in ('cpu', 'cuda', 'meta'):
        accel_lines.append(f'  {device:<5} {torchopt.accelerated_op_available(device)}')
    try:
        accel = plugins.load('accel')
    except plugins.PluginNotInstalledError as ex:
        accel_lines.append(f'  kernels not loaded: {ex}')
    else:
        info = accel.build_info()
        accel_lines.extend(f'  {key}: {info[key]}' for key in sorted(info))
    lines.append('plugins:')
    for row in plugins.plugins():  # after the accel probe, so its status reads 'loaded'
        version = row.version or '-'
        line = f'  {row.name:<12} {row.distribution or "-":<22} {version:<8} {row.status}'
        if row.error:
            line += f' ({row.error})'
        lines.append(line)
    disable_problem = plugins._disable_problem()
    if disable_problem is not None:
        lines.append(f'  WARNING: {disable_problem}')
    conflict = _conflict.conflict_message()
    if conflict is not None:  # right under the version line, where a bug report starts
        lines.insert(1, f'WARNING: {conflict}')
    return '\n'.join(lines + accel_lines)


if __name__ == '__main__':
    print(report())
