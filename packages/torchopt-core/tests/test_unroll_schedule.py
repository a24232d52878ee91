"""The binomial checkpointing schedule behind ``torchopt.unroll(checkpoints=c)``.

The closed form of the least number of recomputed steps is checked against the recursion solved
by brute force, and the schedule itself (on counting dummy states) for order, cost and the number
of states alive at once.
"""

from __future__ import annotations

import functools
import math

import pytest

from torchopt import _revolve


@functools.cache
def _brute(n: int, c: int) -> int:
    """T(n, c) by exhaustive search over the first split (the recursion itself)."""
    if n <= 1:
        return 0
    if c == 1:
        return n * (n - 1) // 2
    return min(m + _brute(n - m, c - 1) + _brute(m, c) for m in range(1, n))


@pytest.mark.parametrize('c', range(1, 8))
def test_closed_form_equals_the_recursion(c):
    for n in range(1, 90):
        assert _revolve.min_advances(n, c) == _brute(n, c), (n, c)


@pytest.mark.parametrize('c', range(2, 7))
def test_split_is_optimal(c):
    for n in range(2, 70):
        m = _revolve.split(n, c)
        assert 1 <= m < n
        assert m + _revolve.min_advances(n - m, c - 1) + _revolve.min_advances(m, c) == _brute(n, c)


class _Counted:
    """A dummy state that knows how many of its kind are alive."""

    alive = 0
    peak = 0

    def __init__(self, position: int) -> None:
        self.position = position
        _Counted.alive += 1
        _Counted.peak = max(_Counted.peak, _Counted.alive)

    def __del__(self) -> None:
        _Counted.alive -= 1


def _simulate(n: int, c: int) -> tuple[list[int], int, int]:
    """Run the first sweep and the reverse schedule; (order, advances, peak states kept)."""
    advances = [0]

    def advance(state: _Counted, s: int, k: int) -> _Counted:
        assert state.position == s
        advances[0] += k
        return _Counted(s + k)

    path = _revolve.rightmost_path(n, c)
    _Counted.alive = _Counted.peak = 0
    first = _Counted(0)
    stored = {p: _Counted(p) for p in path[1:]}  # what the forward sweep keeps
    order = []
    schedule = _revolve.reverse(n, c, first, stored, advance)
    del first, stored
    for j, state in schedule:
        assert state.position == j
        order.append(j)
        del state
    # The consumer holds the state it was given while it asks for the next one: c + 1 at most
    # (c kept carries and the one being differentiated) -- see the engine's accounting.
    return order, advances[0], _Counted.peak


@pytest.mark.parametrize(
    ('n', 'c'),
    [(1, 1), (7, 1), (10, 3), (50, 5), (50, 8), (100, 10), (64, 64), (200, 6), (1000, 16)],
)
def test_schedule_order_cost_and_memory(n, c):
    order, advances, peak = _simulate(n, c)
    assert order == list(range(n - 1, -1, -1))
    assert advances == _revolve.backward_advances(n, c)
    assert advances + _revolve.rightmost_path(n, c)[-1] == _revolve.min_advances(n, c)
    assert peak <= c + 1


def test_path_uses_all_slots_and_stays_in_range():
    for n, c in [(100, 10), (1000, 16), (5, 9)]:
        path = _revolve.rightmost_path(n, c)
        assert path[0] == 0 and path == sorted(set(path)) and path[-1] < n
        assert len(path) == min(c, n)


def test_costs_quoted_in_the_docs():
    assert _revolve.backward_advances(100, 10) == 126  # checkpoints='sqrt' at K = 100
    assert _revolve.backward_advances(1000, 16) == 1865
    assert _revolve.backward_advances(50, 50) == 0  # a slot per step: no advance at all
    r = 3  # beta(10, 2) = 66 < 100 <= beta(10, 3) = 286
    assert _revolve.min_advances(100, 10) == r * 100 - math.comb(11 + r - 1, 11)
