r"""Binomial checkpointing schedules (Griewank & Walther's *revolve*) for :mod:`torchopt.unroll`.

The problem: reverse a chain of ``n`` steps, ``x_{j+1} = f(x_j)``, visiting ``j = n-1, ..., 0``
in that order with ``x_j`` at hand each time, while holding at most ``c`` states ("slots", one of
which holds ``x_0``). Recomputing ``x_j`` from a stored ``x_s`` costs ``j - s`` *advances*.

With ``T(n, c)`` the least total number of advances, splitting at ``m`` (advance ``m`` steps,
store ``x_m``, reverse the right part with one slot less, free it, reverse the left part with
all slots) gives the recursion

.. math::

    T(1, c) = 0, \qquad T(n, 1) = \frac{n (n - 1)}{2}, \qquad
    T(n, c) = \min_{1 \le m < n} \bigl[ m + T(n - m, c - 1) + T(m, c) \bigr],

whose solution is binomial (Griewank, *Achieving logarithmic growth of temporal and spatial
complexity in reverse automatic differentiation*, 1992; Griewank & Walther, ACM TOMS 26, 2000):
with :math:`\beta(c, r) = \binom{c + r}{c}` and ``r`` the least repetition number such that
:math:`\beta(c, r) \ge n`,

.. math::

    T(n, c) = r\, n - \beta(c + 1, r - 1).

The bracket is convex in ``m`` (a sum of convex piecewise-linear functions), so the optimal split
is found by bisection on its forward difference. The tests check the closed form and the
schedule against the recursion solved by brute force.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Generator
from typing import TypeVar

__all__ = ['backward_advances', 'min_advances', 'reverse', 'rightmost_path', 'split']

S = TypeVar('S')


def _beta(c: int, r: int) -> int:
    r""":math:`\beta(c, r) = \binom{c + r}{c}`, zero for ``r < 0``."""
    return 0 if r < 0 else math.comb(c + r, c)


@functools.lru_cache(maxsize=65536)
def min_advances(n: int, c: int) -> int:
    """Least number of advances that reverse ``n`` steps with ``c`` slots (closed form)."""
    if n <= 1:
        return 0
    if c == 1:
        return n * (n - 1) // 2
    r = 0
    while _beta(c, r) < n:
        r += 1
    return r * n - _beta(c + 1, r - 1)


@functools.lru_cache(maxsize=65536)
def split(n: int, c: int) -> int:
    """The smallest optimal split ``m`` of ``n >= 2`` steps with ``c >= 2`` slots."""

    def cost(m: int) -> int:
        return m + min_advances(n - m, c - 1) + min_advances(m, c)

    lo, hi = 1, n - 1  # smallest m in [lo, hi] with cost(m + 1) >= cost(m), or hi
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(mid + 1) >= cost(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def rightmost_path(n: int, c: int) -> list[int]:
    """The positions stored by the first sweep: ``0`` and the successive right-part starts."""
    positions = [0]
    start, length = 0, n
    while length > 1 and c > 1:
        m = split(length, c)
        start, length, c = start + m, length - m, c - 1
        positions.append(start)
    return positions


def backward_advances(n: int, c: int) -> int:
    """Advances left for the reverse sweep once the first sweep stored :func:`rightmost_path`."""
    return min_advances(n, c) - rightmost_path(n, c)[-1]


def reverse(
    n: int,
    c: int,
    first: S,
    stored: dict[int, S],
    advance: Callable[[S, int, int], S],
) -> Generator[tuple[int, S], None, None]:
    """Yield ``(j, x_j)`` for ``j = n - 1, ..., 0`` holding at most ``c`` states.

    Args:
        n: the number of steps.
        c: the number of slots (``>= 1``), the one holding ``x_0`` included.
        first: ``x_0``.
        stored: states the first sweep already stored, ``{position: state}``; positions not on
            the schedule's path are ignored. Entries are removed as they are used.
        advance: ``advance(x_s, s, k)`` returns ``x_{s + k}``.

    """
    stack: list[tuple[int, int, int, S]] = [(0, n, c, first)]
    del first
    while stack:
        start, length, slots, state = stack.pop()
        if length == 1:
            yield start, state
        elif slots == 1:
            for j in range(start + length - 1, start, -1):
                yield j, advance(state, start, j - start)
            yield start, state
        else:
            m = split(length, slots)
            mid = stored.pop(start + m, None)
            if mid is None:
                mid = advance(state, start, m)
            stack.append((start, m, slots, state))
            stack.append((start + m, length - m, slots - 1, mid))
            del mid
        del state
