"""glibc malloc settings for RPC worker processes (used by :func:`~.world.auto_init_rpc`).

An RPC worker repeats the same request every iteration: it allocates the tensors of a share,
frees them, and allocates them again. Two glibc defaults make it pay page faults for that:

* every thread of the RPC pool gets its own *arena*, and a request lands on whichever thread is
  free, often on an arena whose memory was returned to the OS since it was last used
  (:func:`limit_malloc_arenas`);
* freed memory at the top of the heap beyond ``M_TRIM_THRESHOLD`` (128 KiB by default, raised
  to twice the largest mapped block freed so far, at most 64 MiB) goes back to the OS, and blocks
  above ``M_MMAP_THRESHOLD`` are unmapped on free, so the next iteration touches fresh pages
  again (:func:`retain_freed_memory`).

Each setting is skipped when its ``MALLOC_*`` environment variable is set (the user's choice wins),
off Linux, and when the C library has no ``mallopt``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable

__all__ = ['limit_malloc_arenas', 'retain_freed_memory', 'check_positive']

# glibc's mallopt() parameter numbers (<malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Blocks below this size come from the heap (glibc's largest allowed mmap threshold on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Extra memory asked from the OS each time the heap grows.
TOP_PAD = 64 << 20


def check_positive(value: int | None, name: str) -> int | None:
    """Return ``value`` when it is ``None`` or a positive int, else raise ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive int or None, got {value!r}')
    return value


def _mallopt() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith('linux'):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def limit_malloc_arenas(max_arenas: int) -> bool:
    """Cap the number of glibc malloc arenas (``mallopt(M_ARENA_MAX, max_arenas)``).

    Threads created afterwards share the existing arenas instead of each getting a new one.
    Does nothing (and returns ``False``) when the ``MALLOC_ARENA_MAX`` environment variable is
    set (the user's choice wins), off Linux, or when the C library has no ``mallopt``.

    Returns:
        Whether the cap was applied.
    """
    max_arenas = check_positive(max_arenas, 'malloc_arena_max')  # type: ignore[assignment]
    if max_arenas is None or os.environ.get('MALLOC_ARENA_MAX'):
        return False
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, max_arenas))


def retain_freed_memory(trim_threshold: int) -> bool:
    """Keep up to ``trim_threshold`` bytes of freed heap memory for reuse instead of returning it.

    Sets ``mallopt(M_TRIM_THRESHOLD, trim_threshold)``; unless their environment variables are
    set, also ``M_MMAP_THRESHOLD`` to 32 MiB (blocks below it come from the heap, so freeing them
    does not unmap them; this also turns off glibc's moving threshold) and ``M_TOP_PAD`` to
    64 MiB (address space reserved ahead when the heap grows; untouched pages cost no memory).
    The process's resident memory then stays near its peak instead of shrinking between
    iterations.

    Does nothing (and returns ``False``) when ``MALLOC_TRIM_THRESHOLD_`` is set in the environment,
    off Linux, or when the C library has no ``mallopt``.

    Returns:
        Whether the trim threshold was applied.
    """
    trim_threshold = check_positive(  # type: ignore[assignment]
        trim_threshold, 'malloc_trim_threshold'
    )
    if trim_threshold is None or os.environ.get('MALLOC_TRIM_THRESHOLD_'):
        return False
    mallopt = _mallopt()
    if mallopt is None or not mallopt(_M_TRIM_THRESHOLD, trim_threshold):
        return False
    if not os.environ.get('MALLOC_MMAP_THRESHOLD_'):
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    if not os.environ.get('MALLOC_TOP_PAD_'):
        mallopt(_M_TOP_PAD, TOP_PAD)
    return True
