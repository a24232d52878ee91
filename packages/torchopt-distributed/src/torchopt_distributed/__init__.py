"""Distributed meta-learning for torchopt (served as ``torchopt.distributed``).

Two ways to spread a meta-batch of tasks over the processes of a ``torchrun`` world:

* **Collectives** (:mod:`torchopt_distributed.collective`, any backend: gloo, NCCL): every rank
  takes its share of the tasks (:func:`shard_tasks`), runs their inner loops locally, and the
  meta-gradients are averaged in bucketed all-reduces (:func:`average_meta_gradients`), also for
  a model wrapped in ``DistributedDataParallel`` (run the inner loop on :func:`unwrap_model`).
* **RPC** (TorchOpt's API, over :mod:`torch.distributed.rpc`): decorate the entry point with
  :func:`auto_init_rpc`, and spread work with :func:`parallelize` / :func:`remote_async_call`;
  gradients flow back through :mod:`torchopt_distributed.autograd`.

RPC example::

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

from torchopt_distributed import api, autograd, collective, world
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
from torchopt_distributed.collective import (
    all_reduce_gradients,
    average_meta_gradients,
    destroy_process_group,
    init_process_group,
    shard_bounds,
    shard_tasks,
    unwrap_model,
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
    # beyond TorchOpt 0.7: the collective task-parallel path
    'init_process_group',
    'destroy_process_group',
    'shard_bounds',
    'shard_tasks',
    'unwrap_model',
    'all_reduce_gradients',
    'average_meta_gradients',
]


def is_available() -> bool:
    """Whether ``torch.distributed``, its RPC framework and distributed autograd are available."""
    return bool(dist.is_available() and rpc.is_available() and autograd.is_available())
