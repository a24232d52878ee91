"""Sharding a meta-batch of tasks by rank (part of :mod:`torchopt_distributed.collective`).

Every rank takes a contiguous share; the shares cover the batch once and differ in size by at
most one (the first ``num_tasks % world_size`` ranks take one more).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from torchopt_distributed import world

__all__ = ['shard_bounds', 'shard_tasks']

T = TypeVar('T')


def _check_index(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int, got {value!r}')
    return value


def _rank_and_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            default_rank, default_size = dist.get_rank(), dist.get_world_size()
        else:
            info = world.get_world_info()
            default_rank, default_size = info.world_rank, info.world_size
        rank = default_rank if rank is None else rank
        world_size = default_size if world_size is None else world_size
    rank, world_size = _check_index(rank, 'rank'), _check_index(world_size, 'world_size')
    if world_size < 1:
        raise ValueError(f'world_size must be >= 1, got {world_size}')
    if not 0 <= rank < world_size:
        raise ValueError(f'rank must be in [0, world_size={world_size}), got {rank}')
    return rank, world_size


def shard_bounds(
    num_tasks: int, rank: int | None = None, world_size: int | None = None
) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous share of ``num_tasks`` tasks.

    Shares differ by at most one task, the first ``num_tasks % world_size`` ranks taking one
    more; ranks beyond ``num_tasks`` get an empty share. The result depends only on the three
    numbers, so every rank computes every share alike. ``rank`` / ``world_size`` default to the
    default process group's, else to ``RANK`` / ``WORLD_SIZE``.
    """
    num_tasks = _check_index(num_tasks, 'num_tasks')
    if num_tasks < 0:
        raise ValueError(f'num_tasks must be >= 0, got {num_tasks}')
    rank, world_size = _rank_and_size(rank, world_size)
    base, extra = divmod(num_tasks, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _length(value: Any, name: str) -> int:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            raise ValueError(f'{name}: cannot shard a 0-d tensor along dimension 0')
        return value.shape[0]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f'{name} must be an int, a tensor, a sequence of tasks, or a NamedTuple/mapping of '
            f'those, got {type(value).__name__}'
        )
    return len(value)


def shard_tasks(tasks_or_n: T, rank: int | None = None, world_size: int | None = None) -> T:
    """This rank's share of a meta-batch of tasks (contiguous, sizes as in :func:`shard_bounds`).

    Args:
        tasks_or_n: The number of tasks (returns a ``range`` of task indices); a tensor whose
            dimension 0 indexes the tasks (returns a view); a list/tuple of tasks (returns a
            slice); or a NamedTuple or mapping of tensors/sequences of equal length, e.g. a batch
            ``(x_support, y_support, x_query, y_query)`` (returns the same type, every field
            sliced alike).
        rank: This process's rank. Default: the default process group's, else ``RANK``.
        world_size: Number of processes. Default: the default process group's, else
            ``WORLD_SIZE``.

    Returns:
        The share, of the type described above (possibly empty when there are fewer tasks than
        ranks).
    """
    if isinstance(tasks_or_n, int) and not isinstance(tasks_or_n, bool):
        return range(*shard_bounds(tasks_or_n, rank, world_size))  # type: ignore[return-value]
    if isinstance(tasks_or_n, Mapping):
        lengths = {key: _length(value, f'tasks_or_n[{key!r}]') for key, value in tasks_or_n.items()}
        start, stop = shard_bounds(_common_length(lengths), rank, world_size)
        return type(
            tasks_or_n
        )(  # type: ignore[call-arg]
            {key: value[start:stop] for key, value in tasks_or_n.items()}
        )
    if isinstance(tasks_or_n, tuple) and hasattr(tasks_or_n, '_fields'):
        lengths = {
            field: _length(value, f'tasks_or_n.{field}')
            for field, value in zip(tasks_or_n._fields, tasks_or_n)
        }
        start, stop = shard_bounds(_common_length(lengths), rank, world_size)
        return type(tasks_or_n)(*(value[start:stop] for value in tasks_or_n))
    start, stop = shard_bounds(_length(tasks_or_n, 'tasks_or_n'), rank, world_size)
    return tasks_or_n[start:stop]  # type: ignore[index]


def _common_length(lengths: dict[Any, int]) -> int:
    if not lengths:
        raise ValueError('tasks_or_n has no fields to shard')
    if len(set(lengths.values())) != 1:
        raise ValueError(f'the fields of tasks_or_n must have the same length, got {lengths}')
    return next(iter(lengths.values()))


# ----------------------------------------------------------------------------------------------
# Averaging meta-gradients
# ----------------------------------------------------------------------------------------------
