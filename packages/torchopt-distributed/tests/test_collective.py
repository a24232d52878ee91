"""The collective task-parallel path: sharding, option checks, and real gloo worlds on 127.0.0.1.

Every multi-process test launches its ranks with a hard deadline (killed, whole process group,
when it passes) and has its own pytest timeout on top.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from _todist_launch import launch
from torch import nn

import torchopt_distributed as todist
from torchopt_distributed import collective, world

# ----------------------------------------------------------------------------------------------
# Sharding
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('world_size', [1, 2, 3, 4, 7])
@pytest.mark.parametrize('num_tasks', [0, 1, 2, 5, 7, 16, 17])
def test_shard_bounds_cover_the_batch_contiguously(num_tasks, world_size):
    bounds = [todist.shard_bounds(num_tasks, r, world_size) for r in range(world_size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == num_tasks
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in rank order
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert sum(sizes) == num_tasks


def test_shard_tasks_by_type():
    assert todist.shard_tasks(7, 1, 3) == range(3, 5)
    assert todist.shard_tasks(2, 2, 3) == range(2, 2)  # more ranks than tasks: empty share
    x = torch.arange(10.0).reshape(5, 2)
    share = todist.shard_tasks(x, 0, 2)
    assert torch.equal(share, x[:3]) and share.data_ptr() == x.data_ptr()  # a view
    assert todist.shard_tasks(['a', 'b', 'c'], 2, 3) == ['c']
    assert todist.shard_tasks(('a', 'b', 'c'), 1, 2) == ('c',)

    from typing import NamedTuple

    class Batch(NamedTuple):
        x: torch.Tensor
        y: list

    batch = todist.shard_tasks(Batch(x, [0, 1, 2, 3, 4]), 1, 2)
    assert isinstance(batch, Batch) and torch.equal(batch.x, x[3:]) and batch.y == [3, 4]
    mapped = todist.shard_tasks({'x': x, 'i': list(range(5))}, 1, 3)
    assert torch.equal(mapped['x'], x[2:4]) and mapped['i'] == [2, 3]


def test_shard_tasks_defaults_to_this_process(monkeypatch):
    monkeypatch.setattr(world, '_WORLD_INFO', world.WorldInfo(1, 3, 1, 3))
    assert todist.shard_tasks(7) == range(3, 5)
    assert todist.shard_tasks(7, rank=0) == range(0, 3)


@pytest.mark.parametrize(
    ('args', 'error', 'message'),
    [((True,), TypeError, 'tasks_or_n'),
     (('abc',), TypeError, 'tasks_or_n'),
     ((3.0,), TypeError, 'tasks_or_n'),
     ((torch.tensor(1.0), 0, 1), ValueError, '0-d tensor'),
     ((-1, 0, 1), ValueError, 'num_tasks must be >= 0'),
     ((4, 2, 2), ValueError, r'rank must be in \[0, world_size=2\)'),
     ((4, 0, 0), ValueError, 'world_size must be >= 1'),
     ((4, '0', 2), TypeError, 'rank must be an int'),
     ((4, 0, 2.0), TypeError, 'world_size must be an int'),
     (({'x': [1, 2], 'y': [1]}, 0, 2), ValueError, 'same length'),
     (({}, 0, 2), ValueError, 'no fields')],
)  # fmt: skip
def test_shard_tasks_rejects_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        todist.shard_tasks(*args)


def test_unwrap_model():
    net = nn.Linear(2, 1)
    assert todist.unwrap_model(net) is net
    with pytest.raises(TypeError, match='model must be a torch.nn.Module'):
        todist.unwrap_model([net])


# ----------------------------------------------------------------------------------------------
# Option validation (in-process; nothing is started)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('kwargs', 'error', 'message'),
    [({'op': 'avg'}, ValueError, "op must be 'mean' or 'sum'"),
     ({'op': 'sum', 'weight': 2}, ValueError, "weight is only meaningful with op='mean'"),
     ({'weight': True}, TypeError, 'weight must be a number'),
     ({'weight': -1}, ValueError, 'weight must be finite and >= 0'),
     ({'weight': float('nan')}, ValueError, 'weight must be finite'),
     ({'bucket_cap_mb': 0}, ValueError, 'bucket_cap_mb must be > 0'),
     ({'bucket_cap_mb': '25'}, TypeError, 'bucket_cap_mb must be a number'),
     ({'poll': 1}, TypeError, 'poll must be True or False'),
     ({}, RuntimeError, 'needs an initialized process group')],
)  # fmt: skip
def test_all_reduce_gradients_validates_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        todist.all_reduce_gradients(nn.Linear(2, 1), **kwargs)


def test_average_meta_gradients_validates_count():
    with pytest.raises(TypeError, match='num_local_tasks must be an int'):
        todist.average_meta_gradients(nn.Linear(2, 1), 1.5)
    with pytest.raises(ValueError, match='num_local_tasks must be >= 0'):
        todist.average_meta_gradients(nn.Linear(2, 1), -1)


def test_parameters_of_every_accepted_form():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    net[1].bias.requires_grad_(False)
    expected = [net[0].weight, net[0].bias, net[1].weight]
    assert collective._parameters(net) == expected
    assert collective._parameters(list(net.parameters()) + [net[0].weight]) == expected
    groups = torch.optim.SGD(expected, lr=0.1).param_groups
    assert collective._parameters(groups) == expected
    assert collective._parameters(net[0].weight) == [net[0].weight]
    with pytest.raises(TypeError, match='params_or_module'):
        collective._parameters(3)
    with pytest.raises(TypeError, match='must hold tensors'):
        collective._parameters([1, 2])


def test_buckets_group_by_dtype_and_respect_the_cap():
    grads = [torch.zeros(4), torch.zeros(4, dtype=torch.float64), torch.zeros(4), torch.zeros(100)]
    assert collective._buckets(grads, 1 << 20) == [[0, 2, 3], [1]]
    assert collective._buckets(grads, 32) == [[0, 2], [3], [1]]  # 100 floats: a bucket alone


@pytest.mark.parametrize(
    ('kwargs', 'error', 'message'),
    [({'timeout': 'abc'}, TypeError, 'timeout must be a number of seconds'),
     ({'timeout': True}, TypeError, 'timeout must be a number of seconds'),
     ({'timeout': float('inf')}, ValueError, 'timeout must be a positive, finite'),
     ({'timeout': 0}, ValueError, 'timeout must be a positive, finite'),
     ({'loopback': 'maybe'}, TypeError, 'loopback must be True, False or None'),
     ({'backend': 3}, TypeError, 'backend must be a str')],
)  # fmt: skip
def test_init_process_group_validates_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        todist.init_process_group(**kwargs)


@pytest.mark.parametrize('value', ['inf', 'nan', '-3', 'soon'])
def test_init_process_group_timeout_from_environment(monkeypatch, value):
    monkeypatch.setenv(collective.COLLECTIVE_TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match='environment variable TORCHOPT_DIST_TIMEOUT'):
        todist.init_process_group()


# ----------------------------------------------------------------------------------------------
# Real worlds (gloo on 127.0.0.1)
# ----------------------------------------------------------------------------------------------


def _results(ranks) -> list[dict]:
    out = []
    for rank in ranks:
        lines = [line for line in rank.stdout.splitlines() if line.startswith('RESULT ')]
        assert lines, (
            f'rank {rank.rank} reported nothing (rc={rank.returncode}):\n{rank.stderr[-4000:]}'
        )
        out.extend(json.loads(line[len('RESULT ') :]) for line in lines)
    return out


def _check_meta_gradients(ranks, world_size: int, sizes: list[int], kinds: list[str]) -> None:
    for rank in ranks:
        assert rank.returncode == 0, (
            f'rank {rank.rank} exited {rank.returncode}:\n{rank.stderr[-4000:]}'
        )
    results = _results(ranks)
    for n in sizes:
        for kind in kinds:
            rows = [r for r in results if r['check'] == f'{kind}_n{n}']
            assert sorted(r['rank'] for r in rows) == list(range(world_size)), (kind, n, results)
            assert sum(r['tasks'] for r in rows) == n  # the shards cover the meta-batch once
            for row in rows:
                assert row['diff'] <= 1e-12, row  # the one-process float64 meta-gradient
                assert row['same'], row  # every replica holds the same averaged gradient
                assert row['total'] == (1.0 if kind.endswith('_sum') else n), row


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ('world_size', 'sizes'), [(1, [7]), (2, [7, 4, 1]), (3, [7, 2, 3])], ids=['1', '2', '3']
)
def test_meta_gradients_equal_one_process(world_size, sizes):
    """float64 MAML meta-gradients averaged over 1/2/3 processes (uneven shards, empty shards)
    equal the one-process mean within 1e-12: MetaOptimizer, functional inplace=False, op='sum'
    with the blocking and the polling wait."""
    ranks = launch('collective.py', world_size, timeout=100, args=['grads', *map(str, sizes)])
    kinds = ['module_mean', 'functional_mean', 'functional_sum', 'functional_poll_sum']
    _check_meta_gradients(ranks, world_size, sizes, kinds)
    zero = [r for r in _results(ranks) if r['check'] == 'zero_total']
    assert len(zero) == world_size and all('no rank had a task' in r['error'] for r in zero)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize('world_size', [2, 3])
def test_ddp_wrapped_model(world_size):
    """A DistributedDataParallel model: inner loop on ddp.module, gradients averaged by
    average_meta_gradients(ddp, n); equals the one-process result, and an outer step keeps the
    replicas identical (DDP's reducer stays out of the double backward)."""
    ranks = launch('collective.py', world_size, timeout=100, args=['ddp', '5'])
    _check_meta_gradients(ranks, world_size, [5], ['ddp_mean'])
    for row in [r for r in _results(ranks) if r['check'] == 'ddp_step']:
        assert row['diff'] <= 1e-12 and row['same'], row


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize('wait', ['block', 'poll'])
def test_rank_dying_during_all_reduce_fails_the_others(wait):
    """Rank 1 of 3 exits abruptly instead of joining an all-reduce: ranks 0 and 2 raise, with
    the blocking and with the polling wait."""
    bound = 5.0
    start = time.monotonic()
    ranks = launch('collective.py', 3, timeout=60, args=['dies', str(bound), wait])
    assert [r.returncode for r in ranks] == [3, 9, 3], [r.stderr[-2000:] for r in ranks]
    for row in _results([ranks[0], ranks[2]]):
        assert row['error'] and 'RuntimeError' in row['error'], row
        assert row['call_time'] < bound + 10, row
    assert time.monotonic() - start < 50


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize('wait', ['block', 'poll'])
def test_rank_stalling_in_all_reduce_hits_the_timeout(wait):
    """Rank 1 of 2 never joins an all-reduce (alive but busy): rank 0 fails after the
    process-group timeout, not torch's 30-minute default; a polling wait too."""
    bound = 3.0
    ranks = launch('collective.py', 2, timeout=60, args=['stalls', str(bound), wait])
    (row,) = _results([ranks[0]])
    assert ranks[0].returncode == 3, ranks[0].stderr[-2000:]
    assert 'RuntimeError' in row['error'] and 'Timed out' in row['error'], row
    assert bound - 0.5 <= row['call_time'] < bound + 10, row


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_missing_rank_fails_init_within_timeout():
    """Rank 1 of 2 never starts: rank 0's init_process_group fails after ``timeout``."""
    bound = 2.0
    (rank0,) = launch('collective.py', 2, ranks=[0], timeout=45, args=['idle', str(bound)])
    assert rank0.returncode == 3, rank0.stderr[-4000:]
    (row,) = _results([rank0])
    assert row['error'] and bound - 0.5 <= row['call_time'] < bound + 10, row


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize('how', ['helper', 'torch-init', 'torch-destroy', 'exit'])
def test_teardown_joins_gloo_threads_and_exits_cleanly(how):
    """Regression: ranks used to abort at exit now and then (SIGABRT, "terminate called without
    an active exception") after all their work: the default group outlived
    destroy_process_group -- held by torch.distributed.nn.functional's defaults once torch._dynamo
    or DDP is imported after init -- and a gloo thread still releasing the last all_gather's
    tensors hit the finalising interpreter. Every way of ending a run must leave no gloo thread
    behind and exit with 0, in several runs of real worlds."""
    for attempt in range(4):
        ranks = launch('collective.py', 2, timeout=60, args=['teardown', how])
        for rank in ranks:
            assert rank.returncode == 0, (attempt, rank.rank, rank.returncode, rank.stderr[-3000:])
        rows = _results(ranks)
        assert sorted(r['rank'] for r in rows) == [0, 1], rows
        for row in rows:
            assert row['threads'] == [] and row['warning'] is None, (attempt, row)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_destroy_warns_when_a_ddp_model_keeps_the_group_alive():
    """destroy_process_group cannot join the threads of a group that a live DDP model still
    holds: it says so instead of leaving a silent abort-at-exit hazard."""
    ranks = launch('collective.py', 2, timeout=60, args=['teardown', 'ddp-alive'])
    for rank in ranks:
        assert rank.returncode == 0, rank.stderr[-3000:]
    for row in _results(ranks):
        assert 'still referenced' in row['warning'] and 'del ddp' in row['warning'], row
        assert 'pt_gloo_runloop' in row['threads'], row  # why the warning is needed


def test_destroy_process_group_validates_and_is_a_no_op_without_a_group():
    with pytest.raises(TypeError, match='barrier must be True or False'):
        todist.destroy_process_group(barrier=1)
    todist.destroy_process_group()  # nothing initialised: nothing to do
