"""The package surface: upstream names, served paths, lazy loading by core."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import torchopt_distributed

UPSTREAM_ALL = [
    'is_available', 'TensorDimensionPartitioner', 'batch_partitioner', 'dim_partitioner',
    'mean_reducer', 'parallelize', 'parallelize_async', 'parallelize_sync', 'remote_async_call',
    'remote_sync_call', 'sum_reducer', 'auto_init_rpc', 'barrier', 'get_local_rank',
    'get_local_world_size', 'get_rank', 'get_worker_id', 'get_world_info', 'get_world_rank',
    'get_world_size', 'not_on_rank', 'on_rank', 'rank_non_zero_only', 'rank_zero_only',
]  # fmt: skip


#: Beyond TorchOpt 0.7: the collective task-parallel path (torchopt_distributed.collective).
COLLECTIVE_ALL = [
    'init_process_group', 'destroy_process_group', 'shard_bounds', 'shard_tasks', 'unwrap_model',
    'all_reduce_gradients', 'average_meta_gradients',
]  # fmt: skip


def test_all_is_upstream_plus_the_collective_path():
    assert sorted(torchopt_distributed.__all__) == sorted(UPSTREAM_ALL + COLLECTIVE_ALL)
    for name in COLLECTIVE_ALL:
        assert getattr(torchopt_distributed, name) is getattr(torchopt_distributed.collective, name)
    import torchopt.distributed as todist

    assert todist.shard_tasks is torchopt_distributed.collective.shard_tasks
    for name in UPSTREAM_ALL:
        assert callable(getattr(torchopt_distributed, name)), name


def test_served_as_torchopt_distributed():
    import torchopt.distributed as todist
    import torchopt.distributed.api
    import torchopt.distributed.autograd
    import torchopt.distributed.world

    assert todist is torchopt_distributed
    assert torchopt.distributed is torchopt_distributed
    assert torchopt.distributed.api is torchopt_distributed.api
    assert torchopt.distributed.world is torchopt_distributed.world
    assert torchopt.distributed.autograd is torchopt_distributed.autograd
    assert todist.dist is torch.distributed
    assert todist.rpc is torch.distributed.rpc
    assert todist.rpc.RRef is torch.distributed.rpc.RRef


def test_is_available_matches_torch():
    expected = (
        torch.distributed.is_available()
        and torch.distributed.rpc.is_available()
        and torch.distributed.autograd.is_available()
    )
    assert torchopt_distributed.is_available() is expected
    assert torchopt_distributed.autograd.is_available() is torch.distributed.autograd.is_available()


@pytest.mark.parametrize(
    'module',
    ['api', 'autograd', 'world', 'collective'],
    ids=['api', 'autograd', 'world', 'collective'],
)
def test_submodules_have_all(module):
    mod = getattr(torchopt_distributed, module)
    assert mod.__all__
    for name in mod.__all__:
        assert hasattr(mod, name), (module, name)


def test_autograd_all_matches_upstream():
    assert sorted(torchopt_distributed.autograd.__all__) == sorted(
        ['context', 'is_available', 'DistAutogradContext', 'backward', 'get_gradients', 'grad']
    )
    assert torchopt_distributed.autograd.context is torch.distributed.autograd.context


@pytest.mark.timeout(60)
def test_import_torchopt_does_not_load_plugin():
    code = (
        'import sys, torchopt\n'
        'assert "torchopt_distributed" not in sys.modules\n'
        'import torchopt.distributed as d\n'
        'assert "torchopt_distributed" in sys.modules and d.__name__ == "torchopt_distributed"\n'
    )
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
