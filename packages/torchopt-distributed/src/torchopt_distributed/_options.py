"""Checks of the options of :func:`~.world.auto_init_rpc` and :func:`~.collective.init_process_group`.

Each option may come from an argument or an environment variable; both are checked, and an error
names whichever was used and what was expected.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

__all__ = ['check_seconds', 'resolve_flag', 'resolve_seconds']


def check_seconds(value: Any, name: str) -> float:
    """Return ``value`` as a float number of seconds; it must be a finite real number > 0.

    Raises:
        TypeError: ``value`` is a bool, a string or not a real number (``name`` is named).
        ValueError: ``value`` is not finite or not positive.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f'{name} must be a number of seconds (int or float), got {type(value).__name__} '
            f'{value!r}'
        )
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f'{name} must be a positive, finite number of seconds, got {value!r}')
    return seconds


def resolve_seconds(value: Any, name: str, env: str, default: float) -> float:
    """The argument ``value`` if given, else the environment variable ``env``, else ``default``.

    Both the argument and the variable are checked with :func:`check_seconds`; an error names
    whichever was used.
    """
    if value is not None:
        return check_seconds(value, name)
    raw = os.environ.get(env, '').strip()
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(
            f'environment variable {env} must be a number of seconds, got {raw!r}'
        ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(
            f'environment variable {env} must be a positive, finite number of seconds, got {raw!r}'
        )
    return seconds


def resolve_flag(value: Any, name: str, env: str) -> bool:
    """The bool ``value`` if given, else the environment variable ``env`` (0/1), else False.

    Raises:
        TypeError: ``value`` is neither ``None`` nor a bool (``'maybe'``, ``1``, ...).
        ValueError: the variable is set to something other than 0/1/true/false/yes/no/on/off.
    """
    if value is not None:
        if not isinstance(value, bool):
            raise TypeError(f'{name} must be True, False or None, got {value!r}')
        return value
    raw = os.environ.get(env, '').strip().lower()
    if raw in ('', '0', 'false', 'no', 'off'):
        return False
    if raw in ('1', 'true', 'yes', 'on'):
        return True
    raise ValueError(f'environment variable {env} must be 0 or 1, got {raw!r}')
