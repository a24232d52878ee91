"""Detect the original ``torchopt`` distribution installed beside ``torchopt-core``.

Both distributions install the import package ``torchopt``. pip does not know that they
overlap, so installing one over the other silently mixes their files (and uninstalling one
removes files the other needs). ``import torchopt`` calls :func:`warn_if_conflicting` once;
``python -m torchopt`` prints :func:`conflict_message`.

The check looks up one distribution name with :mod:`importlib.metadata` (a directory listing
per ``sys.path`` entry, cached by the import system), never the list of all distributions.
"""

from __future__ import annotations

import warnings

__all__ = ['CORE_DISTRIBUTION', 'UPSTREAM_DISTRIBUTION', 'conflict_message', 'warn_if_conflicting']

#: The distribution that provides this package.
CORE_DISTRIBUTION = 'torchopt-core'
#: The original TorchOpt distribution on PyPI, which installs the same import package.
UPSTREAM_DISTRIBUTION = 'torchopt'

_warned = False


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def conflict_message() -> str | None:
    """Describe the conflict if both distributions are installed, else return ``None``.

    Returns:
        A message naming both distributions, their versions and the fix, or ``None`` when the
        ``torchopt`` distribution is absent (or ``torchopt-core`` is not installed, e.g. when
        the sources are used from a checkout).
    """
    upstream = _version(UPSTREAM_DISTRIBUTION)  # the common case stops after this lookup
    if upstream is None:
        return None
    core = _version(CORE_DISTRIBUTION)
    if core is None:
        return None
    return (
        f'Both the {UPSTREAM_DISTRIBUTION!r} distribution ({upstream}) and '
        f'{CORE_DISTRIBUTION!r} ({core}) are installed. They install the same import package '
        "'torchopt', so their files are mixed and `import torchopt` may run either. Fix: "
        f'`pip uninstall {UPSTREAM_DISTRIBUTION}` then '
        f'`pip install --force-reinstall {CORE_DISTRIBUTION}`.'
    )


def warn_if_conflicting() -> None:
    """Warn (:class:`UserWarning`, once per process) if both distributions are installed."""
    global _warned
    if _warned:
        return
    _warned = True
    message = conflict_message()
    if message is not None:
        # stacklevel 3: this function, torchopt/__init__.py, then the code importing torchopt
        # (the import machinery's frames are skipped by the warnings module).
        warnings.warn(message, UserWarning, stacklevel=3)
