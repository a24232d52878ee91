"""Distributed meta-learning over :mod:`torch.distributed.rpc` (served as ``torchopt.distributed``).

Start a world with ``torchrun``, decorate the entry point with :func:`auto_init_rpc`, and spread
work with :func:`parallelize` / :func:`remote_async_call`; gradients flow back through
:mod:`torchopt_distributed.autograd`.

Example::

    import torchopt.distributed as todist

    @todist.parallelize(partitioner=todist.batch_partitioner, reducer=todist.sum_reducer)
    def task_losses(params, tasks):  # runs on every worker with its share of the tasks
        ...

    @todist.rank_zero_only
    def train():
        with todist.autograd.context() as context_id:
            loss = task_losses(params, tasks)
            todist.autograd.backward(context_id, loss)

    if __name__ == '__main__':
        todist.auto_init_rpc()(train)()
"""

from __future__ import annotations

import torch.distributed as dist
import torch.distributed.rpc as rpc

from torchopt_distributed import api, autograd, world
from torchopt_distributed.api import (
    TensorDimensionPartitioner,
    batch_partitioner,
    dim_partitioner,
    mean_reducer,
    parallelize,
    parallelize_async,
    parallelize_sync,
    remote_async_call,
    remote_sync_call,
    sum_reducer,
)
from torchopt_distributed.world import (
    auto_init_rpc,
    barrier,
    get_local_rank,
    get_local_world_size,
    get_rank,
    get_worker_id,
    get_world_info,
    get_world_rank,
    get_world_size,
    not_on_rank,
    on_rank,
    rank_non_zero_only,
    rank_zero_only,
)

__all__ = [
    'is_available',
    'TensorDimensionPartitioner',
    'batch_partitioner',
    'dim_partitioner',
    'mean_reducer',
    'parallelize',
    'parallelize_async',
    'parallelize_sync',
    'remote_async_call',
    'remote_sync_call',
    'sum_reducer',
    'auto_init_rpc',
    'barrier',
    'get_local_rank',
    'get_local_world_size',
    'get_rank',
    'get_worker_id',
    'get_world_info',
    'get_world_rank',
    'get_world_size',
    'not_on_rank',
    'on_rank',
    'rank_non_zero_only',
    'rank_zero_only',
]


def is_available() -> bool:
    """Whether ``torch.distributed``, its RPC framework and distributed autograd are available."""
    return bool(dist.is_available() and rpc.is_available() and autograd.is_available())
